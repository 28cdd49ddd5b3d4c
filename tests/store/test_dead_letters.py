from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select, text, update

from service.deadletters import republish
from service.deadletters.consumer import store_batch
from service.deadletters.parsing import RawMessage
from service.settings import Settings
from service.store import dead_letters, redrives, task_runs
from service.store.database import Store
from service.store.dead_letters import Filters
from service.store.schema import dead_letters as table
from service.store.schema import redrive_items, utcnow
from service.store.schema import task_runs as runs
from service.task_contract import EXPIRE_TASK_RUNS, PURGE_DEAD_LETTERS
from service.worker import maintenance
from service.worker.app import create_celery


def message(n: int, died: datetime, *, redelivered: bool = False) -> RawMessage:
    headers: dict[str, Any] = {
        "task": "docproc.document.process",
        "id": f"t-{n}",
        "x-death": [
            {"count": 1, "reason": "rejected", "queue": "document_processing", "time": died}
        ],
    }
    return RawMessage(
        body=f'[[], {{"n": {n}}}, {{}}]'.encode(),
        headers=headers,
        properties={"content_type": "application/json"},
        redelivered=redelivered,
    )


def count(store: Store) -> int:
    return int(store.run(lambda c: c.execute(select(func.count()).select_from(table)).scalar_one()))


def test_retention_purges_old_letters_and_handled_ones_sooner(store: Store) -> None:
    now = datetime.now(UTC)
    ids = [
        record_id for record_id, _ in store.run(store_batch, [message(n, now) for n in range(4)])
    ]
    old, republished, discarded, fresh = ids
    store.run(
        lambda c: c.execute(
            update(table).where(table.c.id == old).values(dead_at=now - timedelta(days=20))
        )
    )
    store.run(dead_letters.mark_republished, republished)
    store.run(dead_letters.discard, discarded)
    store.run(
        lambda c: c.execute(
            update(table)
            .where(table.c.id.in_([republished, discarded]))
            .values(republished_at=now - timedelta(days=4), discarded_at=now - timedelta(days=4))
        )
    )
    store.run(
        lambda c: c.execute(
            update(table).where(table.c.id == republished).values(discarded_at=None)
        )
    )

    due = {"dead_before": now - timedelta(days=14), "handled_before": now - timedelta(days=3)}
    # A batch at a time (maintenance repeats it while it is full): one transaction holds SQLite's
    # one writer.
    assert store.run(dead_letters.purge, **due, limit=2) == 2
    assert store.run(dead_letters.purge, **due, limit=2) == 1
    assert store.run(dead_letters.purge, **due, limit=2) == 0
    remaining = store.run(dead_letters.page, Filters(status="all"), limit=10).items
    assert [letter.id for letter in remaining] == [fresh]


def test_counts_by_reason_and_queue_leave_out_discarded_letters(store: Store) -> None:
    now = datetime.now(UTC)
    ids = [
        record_id for record_id, _ in store.run(store_batch, [message(n, now) for n in range(3)])
    ]
    store.run(dead_letters.discard, ids[0])

    assert store.run(dead_letters.counts) == [("rejected", "document_processing", 2)]


def test_a_redrive_belongs_to_one_runner_until_its_heartbeat_stops(store: Store) -> None:
    from service.store import redrives

    store.run(store_batch, [message(n, datetime.now(UTC)) for n in range(3)])
    job = store.run(redrives.create, Filters(), 10.0)
    now = datetime.now(UTC)

    mine = store.run(redrives.claim, "api-1", now - timedelta(seconds=15))
    theirs = store.run(redrives.claim, "api-2", now - timedelta(seconds=15))
    taken_over = store.run(redrives.claim, "api-2", now + timedelta(seconds=1))

    assert mine is not None
    assert mine.id == job.id
    assert theirs is None, "a live owner keeps its job"
    assert taken_over is not None
    assert taken_over.owner == "api-2", "a silent owner's job is taken over"


def test_a_groups_outcomes_are_recorded_each_with_its_own_state_and_error(store: Store) -> None:
    """Each item of a group keeps its own state and error, the job counts both kinds, and each
    letter re-published is counted once more."""
    now = datetime.now(UTC)
    stored = store.run(store_batch, [message(n, now) for n in range(5)])
    ids = [record_id for record_id, _ in stored]
    job = store.run(redrives.create, Filters(), 100.0)
    assert job.matched == 5
    claimed = store.run(redrives.claim, "runner-1", now - timedelta(seconds=15))
    assert claimed is not None
    assert claimed.id == job.id
    outcomes = [
        redrives.Outcome(ids[0], "published"),
        redrives.Outcome(ids[1], "failed", "dead letter was discarded"),
        redrives.Outcome(ids[2], "published"),
        redrives.Outcome(ids[3], "failed", "cannot be re-published: ValueError()"),
    ]
    state = store.run(redrives.record_items, redrive_id=job.id, owner="runner-1", outcomes=outcomes)
    store.run(dead_letters.mark_republished, ids[0], ids[2])

    items = store.run(
        lambda c: {
            row.dead_letter_id: (row.state, row.error)
            for row in c.execute(select(redrive_items).where(redrive_items.c.redrive_id == job.id))
        }
    )
    assert items == {
        ids[0]: ("published", None),
        ids[1]: ("failed", "dead letter was discarded"),
        ids[2]: ("published", None),
        ids[3]: ("failed", "cannot be re-published: ValueError()"),
        ids[4]: ("pending", None),
    }
    recorded = store.run(redrives.get, job.id)
    assert recorded is not None
    assert (recorded.published, recorded.failed) == (2, 2)
    assert state == "running"
    counts = store.run(lambda c: dict(c.execute(select(table.c.id, table.c.republish_count)).all()))
    assert [counts[id_] for id_ in ids] == [1, 0, 1, 0, 0]


def test_a_groups_record_written_again_changes_nothing_more(store: Store) -> None:
    """`AsyncStore.record` writes a record again when the answer to its commit was lost — the
    first may have committed. The job counts each item once (however often its outcome is
    written, and whichever runner writes it: one that took the job over publishes the same
    pending items again), and a letter re-published once, with one stamp, is counted once."""
    now = datetime.now(UTC)
    stored = store.run(store_batch, [message(n, now) for n in range(3)])
    ids = [record_id for record_id, _ in stored]
    job = store.run(redrives.create, Filters(), 100.0)
    assert store.run(redrives.claim, "runner-1", now - timedelta(seconds=15)) is not None
    outcomes = [
        redrives.Outcome(ids[0], "published"),
        redrives.Outcome(ids[1], "failed", "dead letter was discarded"),
    ]
    letter = store.run(dead_letters.get, ids[0])
    assert letter is not None
    letters = [letter]
    published_at = datetime.now(UTC)

    def record(connection: Any, owner: str) -> redrives.RedriveState | None:
        republish.mark_handled(connection, letters, {}, published_at)
        return redrives.record_items(connection, redrive_id=job.id, owner=owner, outcomes=outcomes)

    for owner in ("runner-1", "runner-1", "runner-2"):
        store.run(record, owner)

    recorded = store.run(redrives.get, job.id)
    assert recorded is not None
    assert (recorded.published, recorded.failed) == (1, 1)
    counts = store.run(lambda c: dict(c.execute(select(table.c.id, table.c.republish_count)).all()))
    assert [counts[id_] for id_ in ids] == [1, 0, 0]
    store.run(republish.mark_handled, letters, {}, datetime.now(UTC))  # re-published again
    counts = store.run(lambda c: dict(c.execute(select(table.c.id, table.c.republish_count)).all()))
    assert counts[ids[0]] == 2


def test_a_redrive_claims_a_letter_once_and_none_that_went_out_since_it_read_it(
    store: Store,
) -> None:
    """Of a group's letters, the claim takes those of the job still pending in it, neither
    discarded nor superseded, nor re-published or claimed since the job read them; a second claim
    of the same group takes none; a redrive made later takes them again. "Since" is by the
    letter's own stamp, not the job's clock: a re-publishing stamped by a host whose clock is
    behind looked older than the job, and went out again. Ids unknown, repeated, out of order or
    not the job's change nothing."""
    now = datetime.now(UTC)
    stored = store.run(store_batch, [message(n, now) for n in range(5)])
    fresh, before, after, discarded, superseded = [record_id for record_id, _ in stored]
    republished = {"republished_at": now - timedelta(hours=1), "republish_count": 1}
    store.run(lambda c: c.execute(update(table).where(table.c.id == before).values(republished)))
    job = store.run(redrives.create, Filters(status="redrivable"), 100.0)
    store.run(dead_letters.discard, discarded)
    behind = job.created_at - timedelta(seconds=2)  # another host's clock
    store.run(
        lambda c: (
            c.execute(update(table).where(table.c.id == superseded).values(superseded_at=now)),
            c.execute(
                update(table)
                .where(table.c.id == after)
                .values(republished_at=behind, republish_count=1)
            ),
        )
    )
    [(late, _)] = store.run(store_batch, [message(5, now)])
    group = [superseded, after, "no-such-letter", fresh, discarded, before, fresh, late]
    at = utcnow()

    assert store.run(dead_letters.claim_for_redrive, job.id, group, at) == {fresh, before}
    assert store.run(dead_letters.claim_for_redrive, job.id, group, at) == set()
    store.run(
        redrives.record_items,
        redrive_id=job.id,
        owner="runner-1",
        outcomes=[redrives.Outcome(fresh, "failed", "given back")],
    )
    store.run(dead_letters.release_claims, [(fresh, None)], at)
    assert store.run(dead_letters.claim_for_redrive, job.id, [fresh], at) == set(), "settled"
    made_later = store.run(redrives.create, Filters(status="redrivable"), 100.0)
    later = at + timedelta(microseconds=1)
    claimed = store.run(dead_letters.claim_for_redrive, made_later.id, group, later)
    assert claimed == {fresh, before, after, late}
    stamps = store.run(lambda c: dict(c.execute(select(table.c.id, table.c.republished_at)).all()))
    assert all(stamps[id_] == later for id_ in claimed)
    assert (stamps[discarded], stamps[superseded]) == (None, None)


def test_a_letter_with_an_empty_body_is_read_with_it(store: Store) -> None:
    """SQLite's substr of an empty blob is NULL: the letter's detail (its first bytes) was a
    500 there."""
    empty = RawMessage(body=b"", headers={}, properties={}, redelivered=False)
    [(letter_id, _)] = store.run(store_batch, [empty])
    letter = store.run(dead_letters.get, letter_id, body_limit=65536)
    assert letter is not None
    assert (letter.body, letter.body_size) == (b"", 0)


def test_maintenance_purges_a_batch_at_a_time_until_none_is_left(
    store: Store, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = datetime.now(UTC)
    store.run(store_batch, [message(n, now - timedelta(days=30)) for n in range(5)])
    monkeypatch.setattr(maintenance, "RETENTION_BATCH", 2)
    app = create_celery(Settings(database_url=database_url))
    try:
        assert app.tasks[PURGE_DEAD_LETTERS].run() == 5
    finally:
        app.close()
    assert count(store) == 0


def test_letters_of_tasks_that_succeeded_as_they_were_stored_are_superseded_by_maintenance(
    store: Store, database_url: str
) -> None:
    """On PostgreSQL a letter stored while its task's success commits can miss being superseded
    from both sides (each transaction reads before the other commits): it stayed active — a
    failure in the counts, redrivable — for a task that succeeded. Maintenance settles the letters
    of tasks that succeeded lately; here the miss is made by hand."""
    now = datetime.now(UTC)
    missed, failed, long_ago = (
        record_id for record_id, _ in store.run(store_batch, [message(n, now) for n in range(3)])
    )
    for n, state, when in ((0, "SUCCESS", now), (1, "FAILURE", now), (2, "SUCCESS", now)):
        store.run(task_runs.record_pending, f"t-{n}", "docproc.document.process")
        store.run(
            lambda c, n=n, state=state, when=when: c.execute(
                update(runs)
                .where(runs.c.task_id == f"t-{n}")
                .values(state=state, updated_at=when if n != 2 else when - timedelta(hours=2))
            )
        )

    app = create_celery(Settings(database_url=database_url))
    try:
        app.tasks[EXPIRE_TASK_RUNS].run()  # every 5 minutes
    finally:
        app.close()
    again = store.run(dead_letters.supersede_recent, now - timedelta(minutes=15))

    stamps = store.run(lambda c: dict(c.execute(select(table.c.id, table.c.superseded_at)).all()))
    assert again == 0
    assert stamps[missed] is not None
    assert (stamps[failed], stamps[long_ago]) == (None, None)


def test_a_claimed_letter_is_not_discarded_until_its_republishing_is_recorded(
    store: Store,
) -> None:
    """Both orders: a discarded letter is never claimed; a claimed one (in doubt: it may be
    going out) is not discarded unless forced, alone or by filters, until its re-publishing is
    recorded."""
    now = datetime.now(UTC)
    stored = store.run(store_batch, [message(n, now) for n in range(3)])
    first, second, third = [record_id for record_id, _ in stored]
    job = store.run(redrives.create, Filters(), 100.0)
    assert store.run(dead_letters.discard, first)
    claimed = store.run(dead_letters.claim_for_redrive, job.id, [first, second, third], now)
    assert claimed == {second, third}
    assert not store.run(dead_letters.discard, second)
    assert store.run(dead_letters.discard_matching, Filters()) == 0
    store.run(dead_letters.mark_republished, second)
    assert store.run(dead_letters.discard, second)
    assert store.run(dead_letters.discard_matching, Filters(status="redrivable")) == 0
    assert store.run(dead_letters.discard_matching, Filters(), force=True) == 1


def test_a_redrive_nobody_took_is_cancelled_at_once_and_a_running_one_asked_to_stop(
    store: Store,
) -> None:
    """A job waiting its turn (each runner holds one job at a time: behind a slow one, for hours)
    stayed `cancelling` until a runner was free to take it and stop it."""
    stale = datetime.now(UTC) - timedelta(minutes=1)
    running = store.run(redrives.create, Filters(queue="celery"), 0.1)
    assert store.run(redrives.claim, "runner-1", stale) == store.run(redrives.get, running.id)
    waiting = store.run(redrives.create, Filters(queue="retry_queue"), 10.0)

    stopped = store.run(redrives.cancel, waiting.id)
    asked = store.run(redrives.cancel, running.id)

    assert stopped is not None
    assert (stopped.state, stopped.finished_at is not None) == ("cancelled", True)
    assert asked is not None
    assert asked.state == "cancelling"
    assert store.run(redrives.claim, "runner-2", stale) is None, "nothing left to take"


@pytest.mark.postgres
@pytest.mark.parametrize("stamped", [timedelta(0), -timedelta(seconds=5)], ids=["now", "earlier"])
def test_a_letter_republished_as_a_redrive_is_made_is_not_taken_by_it(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch, stamped: timedelta
) -> None:
    """A re-publishing committed while a redrive is being made, after the job read its letters
    (READ COMMITTED: what was committed when its SELECT began). The job held the letter and took
    it for one re-published before it began, and sent it again: first when its `created_at` was
    stamped after the read ("now"), then still when the re-publishing's stamp was older than the
    job's (a transaction slow to commit, or another host's clock behind: "earlier")."""
    store = Store(postgres_url)
    try:
        store.migrate()
        store.run(lambda c: c.execute(text("TRUNCATE dead_letters, redrives CASCADE")))
        [(letter_id, _)] = store.run(store_batch, [message(1, datetime.now(UTC))])
        read = dead_letters.matching

        def read_as_another_republishes(connection: Any, filters: Filters) -> Any:
            matched = read(connection, filters)
            letter = store.run(dead_letters.get, letter_id)  # another connection, meanwhile
            assert letter is not None
            at = utcnow() + stamped
            assert store.run(dead_letters.claim, letter_id, letter.updated_at, at)
            store.run(dead_letters.mark_republished, letter_id, at=at)
            return matched

        monkeypatch.setattr(dead_letters, "matching", read_as_another_republishes)
        job = store.run(redrives.create, Filters(), 10.0)
        monkeypatch.setattr(dead_letters, "matching", read)

        assert job.matched == 1
        taken = store.run(dead_letters.claim_for_redrive, job.id, [letter_id], utcnow())
        assert taken == set(), "re-published after the job read it: not again"
    finally:
        store.close()

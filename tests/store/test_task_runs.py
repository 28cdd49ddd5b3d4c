from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Connection, text

from service.store import task_runs
from service.store.database import Store


def started(store: Store, task_id: str = "t-1", retries: int = 0) -> None:
    store.run(
        task_runs.record_started,
        task_runs.Start(
            task_id=task_id,
            task_name="docproc.document.process",
            retries=retries,
            queue="document_processing",
            worker="w@host",
            correlation_id="c-1",
            document_id="d-1",
        ),
    )


def test_a_run_moves_through_its_states_with_progress(store: Store) -> None:
    store.run(task_runs.record_pending, "t-1", "docproc.document.process", document_id="d-1")
    assert (run := store.run(task_runs.get, "t-1")) is not None
    assert run.state == "PENDING"

    started(store)
    store.run(task_runs.record_progress, "t-1", step="extract", steps_done=1, steps_total=4)
    run = store.run(task_runs.get, "t-1")
    assert run is not None
    assert (run.state, run.step, run.steps_done, run.steps_total, run.percent) == (
        "PROCESSING",
        "extract",
        1,
        4,
        25.0,
    )
    assert run.elapsed is not None

    store.run(task_runs.record_success, "t-1")
    run = store.run(task_runs.get, "t-1")
    assert run is not None
    assert (run.state, run.percent, run.steps_done) == ("SUCCESS", 100.0, 4)
    assert run.finished_at is not None
    assert run.started_at is not None
    assert run.finished_at >= run.started_at
    assert run.worker == "w@host"
    assert run.correlation_id == "c-1"


def test_retries_are_recorded_with_their_delays_and_next_time(store: Store) -> None:
    """Each retry's failure is kept in the history, and is the run's error while it waits; the
    next attempt's start forgets it there: a run PROCESSING showed the attempt before's failure
    as its own error (GET /tasks/{id}, the console)."""
    started(store)
    for attempt, delay in enumerate((1.0, 2.0, 4.0), start=1):
        store.run(
            task_runs.record_retry,
            "t-1",
            retries=attempt,
            delay=delay,
            error_type="SearchError",
            message=f"index down {attempt}",
        )
        waiting = store.run(task_runs.get, "t-1")
        assert waiting is not None
        assert (waiting.state, waiting.error_message) == ("RETRY", f"index down {attempt}")
        started(store, retries=attempt)

    run = store.run(task_runs.get, "t-1")
    assert run is not None
    assert (run.state, run.error_type, run.error_message, run.traceback) == (
        "STARTED",
        None,
        None,
        None,
    )
    assert run.retries == 3
    assert [entry.delay for entry in run.retry_history] == [1.0, 2.0, 4.0]
    assert all(entry.at.tzinfo is not None for entry in run.retry_history)
    assert run.retry_history[-1].message == "index down 3"


def test_a_failure_keeps_its_error_and_traceback_and_dead_keeps_them(store: Store) -> None:
    started(store)
    store.run(
        task_runs.record_failure,
        "t-1",
        "docproc.document.process",
        state="FAILURE",
        error_type="CorruptFile",
        message="not a valid PDF",
        traceback="Traceback ...",
    )
    store.run(
        task_runs.record_failure,
        "t-1",
        "docproc.document.process",
        state="DEAD",
        error_type=None,
        message=None,
    )

    run = store.run(task_runs.get, "t-1")
    assert run is not None
    assert (run.state, run.error_type, run.error_message, run.traceback) == (
        "DEAD",
        "CorruptFile",
        "not a valid PDF",
        "Traceback ...",
    )


def test_a_run_that_retried_then_died_running_says_why_it_died_not_the_retrys_error(
    store: Store,
) -> None:
    """Attempt one retried (a SearchError, recorded on the run), attempt two started and its
    worker process died at each delivery until the delivery limit: the run ended DEAD saying the
    SearchError, where the cause was the delivery limit. A failure the worker recorded for the
    attempt that died is kept, as before."""
    started(store)
    store.run(
        task_runs.record_retry,
        "t-1",
        retries=1,
        delay=1.0,
        error_type="SearchError",
        message="the full-text index is unavailable",
    )
    started(store, retries=1)  # attempt two, running when its worker dies
    started(store, "t-2")
    store.run(
        task_runs.record_failure,
        "t-2",
        "docproc.document.process",
        state="FAILURE",
        error_type="CorruptFile",
        message="not a valid PDF",
    )
    why = "delivered more than the delivery limit allows from document_processing"
    store.run(
        task_runs.record_dead,
        [
            ("t-1", "docproc.document.process", "delivery_limit", why),
            ("t-2", "docproc.document.process", "rejected", "rejected by document_processing"),
        ],
    )

    died, failed = store.run(task_runs.get, "t-1"), store.run(task_runs.get, "t-2")
    assert died is not None
    assert (died.state, died.error_type, died.error_message) == ("DEAD", "delivery_limit", why)
    assert failed is not None
    assert (failed.state, failed.error_type) == ("DEAD", "CorruptFile")


def test_a_run_is_retried_once_by_the_first_of_requests_that_read_it_finished(
    store: Store,
) -> None:
    """`POST /tasks/{id}/retry` read the run FAILURE, then made it PENDING whatever it had become:
    requests at once (a double click, a client's retry) each published the task."""
    store.run(task_runs.record_pending, "t-retried", "docproc.document.process")
    store.run(
        task_runs.record_failure,
        "t-retried",
        "docproc.document.process",
        state="FAILURE",
        error_type="SearchError",
        message="down",
    )
    run = store.run(task_runs.get, "t-retried")
    assert run is not None

    first = store.run(task_runs.retried, "t-retried", run.updated_at)
    second = store.run(task_runs.retried, "t-retried", run.updated_at)

    again = store.run(task_runs.get, "t-retried")
    assert (first, second) == (True, False)
    assert again is not None
    assert (again.state, again.error_type) == ("PENDING", None)


def test_a_dead_task_never_seen_before_gets_a_run(store: Store) -> None:
    store.run(
        task_runs.record_failure,
        "t-9",
        "some.task",
        state="DEAD",
        error_type="delivery_limit",
        message="redelivered too often",
    )

    run = store.run(task_runs.get, "t-9")
    assert run is not None
    assert run.state == "DEAD"


def test_pending_again_resets_a_run_for_a_fresh_attempt(store: Store) -> None:
    started(store, retries=2)
    store.run(task_runs.record_failure, "t-1", "x", state="DEAD", error_type="E", message="m")

    store.run(task_runs.record_pending, "t-1", "docproc.document.process")

    run = store.run(task_runs.get, "t-1")
    assert run is not None
    assert (run.state, run.retries, run.error_type, run.finished_at) == ("PENDING", 0, None, None)


def test_requeued_runs_start_afresh_unless_written_since_they_were_seen(store: Store) -> None:
    """Afresh: retries counted from 0, and none listed (the run said `retries: 0` beside the
    history of the run before's)."""
    for task_id in ("t-1", "t-2"):
        started(store, task_id)
        store.run(
            task_runs.record_retry, task_id, retries=1, delay=1.0, error_type="E", message="m"
        )
        started(store, task_id, retries=2)
        store.run(task_runs.record_failure, task_id, "x", state="DEAD", error_type="E", message="m")
    seen = store.run(task_runs.versions, {"t-1", "t-2"})
    store.run(task_runs.record_success, "t-2")  # the worker was quicker than the re-publish

    store.run(
        task_runs.requeue,
        task_runs.Requeue("t-2", "x", "retry_queue", seen["t-2"]),
        task_runs.Requeue("t-1", "x", "retry_queue", seen["t-1"]),
        task_runs.Requeue("t-3", "y", "document_processing", None),
    )

    runs = {run.task_id: run for run in store.run(task_runs.get_many, ["t-1", "t-2", "t-3"])}
    fresh = runs["t-1"]
    assert (fresh.state, fresh.retries, fresh.error_type, fresh.finished_at) == (
        "PENDING",
        0,
        None,
        None,
    )
    assert fresh.retry_history == []
    assert fresh.queue == "retry_queue"
    assert fresh.updated_at > seen["t-1"]
    assert runs["t-2"].state == "SUCCESS", "its newer story stays"
    assert (runs["t-3"].state, runs["t-3"].queue) == ("PENDING", "document_processing")


def test_finished_runs_expire_and_running_ones_stay(store: Store) -> None:
    """A FAILURE waits for its dead letter, which takes its failure: it stays until the dead
    letters' retention (expired with the others, a letter that came an hour late kept an earlier
    attempt's error, and was grouped with that cause's)."""
    started(store, "done")
    store.run(task_runs.record_success, "done")
    started(store, "running")
    started(store, "failed")
    store.run(task_runs.record_failure, "failed", "x", state="FAILURE", error_type="E", message="m")
    soon = datetime.now(UTC) + timedelta(seconds=1)

    expired = store.run(task_runs.expire, soon, failed_before=soon - timedelta(days=14), limit=10)

    assert expired == 1
    assert store.run(task_runs.get, "done") is None
    assert store.run(task_runs.get, "running") is not None
    counts = store.run(task_runs.count_by_state)
    assert counts["STARTED"] == 1
    assert counts["SUCCESS"] == 0
    assert counts["FAILURE"] == 1, "its letter is yet to come"
    assert store.run(task_runs.expire, soon, failed_before=soon, limit=10) == 1


def _dead_runs(count: int) -> list[tuple[str, str, str, str]]:
    return [(f"t-{n:05d}", "docproc.document.process", "rejected", "failed") for n in range(count)]


def test_runs_looked_up_by_many_ids_are_those_known(store: Store) -> None:
    store.run(task_runs.record_dead, _dead_runs(300))
    asked = {f"t-{n:05d}" for n in range(0, 600, 2)}  # half of them unknown

    found = store.run(task_runs.failures, asked)
    runs = store.run(task_runs.get_many, sorted(asked))

    known = {f"t-{n:05d}" for n in range(0, 300, 2)}
    assert set(found) == known
    assert found["t-00002"] == task_runs.Failure(
        state="DEAD", error_type="rejected", error_message="failed", traceback=None
    )
    assert {run.task_id for run in runs} == known
    assert not [run for run in found.values() if run.state == "SUCCESS"]
    assert set(store.run(task_runs.versions, asked)) == known


def test_a_key_longer_than_the_column_finds_nothing_rather_than_its_first_characters(
    store: Store,
) -> None:
    stored = "t" * 255
    store.run(task_runs.record_dead, [(stored, "docproc.document.process", "rejected", "x")])
    longer = stored + "-another"

    assert store.run(task_runs.failures, {longer, "unknown"}) == {}
    assert store.run(task_runs.get_many, [longer, "unknown"]) == []
    assert set(store.run(task_runs.failures, {stored, "unknown"})) == {stored}


@pytest.mark.postgres
def test_on_postgresql_a_generic_plan_of_a_lookup_of_many_ids_never_scans_the_runs(
    postgres_url: str,
) -> None:
    """Once psycopg has prepared a statement (its fifth run), PostgreSQL may run it by a generic
    plan. Before autovacuum had analysed a table that grew fast (the runs of a burst of dead
    letters), an IN list of 250 parameters was then a scan of the table comparing every row with
    every key: 100 ms at 15,000 runs, for each batch. One array parameter is an index lookup per
    key. The table is left unanalysed here, as it was then."""
    store = Store(postgres_url)
    try:
        store.migrate()
        store.run(lambda connection: connection.execute(text("TRUNCATE task_runs")))
        store.run(task_runs.record_dead, _dead_runs(20_000))
        asked = {f"t-{n:05d}" for n in range(0, 20_000, 80)}

        def counts(connection: Connection) -> tuple[int, int]:
            # This backend's counts not yet reported, earlier transactions' included.
            table, index = connection.execute(
                text(
                    "SELECT pg_stat_get_xact_numscans('task_runs'::regclass),"
                    " pg_stat_get_xact_numscans('task_runs_pkey'::regclass)"
                )
            ).one()
            return int(table), int(index)

        def scans(connection: Connection) -> tuple[int, int]:
            connection.execute(text("SET LOCAL plan_cache_mode = force_generic_plan"))
            table, index = counts(connection)
            for _ in range(8):  # beyond psycopg's prepare threshold (5)
                assert len(task_runs.failures(connection, asked)) == 250
                assert len(task_runs.get_many(connection, sorted(asked))) == 250
            table_after, index_after = counts(connection)
            return table_after - table, index_after - index

        table_scans, index_scans = store.run(scans)
    finally:
        store.run(lambda connection: connection.execute(text("TRUNCATE task_runs")))
        store.close()

    assert table_scans == 0
    assert index_scans >= 16

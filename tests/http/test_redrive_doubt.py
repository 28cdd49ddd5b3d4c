"""Letters in doubt — taken for a re-publishing that was never recorded, so they may have gone
out — are not sent again by default, whoever asks and whenever; letters that certainly did not go
out are not left in doubt. A recording publisher stands for RabbitMQ (what RabbitMQ itself does
with refused and returned messages: tests/integration/test_refused_publishes.py)."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import aio_pika
import pytest
from sqlalchemy import update

from service.deadletters import redrive, republish
from service.deadletters.redrive import RedriveRunner
from service.errors import BrokerUnavailable, NotSent, StoreUnavailable, Unroutable
from service.store import dead_letters, redrives
from service.store.database import AsyncStore, Store
from service.store.dead_letters import Filters
from service.store.schema import dead_letters as letters_table
from service.store.schema import utcnow
from service.task_contract import REPUBLISHED_FROM_HEADER
from tests.api.test_dead_letters_api import bury, dead_message, put_in_doubt
from tests.http.conftest import Client
from tests.http.test_unwritable_letters import Unwriting
from tests.support import RecordingPublisher, eventually


def sent_ids(publisher: RecordingPublisher) -> list[str]:
    return [str(each.message.headers[REPUBLISHED_FROM_HEADER]) for each in publisher.sent]


class NoConfirmFor(RecordingPublisher):
    """Sends each message, but the confirm of those named never comes (once each)."""

    def __init__(self, doubtful: set[str]) -> None:
        super().__init__()
        self.doubtful = doubtful

    async def publish(
        self, message: aio_pika.Message, routing_key: str, *, exchange: str = "docproc"
    ) -> None:
        await super().publish(message, routing_key, exchange=exchange)
        key = str((message.headers or {}).get(REPUBLISHED_FROM_HEADER))
        if key in self.doubtful:
            self.doubtful.discard(key)
            raise BrokerUnavailable("RabbitMQ did not confirm within 5 s")


async def finished(
    shared: AsyncStore, job_id: str, owners: set[str] | None = None
) -> redrives.Redrive:
    """The job once finished, each runner seen owning it meanwhile noted in `owners`."""

    async def done() -> redrives.Redrive | None:
        found = await shared.run(redrives.get, job_id)
        if found is not None and found.owner is not None and owners is not None:
            owners.add(found.owner)
        return found if found is not None and found.state == "finished" else None

    return await eventually(done, 30, "the job to finish", interval=0.05)


async def test_a_letter_in_doubt_is_left_out_of_a_later_redrive_unless_asked_for(
    client: Client, store: Store, publisher: RecordingPublisher
) -> None:
    """A letter another redrive (or a single re-publish) claimed and never recorded — a confirm
    that never came, a crash between publish and record — counts as never re-published, so a
    redrive made afterwards took it and sent it again without a word, where a single re-publish
    asks for force. Now the redrive leaves it out, and its dry run says so."""
    doubtful, fresh = bury(store, *(dead_message(queue="retry_queue") for _ in range(2)))
    put_in_doubt(store, doubtful)

    dry = await client.post("/dead-letters/redrive", json={"queue": "retry_queue", "dry_run": True})
    taking_all = await client.post(
        "/dead-letters/redrive",
        json={"queue": "retry_queue", "dry_run": True, "include_republished": True},
    )
    started = await client.post("/dead-letters/redrive", json={"queue": "retry_queue"})

    assert dry.json()["matched"] == 1
    assert dry.json()["left_out"] == [{"name": "in_doubt", "count": 1}]
    assert taking_all.json()["matched"] == 2, "taken when re-published letters are"
    assert started.json()["matched"] == 1

    async def done() -> dict[str, Any] | None:
        job: dict[str, Any] = (await client.get(started.headers["location"])).json()
        return job if job["state"] == "finished" else None

    job = await eventually(done, 10, "the redrive to finish")
    assert (job["published"], job["failed"]) == (1, 0)
    assert sent_ids(publisher) == [fresh]
    single = await client.post(f"/dead-letters/{doubtful}/republish")
    assert single.status_code == 409
    assert "being re-published" in single.json()["detail"]


class CancelledWhileOut(NoConfirmFor):
    """As NoConfirmFor; the operator's cancel arrives as the group's first letter goes out."""

    def __init__(self, doubtful: set[str], store: AsyncStore, job_id: str) -> None:
        super().__init__(doubtful)
        self.store, self.job_id = store, job_id

    async def publish(
        self, message: aio_pika.Message, routing_key: str, *, exchange: str = "docproc"
    ) -> None:
        if not self.sent:
            await self.store.write(redrives.cancel, self.job_id)
        await super().publish(message, routing_key, exchange=exchange)


async def test_a_job_cancelled_as_a_confirm_fails_counts_that_letter_failed_saying_why(
    database_url: str, store: Store
) -> None:
    """A letter without its confirm stayed pending, for the job's next pass to fail as one that
    may have gone out. Cancelled meanwhile, the job never made that pass: it ended `cancelled`,
    counting neither that letter nor why, though it may have gone out."""
    ids = bury(store, *(dead_message(queue="retry_queue") for _ in range(3)))
    shared = AsyncStore(database_url)
    try:
        job = await shared.write(redrives.create, Filters(queue="retry_queue"), 100.0)
        publisher = CancelledWhileOut({ids[1]}, shared, job.id)
        runner = RedriveRunner(shared, publisher, owner="one")
        stop = asyncio.Event()
        running = asyncio.create_task(runner.run(stop))
        runner.wake.set()

        async def ended() -> redrives.Redrive | None:
            found = await shared.run(redrives.get, job.id)
            return found if found is not None and found.state == "cancelled" else None

        try:
            found = await eventually(ended, 10, "the job to be cancelled")
        finally:
            stop.set()
            await running
    finally:
        await shared.close()
    assert len(sent_ids(publisher)) == 3
    assert (found.published, found.failed) == (2, 1)
    assert "may have gone out" in str(found.last_error)


async def test_a_runner_whose_clock_is_behind_does_not_send_its_own_claims_again(
    database_url: str, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The job was made by one API process and run by another whose clock is 2 s behind: its
    claims were stamped before the job's making, so its next pass saw them as older than the job
    and sent the letter again."""
    [letter_id] = bury(store, dead_message(queue="retry_queue"))
    lagging = utcnow
    monkeypatch.setattr(redrive, "utcnow", lambda: lagging() - timedelta(seconds=2))
    shared = AsyncStore(database_url)
    publisher = NoConfirmFor({letter_id})
    try:
        job = await shared.write(redrives.create, Filters(queue="retry_queue"), 100.0)
        runner = RedriveRunner(shared, publisher, owner="behind")
        await runner._group(job, [letter_id], asyncio.Event())  # in doubt: claimed, pending
        await runner._group(job, [letter_id], asyncio.Event())  # the job's next pass
        found = await shared.run(redrives.get, job.id)
    finally:
        await shared.close()

    assert sent_ids(publisher) == [letter_id]
    assert found is not None
    assert (found.published, found.failed) == (0, 1)
    assert "not recorded as re-published" in str(found.last_error)


async def test_a_letter_republished_by_a_host_whose_clock_is_behind_is_not_sent_again(
    database_url: str, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The job was made, then another API process, whose clock is 2 s behind, re-published one
    of its letters by hand: stamped before the job's `created_at`, the re-publishing looked older
    than the job, which sent the letter again."""
    first, second = bury(store, *(dead_message(queue="retry_queue") for _ in range(2)))
    shared = AsyncStore(database_url)
    publisher = RecordingPublisher()
    try:
        job = await shared.write(redrives.create, Filters(queue="retry_queue"), 100.0)
        lagging = utcnow
        monkeypatch.setattr(republish, "utcnow", lambda: lagging() - timedelta(seconds=2))
        await republish.republish(shared, publisher, first)
        stamped = await shared.run(dead_letters.get, first)
        assert stamped is not None
        assert stamped.republished_at is not None
        assert stamped.republished_at < job.created_at, "the clock the test means"
        await RedriveRunner(shared, publisher, owner="runner")._group(
            job, [first, second], asyncio.Event()
        )
        found = await shared.run(redrives.get, job.id)
    finally:
        await shared.close()

    assert sent_ids(publisher) == [first, second]
    assert found is not None
    assert (found.published, found.failed) == (1, 1)
    assert "changed since this redrive read it" in str(found.last_error)


async def test_a_claim_the_job_saw_and_given_back_since_leaves_the_letter_to_the_job(
    database_url: str, store: Store
) -> None:
    """A single re-publish had the letter claimed when a redrive taking letters in doubt was
    made, and gave the claim back (its publish refused): the letter never went out, and the job,
    which saw the claim's stamp, failed it as taken by another."""
    [letter_id] = bury(store, dead_message(queue="retry_queue"))
    letter = store.run(dead_letters.get, letter_id)
    assert letter is not None
    claimed = utcnow()
    assert store.run(dead_letters.claim, letter_id, letter.updated_at, claimed)
    job = store.run(redrives.create, Filters(status="redrivable"), 100.0)  # include_republished
    store.run(dead_letters.release_claims, [(letter_id, None)], claimed)
    shared = AsyncStore(database_url)
    publisher = RecordingPublisher()
    try:
        await RedriveRunner(shared, publisher, owner="runner")._group(
            job, [letter_id], asyncio.Event()
        )
        found = await shared.run(redrives.get, job.id)
    finally:
        await shared.close()

    assert sent_ids(publisher) == [letter_id]
    assert found is not None
    assert (found.published, found.failed) == (1, 0), found.last_error


async def test_a_stamp_from_a_clock_ahead_does_not_date_the_rest_of_its_group(
    database_url: str, store: Store
) -> None:
    """The group's claim was stamped after the latest stamp it saw: one letter re-published by a
    host whose clock ran 30 days ahead dated every letter of its group 30 days on (shown to
    operators, and out of reach of the retention of handled letters until then)."""
    ahead, fresh = bury(store, *(dead_message(queue="retry_queue") for _ in range(2)))
    future = utcnow() + timedelta(days=30)
    store.run(
        lambda c: c.execute(
            update(letters_table)
            .where(letters_table.c.id == ahead)
            .values(republished_at=future, republish_count=1)
        )
    )
    job = store.run(redrives.create, Filters(status="redrivable"), 100.0)
    shared = AsyncStore(database_url)
    try:
        await RedriveRunner(shared, RecordingPublisher(), owner="runner")._group(
            job, [ahead, fresh], asyncio.Event()
        )
    finally:
        await shared.close()

    stamped = store.run(dead_letters.get, fresh)
    assert stamped is not None
    assert stamped.republish_count == 1
    assert stamped.republished_at is not None
    assert stamped.republished_at < utcnow() + timedelta(minutes=1)


class ClaimAnswerLost(AsyncStore):
    """The first claim (`claim`: a redrive's by default) commits; its caller is told the store
    went away."""

    def __init__(self, url: str, claim: Any = dead_letters.claim_for_redrive) -> None:
        super().__init__(url)
        self.claim = claim
        self.lost = False

    async def write(self, operation: Any, *args: Any, **kwargs: Any) -> Any:
        result = await super().write(operation, *args, **kwargs)
        if operation is self.claim and not self.lost:
            self.lost = True
            raise StoreUnavailable("the store is unavailable: server closed the connection")
        return result


async def test_a_claim_whose_answer_is_lost_is_given_back_and_its_letters_go_out(
    database_url: str, store: Store
) -> None:
    """Nothing of a group goes out before its claim's answer: when that answer is lost, the
    claims are given back and the job, resumed, sends the letters. They were once failed as
    letters that may have gone out."""
    bury(store, *(dead_message(queue="retry_queue") for _ in range(5)))
    shared = ClaimAnswerLost(database_url)
    publisher = RecordingPublisher()
    stop = asyncio.Event()
    running = asyncio.create_task(RedriveRunner(shared, publisher, owner="one").run(stop))
    try:
        job = await shared.write(redrives.create, Filters(queue="retry_queue"), 100.0)
        done = await finished(shared, job.id)
    finally:
        stop.set()
        await running
        await shared.close()

    assert shared.lost
    assert (done.published, done.failed, len(publisher.sent)) == (5, 0, 5), done.last_error


class SlowConfirms(RecordingPublisher):
    """Each confirm comes, late (a broker under flow control): `delay` seconds a publish."""

    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay

    async def publish(
        self, message: aio_pika.Message, routing_key: str, *, exchange: str = "docproc"
    ) -> None:
        await super().publish(message, routing_key, exchange=exchange)
        await asyncio.sleep(self.delay)  # the broker's latency, not a wait for the test


async def test_slow_confirms_do_not_keep_a_group_past_the_jobs_heartbeat(
    database_url: str, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full group goes out MAX_IN_FLIGHT at a time: four rounds of slow confirms held it past
    the heartbeat's timeout, and another runner took the live job over, failing as "may have gone
    out" letters the first then published. Scaled down: a heartbeat of 1.5 s, confirms of 0.45 s
    (5 s of 15); letters are handed out only within HAND_OUT_WINDOW, the rest go with the next
    group."""
    monkeypatch.setattr(redrive, "HEARTBEAT_TIMEOUT", timedelta(seconds=1.5))
    monkeypatch.setattr(redrive, "BEAT", timedelta(seconds=0.3))
    monkeypatch.setattr(redrive, "HAND_OUT_WINDOW", 0.1)
    ids = bury(store, *(dead_message(queue="retry_queue") for _ in range(redrive.GROUP_LETTERS)))
    shared = AsyncStore(database_url)
    publisher = SlowConfirms(0.45)
    stop = asyncio.Event()
    owners: set[str] = set()
    runners: list[asyncio.Task[None]] = []
    try:
        job = await shared.write(redrives.create, Filters(queue="retry_queue"), 10_000.0)
        runners = [
            asyncio.create_task(RedriveRunner(shared, publisher, name).run(stop))
            for name in ("a", "b")
        ]
        result = await finished(shared, job.id, owners)
    finally:
        stop.set()
        await asyncio.gather(*runners)
        await shared.close()

    assert len(owners) == 1, f"taken from a live runner: {owners}"
    assert (result.published, result.failed) == (len(ids), 0), result.last_error
    assert sorted(sent_ids(publisher)) == sorted(ids)


class Returning(RecordingPublisher):
    """Connected, yet RabbitMQ returns every message (no queue bound where it goes)."""

    async def publish(
        self, message: aio_pika.Message, routing_key: str, *, exchange: str = "docproc"
    ) -> None:
        raise Unroutable("RabbitMQ returned the message: no queue is bound")


@pytest.mark.parametrize(
    ("publisher", "said"),
    [(Returning, "no queue is bound"), (Unwriting, "cannot be written as AMQP")],
    ids=["returned", "unwritable"],
)
async def test_a_letter_that_certainly_did_not_go_out_fails_alone_with_its_claim_given_back(
    publisher: type[RecordingPublisher], said: str, database_url: str, store: Store
) -> None:
    """A message RabbitMQ returns reached no queue, and one that cannot be written as AMQP never
    left: the letter fails with why, and is not left claimed — a single re-publish of it asked
    for force as if it might have gone out."""
    [letter_id] = bury(store, dead_message(queue="retry_queue"))
    shared = AsyncStore(database_url)
    try:
        job = await shared.write(redrives.create, Filters(queue="retry_queue"), 100.0)
        runner = RedriveRunner(shared, publisher(), owner="one")
        await runner._group(job, [letter_id], asyncio.Event())
        found = await shared.run(redrives.get, job.id)
    finally:
        await shared.close()

    letter = store.run(dead_letters.get, letter_id)
    assert found is not None
    assert (found.published, found.failed) == (0, 1)
    assert said in str(found.last_error)
    assert letter is not None
    assert (letter.republished_at, letter.republish_count) == (None, 0), "not in doubt"


@pytest.mark.parametrize(
    "refusal",
    [
        NotSent("RabbitMQ refused the message (nack)"),
        Unroutable("RabbitMQ returned the message: no queue is bound"),
    ],
    ids=["nack", "returned"],
)
async def test_a_single_republish_that_certainly_did_not_go_out_can_be_tried_again(
    client: Client, store: Store, publisher: RecordingPublisher, refusal: Exception
) -> None:
    """A nack or a returned message did not go out: the letter's claim is given back, so the
    operator's next try goes out — it was a 409 asking for force, as for a letter that might
    have gone out."""
    [letter_id] = bury(store, dead_message(queue="retry_queue"))

    publisher.refusal = refusal
    first = await client.post(f"/dead-letters/{letter_id}/republish")
    publisher.refusal = None
    second = await client.post(f"/dead-letters/{letter_id}/republish")

    assert first.status_code in (502, 503), first.text
    assert second.status_code == 200, second.text
    assert sent_ids(publisher) == [letter_id]


async def test_a_single_republish_whose_claim_answer_is_lost_can_be_tried_again(
    database_url: str, store: Store
) -> None:
    """The claim committed, its answer lost: the request failed (503) before anything went out,
    and the claim stayed — the operator's retry was a 409 asking for force, as for a letter that
    may have gone out. The claim is now given back."""
    [letter_id] = bury(store, dead_message(queue="retry_queue"))
    shared = ClaimAnswerLost(database_url, dead_letters.claim)
    publisher = RecordingPublisher()
    try:
        with pytest.raises(StoreUnavailable):
            await republish.republish(shared, publisher, letter_id)
        assert publisher.sent == [], "nothing went out"
        await republish.republish(shared, publisher, letter_id)
    finally:
        await shared.close()
    assert sent_ids(publisher) == [letter_id]


class DiscardedAsClaimed(AsyncStore):
    """The operator discards a letter just after the runner read its group, before its claim."""

    victim = ""

    async def write(self, operation: Any, *args: Any, **kwargs: Any) -> Any:
        if operation is dead_letters.claim_for_redrive and self.victim:
            victim, self.victim = self.victim, ""
            assert await super().write(dead_letters.discard, victim)
        return await super().write(operation, *args, **kwargs)


async def test_a_letter_discarded_as_its_group_is_claimed_fails_saying_so(
    database_url: str, store: Store
) -> None:
    """It failed as "taken for re-publishing by another redrive or request": the operator was
    told it may be out, when nothing took it."""
    [letter_id] = bury(store, dead_message(queue="retry_queue"))
    shared = DiscardedAsClaimed(database_url)
    publisher = RecordingPublisher()
    try:
        job = await shared.write(redrives.create, Filters(queue="retry_queue"), 100.0)
        shared.victim = letter_id
        await RedriveRunner(shared, publisher, owner="one")._group(
            job, [letter_id], asyncio.Event()
        )
        found = await shared.run(redrives.get, job.id)
    finally:
        await shared.close()
    assert found is not None
    assert publisher.sent == []
    assert (found.published, found.failed) == (0, 1)
    assert str(found.last_error).endswith("was discarded"), found.last_error


async def test_a_letter_in_doubt_is_not_discarded_unless_forced(
    client: Client, store: Store
) -> None:
    """A letter taken for a re-publishing — a redrive's group going out, or one whose publisher
    stopped before recording it — was discarded as any other: the redrive then recorded it
    re-published, and the letter said both, its discard hiding that its message was back in its
    queue. Discarding it, alone or with its group, now leaves it as it is and says why, unless
    forced."""
    doubtful, other = bury(store, *(dead_message(queue="retry_queue") for _ in range(2)))
    put_in_doubt(store, doubtful)
    [group] = [g["group"] for g in (await client.get("/dead-letters/groups")).json()["items"]]

    alone = await client.delete(f"/dead-letters/{doubtful}")
    with_group = await client.delete(f"/dead-letters/groups/{group}")

    assert alone.status_code == 409, alone.text
    assert "never recorded" in alone.json()["detail"]
    assert "force=true" in alone.json()["detail"]
    assert with_group.json() == {"discarded": 1, "in_doubt": 1}
    discarded = store.run(dead_letters.matching, Filters(status="discarded"))
    assert [letter_id for letter_id, _ in discarded] == [other]

    forced = await client.delete(f"/dead-letters/{doubtful}", params={"force": "true"})
    assert forced.status_code == 204, forced.text
    again = await client.delete(f"/dead-letters/{doubtful}")
    assert again.status_code == 409
    assert "discarded already" in again.json()["detail"]


async def test_a_group_discard_forced_takes_letters_in_doubt_too(
    client: Client, store: Store
) -> None:
    doubtful, _other = bury(store, *(dead_message(queue="retry_queue") for _ in range(2)))
    put_in_doubt(store, doubtful)
    [group] = [g["group"] for g in (await client.get("/dead-letters/groups")).json()["items"]]

    forced = await client.delete(f"/dead-letters/groups/{group}", params={"force": "true"})

    assert forced.json() == {"discarded": 2, "in_doubt": 0}

"""A redrive waiting — for the next letter of a slow job, or for RabbitMQ — stays its owner's (the
heartbeat is beaten while it waits), sees a cancel within a beat, and does not hold up a stopping
API — against a real broker, with the beat and the takeover timeout shortened."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from typing import Any

import aio_pika
import msgspec
import pytest

from service.broker.publisher import Publisher
from service.deadletters import redrive
from service.deadletters.redrive import RedriveRunner
from service.settings import Settings
from service.store import dead_letters, redrives
from service.store.database import AsyncStore, Store
from service.store.dead_letters import Filters
from tests.api.conftest import Client, queued
from tests.api.test_dead_letters_api import bury, dead_message
from tests.support import eventually

pytestmark = pytest.mark.rabbitmq

TASK = "docproc.maintenance.pacing"


def two_runners(
    store: AsyncStore, publisher: Publisher, stop: asyncio.Event
) -> list[asyncio.Task[None]]:
    """The redrive runners of two API processes (two owners) on one store, until `stop`."""
    return [
        asyncio.create_task(RedriveRunner(store, publisher, owner).run(stop))
        for owner in ("runner-a", "runner-b")
    ]


@contextlib.asynccontextmanager
async def a_runner(settings: Settings) -> AsyncIterator[None]:
    """One API process's redrive runner, on its own store and publisher, for the block."""
    async_store, publisher = AsyncStore(settings.resolved_database_url), Publisher(settings)
    await publisher.start()
    stop = asyncio.Event()
    runner = asyncio.create_task(RedriveRunner(async_store, publisher, "runner-a").run(stop))
    try:
        yield
    finally:
        stop.set()
        await runner
        await publisher.close()
        await async_store.close()


def letters(store: Store, count: int) -> list[str]:
    return bury(store, *(dead_message(queue="celery", task=TASK) for _ in range(count)))


async def test_a_slow_redrive_beats_while_it_waits_and_sees_a_cancel_within_a_beat(
    client: Client, store: Store, channel: aio_pika.abc.AbstractChannel, monkeypatch: Any
) -> None:
    monkeypatch.setattr(redrive, "BEAT", timedelta(seconds=0.3))
    letters(store, 3)
    started = await client.post("/dead-letters/redrive", json={"task": TASK, "rate": 0.1})
    location = started.headers["location"]
    job_id = started.json()["id"]

    async def first_out() -> redrives.Redrive | None:
        job = store.run(redrives.get, job_id)
        return job if job is not None and job.published == 1 else None

    first = await eventually(first_out, 10, "the first letter (the next is 10 s later)")
    first_beat = first.heartbeat_at
    assert first_beat is not None

    async def beaten() -> bool | None:
        job = store.run(redrives.get, job_id)
        beat = job.heartbeat_at if job is not None else None
        return True if beat is not None and beat > first_beat else None

    await eventually(beaten, 3, "the heartbeat to be beaten between two letters")
    await client.delete(location)

    async def cancelled() -> dict[str, Any] | None:
        job = (await client.get(location)).json()
        return job if job["state"] == "cancelled" else None

    # Within a beat or so, not at the next letter 10 s later.
    final = await eventually(cancelled, 5, "the cancel to be seen between two letters")
    assert final["published"] == 1
    assert await queued(channel, "celery") == 1


async def test_a_stopping_runner_does_not_wait_for_the_next_letter(
    settings_for: Callable[..., Settings], store: Store, channel: aio_pika.abc.AbstractChannel
) -> None:
    settings = settings_for()
    letters(store, 2)
    job = store.run(redrives.create, Filters(task=TASK), 0.02)  # a letter every 50 s
    async_store, publisher = AsyncStore(settings.resolved_database_url), Publisher(settings)
    await publisher.start()
    stop = asyncio.Event()
    running = asyncio.create_task(RedriveRunner(async_store, publisher, "runner-a").run(stop))
    try:

        async def first_out() -> bool | None:
            found = store.run(redrives.get, job.id)
            return True if found is not None and found.published == 1 else None

        await eventually(first_out, 10, "the first letter")
        stopping = time.monotonic()
        stop.set()
        await asyncio.wait_for(running, 10)
        assert time.monotonic() - stopping < 5, "the runner stopped without waiting 50 s"
    finally:
        stop.set()
        await publisher.close()
        await async_store.close()
    left = store.run(redrives.get, job.id)
    assert left is not None
    assert left.state == "running", "left as it was, for a runner to take over"


async def test_two_runners_never_both_publish_a_slow_job(
    settings_for: Callable[..., Settings],
    store: Store,
    channel: aio_pika.abc.AbstractChannel,
    monkeypatch: Any,
) -> None:
    # A letter every 4 s; a job left 3 s without a beat would be taken over (a beat every
    # 0.5 s leaves room for a loaded machine's pauses).
    monkeypatch.setattr(redrive, "HEARTBEAT_TIMEOUT", timedelta(seconds=3))
    monkeypatch.setattr(redrive, "BEAT", timedelta(seconds=0.5))
    settings = settings_for()
    ids = letters(store, 3)
    job = store.run(redrives.create, Filters(task=TASK), 0.25)
    async_store, publisher = AsyncStore(settings.resolved_database_url), Publisher(settings)
    await publisher.start()
    stop = asyncio.Event()
    runners = two_runners(async_store, publisher, stop)
    owners: set[str] = set()
    try:

        async def finished() -> redrives.Redrive | None:
            found = store.run(redrives.get, job.id)
            assert found is not None
            if found.owner is not None:
                owners.add(found.owner)
            return found if found.state == "finished" else None

        final = await eventually(finished, 30, "the slow job to finish", interval=0.1)
    finally:
        stop.set()
        await asyncio.gather(*runners)
        await publisher.close()
        await async_store.close()

    assert final.published == 3
    assert len(owners) == 1, f"the job changed hands while its owner waited: {owners}"
    stored = [store.run(dead_letters.get, each) for each in ids]
    counts = [letter.republish_count if letter is not None else None for letter in stored]
    assert counts == [1, 1, 1], "no letter published twice"
    assert await queued(channel, "celery") == 3


async def test_a_redrive_waiting_for_rabbitmq_keeps_its_owner(
    settings_for: Callable[..., Settings], store: Store, monkeypatch: Any
) -> None:
    # Both runners' publisher never connects: RabbitMQ is away for them. A job left 3 s without
    # a beat would be taken over, and once RabbitMQ was back both would publish it.
    monkeypatch.setattr(redrive, "HEARTBEAT_TIMEOUT", timedelta(seconds=3))
    monkeypatch.setattr(redrive, "BEAT", timedelta(seconds=0.5))
    settings = settings_for()
    letters(store, 2)
    job = store.run(redrives.create, Filters(task=TASK), 100)
    async_store, away = AsyncStore(settings.resolved_database_url), Publisher(settings)
    stop = asyncio.Event()
    runners = two_runners(async_store, away, stop)
    owners: set[str] = set()
    try:

        async def claimed() -> str | None:
            found = store.run(redrives.get, job.id)
            return found.owner if found is not None else None

        owners.add(await eventually(claimed, 10, "a runner to claim the job"))
        watched_until = time.monotonic() + 2 * 3
        while time.monotonic() < watched_until:
            owner = await claimed()
            assert owner is not None
            owners.add(owner)
            await asyncio.sleep(0.1)  # the runners work meanwhile: this loop only watches
    finally:
        stop.set()
        await asyncio.gather(*runners)
        await async_store.close()

    assert len(owners) == 1, f"the job changed hands while its owner waited: {owners}"
    left = store.run(redrives.get, job.id)
    assert left is not None
    assert (left.state, left.published) == ("running", 0)


async def test_two_redrives_over_the_same_letters_publish_each_once(
    settings_for: Callable[..., Settings],
    store: Store,
    channel: aio_pika.abc.AbstractChannel,
) -> None:
    """An operator asks for the same redrive twice (or re-publishes a letter by hand while a
    redrive holds it): each job took the letters active when it was made, and each sent them —
    twice in all. A letter re-published after a job was made is now that job's failure, said."""
    settings = settings_for()
    ids = bury(store, *(dead_message(queue="celery", task=f"{TASK}.twice") for _ in range(4)))
    before = await queued(channel, "celery")
    jobs = [store.run(redrives.create, Filters(task=f"{TASK}.twice"), 1000.0) for _ in range(2)]
    async with a_runner(settings):

        async def both_finished() -> list[redrives.Redrive] | None:
            found = [store.run(redrives.get, job.id) for job in jobs]
            done = [job for job in found if job is not None and job.state == "finished"]
            return done if len(done) == len(jobs) else None

        finished = await eventually(both_finished, 30, "both redrives to finish", interval=0.1)

    assert sorted((job.published, job.failed) for job in finished) == [(0, 4), (4, 0)]
    stored = [store.run(dead_letters.get, each) for each in ids]
    counts = [letter.republish_count if letter is not None else None for letter in stored]
    assert counts == [1, 1, 1, 1], "no letter published twice"
    assert await queued(channel, "celery") == before + 4
    again = next(job for job in finished if job.failed)
    assert again.last_error is not None
    assert "changed since this redrive read it" in again.last_error


async def test_a_redrive_skips_a_letter_whose_task_succeeded_since_it_began(
    settings_for: Callable[..., Settings],
    store: Store,
    channel: aio_pika.abc.AbstractChannel,
) -> None:
    """Sent again, its run was made PENDING (a success undone, until a worker skipped the
    document as processed)."""
    settings = settings_for()
    task = f"{TASK}.succeeded"
    ids = bury(store, *(dead_message(queue="celery", task=task) for _ in range(2)))
    before = await queued(channel, "celery")
    job = store.run(redrives.create, Filters(task=task), 1000.0)
    succeeded = store.run(dead_letters.get, ids[0])
    assert succeeded is not None
    assert succeeded.task_id is not None
    store.run(dead_letters.supersede, succeeded.task_id)
    async with a_runner(settings):

        async def finished() -> redrives.Redrive | None:
            found = store.run(redrives.get, job.id)
            return found if found is not None and found.state == "finished" else None

        final = await eventually(finished, 30, "the redrive to finish", interval=0.1)
    assert (final.published, final.failed) == (1, 1)
    assert final.last_error is not None
    assert "its task succeeded" in final.last_error
    assert await queued(channel, "celery") == before + 1


async def test_a_redrive_of_large_letters_holds_at_most_its_budget_of_bodies_at_once(
    settings_for: Callable[..., Settings],
    store: Store,
    channel: aio_pika.abc.AbstractChannel,
    monkeypatch: Any,
) -> None:
    """A group's letters are read and their messages built at once: by count alone, 64 letters
    of RabbitMQ's largest would be 8 GiB in the API. Within a 3 MiB budget, ten letters of 1 MiB
    go out three at a time, and a letter larger than the budget alone; each goes out once."""
    mib = 1024 * 1024
    bodies = [bytes([n]) * mib for n in range(10)] + [b"x" * 5 * mib]
    ids = bury(
        store,
        *(
            msgspec.structs.replace(dead_message(queue="celery", task=TASK), body=body)
            for body in bodies
        ),
    )
    groups: list[int] = []
    read = redrive._read

    def spied(connection: Any, job: redrives.Redrive, group: list[str]) -> Any:
        found = read(connection, job, group)
        groups.append(sum(len(letter.body) for letter in found.letters.values()))
        return found

    monkeypatch.setattr(redrive, "_read", spied)
    settings = settings_for()
    job = store.run(redrives.create, Filters(task=TASK), 1000.0)  # by count, groups of 64
    async_store, publisher = AsyncStore(settings.resolved_database_url), Publisher(settings)
    await publisher.start()
    stop = asyncio.Event()
    running = asyncio.create_task(
        RedriveRunner(async_store, publisher, "runner-a", group_bytes=3 * mib).run(stop)
    )
    try:

        async def finished() -> redrives.Redrive | None:
            found = store.run(redrives.get, job.id)
            return found if found is not None and found.state == "finished" else None

        done = await eventually(finished, 30, "the redrive to finish")
    finally:
        stop.set()
        await asyncio.wait_for(running, 10)
        await publisher.close()
        await async_store.close()
    assert (done.published, done.failed) == (len(ids), 0)
    assert groups == [3 * mib, 3 * mib, 3 * mib, mib, 5 * mib]
    assert await queued(channel, "celery") == len(ids)

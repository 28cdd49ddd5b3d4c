"""A redrive whose outcomes the store refuses for a moment: the letters that went out are
recorded once the store answers, and none goes out again — against a real broker."""

from __future__ import annotations

import time
from typing import Any

import aio_pika
import pytest
from sqlalchemy import text

from service.store import dead_letters
from service.store.database import Store
from tests.api.conftest import Client
from tests.api.test_dead_letters_api import bury, dead_message
from tests.support import eventually

pytestmark = pytest.mark.rabbitmq

TASK = "docproc.maintenance.blip"
REFUSED_FOR = 1.5
"""Seconds the store refuses the outcomes: more than a runner that gave up at once takes to
publish the letters again (its pause is 0.5 s), less than RECORD_PATIENCE."""


async def queued(channel: aio_pika.abc.AbstractChannel, name: str) -> int:
    queue = await channel.declare_queue(name, passive=True)
    count = queue.declaration_result.message_count
    assert count is not None
    return count


async def test_outcomes_the_store_refuses_for_a_moment_are_recorded_and_nothing_goes_twice(
    client: Client, store: Store, channel: aio_pika.abc.AbstractChannel
) -> None:
    ids = bury(store, *(dead_message(queue="celery", task=TASK) for _ in range(5)))
    store.run(
        lambda c: c.execute(
            text(
                "CREATE TRIGGER refuse_outcomes BEFORE UPDATE ON redrive_items "
                "BEGIN SELECT RAISE(ABORT, 'injected: the store is unavailable'); END"
            )
        )
    )
    try:
        started = await client.post("/dead-letters/redrive", json={"task": TASK, "rate": 100})
        location = started.headers["location"]

        async def all_out() -> bool | None:
            return True if await queued(channel, "celery") >= 5 else None

        await eventually(all_out, 10, "the five letters to be published")
        # While the store refuses, nothing goes out again.
        refused_until = time.monotonic() + REFUSED_FOR
        while time.monotonic() < refused_until:
            assert await queued(channel, "celery") == 5, "a letter was published again"
            job = (await client.get(location)).json()
            assert job["published"] == 0, "nothing is recorded while the store refuses"
    finally:
        store.run(lambda c: c.execute(text("DROP TRIGGER IF EXISTS refuse_outcomes")))

    async def finished() -> dict[str, Any] | None:
        job = (await client.get(location)).json()
        return job if job["state"] == "finished" else None

    final = await eventually(finished, 10, "the outcomes to be recorded once the store answers")
    assert (final["published"], final["failed"]) == (5, 0)
    assert await queued(channel, "celery") == 5
    stored = [store.run(dead_letters.get, each) for each in ids]
    assert [letter.republish_count if letter else None for letter in stored] == [1] * 5

"""Re-publishing while the store refuses to record it for a moment (a redrive's outcomes, a single
letter's mark): what went out is recorded once the store answers, and nothing goes out twice —
against a real broker."""

from __future__ import annotations

import threading
import time
from typing import Any

import aio_pika
import pytest
from loguru import logger

from service.deadletters import redrive
from service.deadletters import republish as republishing
from service.store import dead_letters
from service.store.database import Store
from tests.api.conftest import Client, queued, refused_updates
from tests.api.test_dead_letters_api import bury, dead_message
from tests.support import eventually

pytestmark = pytest.mark.rabbitmq

TASK = "docproc.maintenance.blip"
REFUSED_FOR = 1.5
"""Seconds the store refuses the outcomes: more than a runner that gave up at once takes to
publish the letters again (its pause is 0.5 s), less than RECORD_PATIENCE."""


@pytest.mark.parametrize("patience", [None, 0.3])
@pytest.mark.parametrize(
    ("letters", "rate"),
    [(5, 100), (2 * redrive.GROUP_LETTERS + 2, 10_000)],
    ids=["one group", "groups at full rate"],
)
async def test_outcomes_the_store_refuses_for_a_moment_are_recorded_and_nothing_goes_twice(
    client: Client,
    store: Store,
    channel: aio_pika.abc.AbstractChannel,
    monkeypatch: Any,
    patience: float | None,
    letters: int,
    rate: int,
) -> None:
    """Refused for less than a record's patience, or (0.3 s) for several patiences: the job once
    paused then with the letters pending, and published them again when it resumed. What went
    out is recorded before anything else happens, however long the store takes. At full rate,
    over several groups: the next group waits for the record of the one before, so while the
    store refuses, the first group alone is out."""
    task = f"{TASK}.{patience}.{letters}"
    if patience is not None:
        monkeypatch.setattr(redrive, "RECORD_PATIENCE", patience)
    ids = bury(store, *(dead_message(queue="celery", task=task) for _ in range(letters)))
    first = min(letters, redrive.GROUP_LETTERS)
    with refused_updates(store, "redrive_items"):
        started = await client.post("/dead-letters/redrive", json={"task": task, "rate": rate})
        location = started.headers["location"]

        async def first_out() -> bool | None:
            return True if await queued(channel, "celery") >= first else None

        await eventually(first_out, 60, f"the first {first} letters to be published")
        # While the store refuses, nothing goes out again, nor anything more.
        refused_until = time.monotonic() + REFUSED_FOR
        while time.monotonic() < refused_until:
            assert await queued(channel, "celery") == first, "a letter was published again"
            job = (await client.get(location)).json()
            assert job["published"] == 0, "nothing is recorded while the store refuses"

    async def finished() -> dict[str, Any] | None:
        job = (await client.get(location)).json()
        return job if job["state"] == "finished" else None

    final = await eventually(finished, 60, "the outcomes to be recorded once the store answers")
    assert (final["published"], final["failed"]) == (letters, 0)
    assert await queued(channel, "celery") == letters
    stored = [store.run(dead_letters.get, each) for each in ids]
    assert [letter.republish_count if letter else None for letter in stored] == [1] * letters


async def test_a_republish_the_store_refuses_to_mark_for_a_moment_is_marked_once_it_answers(
    client: Client, store: Store, channel: aio_pika.abc.AbstractChannel
) -> None:
    [record_id] = bury(store, dead_message(queue="celery", task=TASK))
    # The test client runs the request to its end before this test's loop goes on, so the
    # store answers again from a thread, once the API has been refused three times.
    refusals: list[str] = []
    refused = threading.Event()

    def watch(message: Any) -> None:
        if "the store refused a record" in message:
            refusals.append(message)
            if len(refusals) >= 3:
                refused.set()

    sink = logger.add(watch, level="WARNING")
    try:
        # The mark (its count), not the claim before publishing (its updated_at).
        with refused_updates(store, "dead_letters", "republish_count") as lift:
            healer = threading.Thread(target=lambda: (refused.wait(10), lift()))
            healer.start()
            try:
                response = await client.post(f"/dead-letters/{record_id}/republish")
            finally:
                refused.set()
                healer.join()
    finally:
        logger.remove(sink)

    assert response.status_code == 200, response.text
    assert len(refusals) >= 3
    letter = store.run(dead_letters.get, record_id)
    assert letter is not None
    assert letter.republish_count == 1
    assert await queued(channel, "celery") == 1


async def test_a_republish_the_store_does_not_record_in_time_says_so_and_is_recorded_later(
    client: Client, store: Store, channel: aio_pika.abc.AbstractChannel, monkeypatch: Any
) -> None:
    """The message went out; the store refused its mark longer than the request waits. The
    answer was a 503 with Retry-After, and the retry published the letter again. Now it is a 200
    that says the re-publishing is not recorded yet, and the mark is still tried behind it."""
    monkeypatch.setattr(republishing, "RECORD_PATIENCE", 0.3)
    [record_id] = bury(store, dead_message(queue="celery", task=TASK))
    with refused_updates(store, "dead_letters", "republish_count"):
        response = await client.post(f"/dead-letters/{record_id}/republish")
        assert response.status_code == 200, response.text
        assert response.json()["recorded"] is False
        again = await client.post(f"/dead-letters/{record_id}/republish")
        assert again.status_code == 409, again.text  # claimed, though not yet recorded
    assert await queued(channel, "celery") == 1

    async def recorded() -> int | None:
        letter = store.run(dead_letters.get, record_id)
        return letter.republish_count if letter is not None and letter.republish_count else None

    assert await eventually(recorded, 10, "the late record") == 1

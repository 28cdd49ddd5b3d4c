"""Dead letters the DLQ stores — headers nested hundreds deep, and so on — and the requests that
name a queue: each is an answer of the API, never a 500, and never a letter left in doubt."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import Any

import aio_pika
import pytest

from service.broker.publisher import Publisher, Unwritable
from service.settings import Settings
from service.store.database import Store
from tests.api.conftest import Client, queued, take
from tests.api.test_dead_letters_api import bury, dead_message

pytestmark = pytest.mark.rabbitmq


def nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {"leaf": "x"}
    for _ in range(depth):
        value = {"k": value}
    return value


def depth_of(value: Any) -> int:
    depth = 0
    while isinstance(value, dict) and "k" in value:
        value, depth = value["k"], depth + 1
    return depth


@contextlib.contextmanager
def deep_stack() -> Iterator[None]:
    """Room for this process to store what the DLQ consumer stores from a thread of its own."""
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(20_000)
    try:
        yield
    finally:
        sys.setrecursionlimit(limit)


def bury_nested(store: Store, depth: int) -> str:
    letter = dead_message(queue="retry_queue")
    letter.headers["x-nested"] = nested(depth)
    with deep_stack():
        [record_id] = bury(store, letter)
    return record_id


async def test_a_letter_whose_headers_nest_495_deep_is_shown_and_its_republish_is_a_409(
    client: Client, store: Store, channel: aio_pika.abc.AbstractChannel
) -> None:
    """Its detail was a 500 (a RecursionError making the headers readable), and so was its
    re-publishing (turning them back into a table): from 482 deep under uvicorn, from some 490
    under this test's client, whose stack is shallower. The detail shows them now; re-publishing
    is a 409 saying why — AMQP's writer cannot nest them so deep — and leaves the letter as it
    was: not in doubt, discarded at once."""
    record_id = bury_nested(store, 495)

    detail = await client.get(f"/dead-letters/{record_id}")
    republished = await client.post(f"/dead-letters/{record_id}/republish")
    discarded = await client.delete(f"/dead-letters/{record_id}")

    assert detail.status_code == 200, detail.text
    assert depth_of(detail.json()["headers"]["x-nested"]) == 495
    assert republished.status_code == 409, republished.text
    assert "too deep" in republished.json()["detail"]
    assert await queued(channel, "retry_queue") == 0
    assert discarded.status_code == 204, discarded.text


async def test_a_letter_whose_headers_nest_350_deep_goes_out_as_it_came(
    client: Client, store: Store, channel: aio_pika.abc.AbstractChannel
) -> None:
    """pamqp writes tables some 480 deep; writing floats as doubles cost a stack frame a level
    more, and tables from 330 deep were a 409."""
    record_id = bury_nested(store, 350)

    answer = await client.post(f"/dead-letters/{record_id}/republish")

    assert answer.status_code == 200, answer.text
    message = await take(channel, "retry_queue")
    assert depth_of(message.headers["x-nested"]) == 350


async def test_a_target_longer_than_a_queue_name_is_a_400_and_leaves_the_letter_as_it_was(
    client: Client, store: Store, channel: aio_pika.abc.AbstractChannel
) -> None:
    """200 "é" are 200 characters (within the parameter's 255) and 400 bytes: AMQP's 255-byte
    names refused it as the frame was written — a 500, the letter left claimed, every later
    re-publish and discard of it a 409 ("being re-published")."""
    [record_id] = bury(store, dead_message(queue="retry_queue"))

    refused = await client.post(
        f"/dead-letters/{record_id}/republish", params={"target": "\u00e9" * 200}
    )
    again = await client.post(f"/dead-letters/{record_id}/republish")

    assert refused.status_code == 400, refused.text
    assert "target is 400 bytes in UTF-8" in refused.json()["detail"]
    assert again.status_code == 200, again.text
    await take(channel, "retry_queue")


async def test_what_cannot_be_written_as_amqp_is_unwritable_and_the_channel_goes_on(
    settings_for: Any, channel: aio_pika.abc.AbstractChannel
) -> None:
    """A routing key past 255 bytes, a header nested past the writer's stack: the publisher says
    the message cannot be written (nothing went out: a caller gives back what it claimed), where
    a TypeError or a RecursionError came out of it."""
    settings: Settings = settings_for()
    publisher = Publisher(settings)
    await publisher.start()
    try:
        with pytest.raises(Unwritable, match="routing key is 400 bytes"):
            await publisher.publish(aio_pika.Message(b"x"), "\u00e9" * 200, exchange="")
        with pytest.raises(Unwritable, match="RecursionError"):
            await publisher.publish(
                aio_pika.Message(b"x", headers={"x-nested": nested(900)}),
                "retry_queue",
                exchange="",
            )
        await publisher.publish(aio_pika.Message(b"after"), "retry_queue", exchange="")
    finally:
        await publisher.close()
    assert (await take(channel, "retry_queue")).body == b"after"
    assert await queued(channel, "retry_queue") == 0

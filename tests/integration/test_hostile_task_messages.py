"""Task messages built to stop or swell the worker: each is dead-lettered as it came, unread
where reading it was the harm, and the worker goes on."""

from __future__ import annotations

import asyncio
import bz2
import contextlib
import struct
import uuid
from collections.abc import AsyncIterator, Iterator

import aio_pika
import amqp
import pytest
import pytest_asyncio

from service.broker.publisher import task_message
from service.topology import DEAD_LETTER_QUEUE, DOCUMENT_QUEUE, EXCHANGE
from service.worker import canary
from tests.hostile_properties import CONTENT_TYPE, HEADERS, RawProperties
from tests.support import (
    DeadLetterQueue,
    Process,
    Reports,
    Vhost,
    eventually,
    first_death,
    peak_kib,
)

pytestmark = [pytest.mark.rabbitmq, pytest.mark.worker]

INFLATED = 64 << 20
"""What the bombs below inflate to (the worker's bound is 1 MiB): kombu inflated it in the
worker's main process, and again in a pool process."""
GROWTH_KIB = 24 * 1024
"""How much the worker's main process may grow meanwhile (inflating alone took INFLATED)."""


@pytest_asyncio.fixture(loop_scope="session")
async def exchange(
    connection: aio_pika.abc.AbstractConnection,
) -> AsyncIterator[aio_pika.abc.AbstractExchange]:
    channel = await connection.channel(publisher_confirms=True)
    async with channel:
        yield await channel.get_exchange(EXCHANGE, ensure=False)


async def _runs_behind(exchange: aio_pika.abc.AbstractExchange, reports: Reports) -> None:
    """A task sent behind a hostile message runs: the worker went on."""
    task_id = str(uuid.uuid4())
    message = task_message(canary.SUCCEED, task_id, kwargs={"report_to": reports.name})
    await exchange.publish(message, routing_key=DOCUMENT_QUEUE)
    await reports.wait_for(
        lambda r: r["task_id"] == task_id and r["event"] == "succeeded",
        what="the task behind it to run",
    )


async def test_a_body_nested_too_deep_is_dead_lettered_and_the_worker_goes_on(
    worker: Process,
    exchange: aio_pika.abc.AbstractExchange,
    reports: Reports,
    dead_letters: DeadLetterQueue,
) -> None:
    """msgspec raised RecursionError for it, not a DecodeError, in the worker's main process:
    "Unrecoverable error", the worker exited, and met the message again when restarted."""
    marker = str(uuid.uuid4())
    body = b"[" * 5000 + b"]" * 5000
    message = aio_pika.Message(
        body,
        headers={"task": canary.SUCCEED, "id": marker},
        content_type="application/json",
        message_id=marker,
    )
    await exchange.publish(message, routing_key=DOCUMENT_QUEUE)

    dead = await dead_letters.wait_for(lambda m: m.message_id == marker, what="the deep body")

    assert dead.body == body
    assert first_death(dead)["reason"] == "rejected"
    await _runs_behind(exchange, reports)
    assert worker.alive(), worker.tail()
    assert "the body nests too deep to be read" in worker.output()


def _deep_array(depth: int) -> bytes:
    """An AMQP field value: an array `depth` arrays deep around one string."""
    value = b"S" + struct.pack(">I", 1) + b"x"
    for _ in range(depth):
        value = b"A" + struct.pack(">I", len(value)) + value
    return value


def _text(text: str) -> bytes:
    return b"S" + struct.pack(">I", len(text)) + text.encode()


def _raw_properties(headers: dict[bytes, bytes]) -> bytes:
    """A JSON content type and a header table whose values are field values as written."""
    table = b"".join(bytes([len(name)]) + name + value for name, value in headers.items())
    content_type = b"application/json"
    return (
        struct.pack(">H", CONTENT_TYPE | HEADERS)
        + bytes([len(content_type)])
        + content_type
        + struct.pack(">I", len(table))
        + table
    )


@contextlib.contextmanager
def _amqp_channel(vhost: Vhost) -> Iterator[amqp.Channel]:
    """A py-amqp channel: aio-pika's reader (pamqp) cannot read a table some 500 deep."""
    broker = vhost.rabbitmq
    connection = amqp.Connection(
        f"{broker.host}:{broker.port}",
        userid=broker.user,
        password=broker.password,
        virtual_host=vhost.name,
    )
    connection.connect()
    try:
        yield connection.channel()
    finally:
        connection.close()


DEEP_HEADERS = {
    "task": "header task is list [[[[...]]]], not a task name",
    "id": "header id is list [[[[...]]]], not a task id",
    "retries": "header retries is [[[[...]]]], not a count",
    "eta": "header eta is [[[[...]]]], not an ISO 8601 time",
    "timelimit": "header timelimit is [[[[...]]]], not [hard, soft]",
    "x-deep": "header 'x-deep' nests more than 32 levels deep",
}
"""The header nested too deep, and what the worker says of it."""


@pytest.mark.parametrize(("header", "said"), DEEP_HEADERS.items(), ids=DEEP_HEADERS)
async def test_a_task_header_nested_too_deep_is_dead_lettered_and_the_worker_goes_on(
    worker: Process,
    connection: aio_pika.abc.AbstractConnection,
    exchange: aio_pika.abc.AbstractExchange,
    reports: Reports,
    work_vhost: Vhost,
    header: str,
    said: str,
) -> None:
    """py-amqp reads an array 966 deep. Its repr() in the reason the worker gave overflowed
    Python's stack, out of the worker's main process ("Unrecoverable error"); in a header of a
    task otherwise sound, pickling it for the pool failed, and each such message kept one of
    the pool's slots: two stopped the worker's processing."""
    marker = str(uuid.uuid4())
    headers = {b"task": _text(canary.SUCCEED), b"id": _text(marker)}
    headers[header.encode()] = _deep_array(966)
    body = f'[[], {{"marker": "{marker}"}}, {{}}]'.encode()
    channel = await (await connection.channel(publisher_confirms=True)).get_underlay_channel()
    await channel.basic_publish(
        body,
        exchange=EXCHANGE,
        routing_key=DOCUMENT_QUEUE,
        properties=RawProperties(_raw_properties(headers)),
    )

    with _amqp_channel(work_vhost) as reader:

        async def dead_letter() -> amqp.Message | None:
            while got := await asyncio.to_thread(reader.basic_get, DEAD_LETTER_QUEUE, True):
                if got.body == body:
                    return got
            return None

        dead = await eventually(dead_letter, 30, f"the message with a deep {header} header")

    assert (dead.headers or {})["x-death"][0]["reason"] == "rejected"
    await worker.said(said, 10, f"the worker's reason for the deep {header}")
    await _runs_behind(exchange, reports)
    assert worker.alive(), worker.tail()


INFLATING = {
    "a compression header": (
        ("application/json", "utf-8", {"compression": "application/x-bz2"}),
        "the body inflates to more than 1,048,576 bytes",
    ),
    "a content encoding that inflates": (
        ("application/data", "bz2_codec", {}),
        "content encoding 'bz2_codec' is not one the worker decodes a body from",
    ),
}
"""How a body says it inflates (content type, content encoding, headers), and what the worker
says of it."""


@pytest.mark.parametrize("case", INFLATING)
async def test_a_body_that_inflates_past_the_bound_is_dead_lettered_uninflated(
    worker: Process,
    exchange: aio_pika.abc.AbstractExchange,
    reports: Reports,
    dead_letters: DeadLetterQueue,
    case: str,
) -> None:
    """kombu inflated a body as its `compression` header says, building the message in the
    worker's main process; and decoded one with the codec its content encoding names when Celery
    read it there. 2.6 KB took the main process and a pool process from 111 MB to 1.1 GB."""
    (content_type, content_encoding, inflating), said = INFLATING[case]
    marker = str(uuid.uuid4())
    head = task_message(canary.SUCCEED, marker, kwargs={"report_to": reports.name}).body
    body = bz2.compress(head) + bz2.compress(b" " * (INFLATED // 8)) * 8
    headers: dict[str, aio_pika.abc.FieldValue] = {"task": canary.SUCCEED, "id": marker}
    headers |= inflating
    before = peak_kib(worker.popen.pid)
    message = aio_pika.Message(
        body,
        headers=headers,
        content_type=content_type,
        content_encoding=content_encoding,
        message_id=marker,
    )
    await exchange.publish(message, routing_key=DOCUMENT_QUEUE)

    dead = await dead_letters.wait_for(lambda m: m.message_id == marker, what=case)

    assert (dead.body, dead.content_type, dead.content_encoding) == (
        body,
        content_type,
        content_encoding,
    )
    assert dead.headers.get("compression") == headers.get("compression")
    assert first_death(dead)["reason"] == "rejected"
    await worker.said(said, 10, f"the worker's reason ({case})")
    after = peak_kib(worker.popen.pid)
    assert before is not None
    assert after is not None
    assert after - before < GROWTH_KIB, f"the worker grew by {after - before:,} KiB"
    assert await reports.events(marker) == [], "it did not run"
    await _runs_behind(exchange, reports)
    assert worker.alive(), worker.tail()

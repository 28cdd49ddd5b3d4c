"""Letters no reader foresaw reach the DLQ consumer on the real broker: each is stored, and so is
every letter behind it. The DLQ has no delivery limit — a letter that made the consumer raise came
back at every start, the process died each time, and `docproc up` gave up on all of docproc."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
import zlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aio_pika
import msgspec
import pytest
import pytest_asyncio
from celery import Celery

from service.deadletters import consumer as dlq
from service.store import dead_letters, task_runs
from service.store.database import AsyncStore, Store
from service.store.dead_letters import DeadLetter
from service.store.migrations import upgrade
from service.topology import DEAD_LETTER_EXCHANGE, DEAD_LETTER_QUEUE
from tests.support import RabbitMQ, Vhost, delete_vhost, eventually, topology_vhost

pytestmark = [pytest.mark.rabbitmq]

JSON = "application/json"


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def topology(
    rabbitmq: RabbitMQ, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Vhost]:
    """One vhost for the module (declaring the topology is most of a test's time); each test
    drains the DLQ it fills."""
    url = f"sqlite:///{tmp_path_factory.mktemp('topology') / 'docproc.db'}"
    declared = await topology_vhost(rabbitmq, url)
    try:
        yield declared
    finally:
        await delete_vhost(rabbitmq, declared.name)


@pytest.fixture
def vhost(topology: Vhost, tmp_path: Path) -> Vhost:
    """The module's vhost, with a store of this test's own."""
    url = f"sqlite:///{tmp_path / 'docproc.db'}"
    upgrade(url)
    return Vhost(
        topology.rabbitmq, topology.name, {**topology.overrides, "DOCPROC_DATABASE_URL": url}
    )


def task_headers(task: str = "docproc.canary.succeed") -> dict[str, Any]:
    return {"task": task, "id": str(uuid.uuid4())}


def nested_list(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth):
        value = [value]
    return value


async def bury(vhost: Vhost, messages: list[aio_pika.Message]) -> None:
    """Publish `messages` straight into docproc.dead_letter, confirmed, in order."""
    connection = await vhost.connect()
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        for message in messages:
            await channel.default_exchange.publish(message, routing_key=DEAD_LETTER_QUEUE)


def letters(url: str) -> list[DeadLetter]:
    store = Store(url)
    try:
        page = store.run(dead_letters.page, dead_letters.Filters(status="all"), limit=100)
        found = [store.run(dead_letters.get, item.id) for item in page.items]
    finally:
        store.close()
    return [letter for letter in found if letter is not None]


async def drained(
    vhost: Vhost, count: int, store_type: type[AsyncStore] = AsyncStore
) -> dict[bytes, DeadLetter]:
    """Run a DLQ consumer in this process until `count` letters are stored — failing as soon as
    it stops, with the exception that stopped it — then stop it; the letters, by body."""
    url = vhost.settings().resolved_database_url
    store = store_type(url)
    consumer = dlq.DeadLetterConsumer(vhost.settings(), store)
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))

    async def enough() -> list[DeadLetter] | None:
        if task.done():
            raise AssertionError(f"the DLQ consumer stopped: {task.exception()!r}")
        found = await asyncio.to_thread(letters, url)
        return found if len(found) >= count else None

    try:
        found = await eventually(enough, 30, f"{count} dead letters stored", interval=0.1)
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 30)
        await store.close()
    return {letter.body: letter for letter in found}


async def test_letters_nested_past_pythons_stack_are_stored_and_so_are_those_behind_them(
    vhost: Vhost,
) -> None:
    """A JSON body nested 5,000 deep made msgspec raise RecursionError, and arguments nested 600
    deep made the headers' converter raise it: out of the consumer, at every delivery. Each is
    stored now, its body as it came and what could not be read said, and the letters around
    them as ever."""
    deep_body = b"[" * 5000 + b"]" * 5000
    deep_args = msgspec.json.encode([nested_list(600), {}, {}])
    ordinary = [f"ordinary {n}".encode() for n in range(3)]
    await bury(
        vhost,
        [
            aio_pika.Message(ordinary[0]),
            aio_pika.Message(deep_body, headers=task_headers(), content_type=JSON),
            aio_pika.Message(ordinary[1]),
            aio_pika.Message(deep_args, headers=task_headers(), content_type=JSON),
            aio_pika.Message(ordinary[2]),
        ],
    )

    found = await drained(vhost, 5)

    assert set(found) == {deep_body, deep_args, *ordinary}, "each body kept byte for byte"
    said = " ".join(found[deep_body].problems or [])
    assert "the body could not be read as JSON (RecursionError" in said
    deep = found[deep_args]
    assert "args could not be read as JSON (RecursionError" in " ".join(deep.problems or [])
    assert isinstance(deep.args, str), "stored as its text"
    assert deep.args.startswith("[[[[")
    assert deep.kwargs == {}


POISON = b"a letter whose storing breaks"


class BreakingStore(AsyncStore):
    """A store whose batch transaction breaks (a RuntimeError, as a bug would) whenever it holds
    POISON as read, and takes its quarantined form."""

    async def write(self, operation: Any, *args: Any, **kwargs: Any) -> Any:
        if (
            operation is dlq.store_batch
            and not kwargs.get("quarantine")
            and any(raw.body == POISON for raw in args[0])
        ):
            raise RuntimeError("injected: storing this letter breaks")
        return await super().write(operation, *args, **kwargs)


async def test_a_batch_whose_storing_breaks_is_stored_letter_by_letter_and_its_culprit_quarantined(
    vhost: Vhost,
) -> None:
    """Only a refusal of the store (a DatabaseError) was stored letter by letter; any other
    exception left the consumer, and the batch came back at every start. Now it is handled as
    a refusal: the other letters stored as read, the culprit in its quarantined form."""
    bodies = [b"before", POISON, b"after"]
    await bury(vhost, [aio_pika.Message(body) for body in bodies])

    found = await drained(vhost, 3, BreakingStore)

    assert set(found) == set(bodies)
    assert set(found[POISON].headers) == {"unreadable"}
    assert "escaped to ASCII" in (found[POISON].problems or [""])[-1]
    assert found[b"before"].problems is None
    assert found[b"after"].problems is None


async def test_a_compressed_task_letter_is_read_as_its_worker_read_it(vhost: Vhost) -> None:
    """A stock Celery client's `compression="zlib"`: the worker decompressed the body, ran the
    task and recorded its failure; the DLQ read the compressed bytes and called the letter a
    MalformedTaskMessage ("the body is not JSON"), arguments unread — over the worker's failure,
    and in another group than the same failure sent uncompressed, out of reach of a redrive of
    that group. Now the letter reads as its worker read it, and keeps its bytes as they came."""
    url = vhost.settings().resolved_database_url
    client = Celery(broker=vhost.settings().broker_url)
    sent = {}
    try:
        for compression in ("zlib", None):
            sent[compression] = client.send_task(
                "docproc.canary.fail",
                args=["doc-1"],
                kwargs={"why": "testing"},
                exchange=DEAD_LETTER_EXCHANGE,
                routing_key="document_processing",
                declare=[],
                compression=compression,
            ).id
    finally:
        client.close()
    sync_store = Store(url)
    try:
        for task_id in sent.values():  # what the worker records before it rejects the message
            sync_store.run(
                task_runs.record_started,
                task_runs.Start(
                    task_id=task_id,
                    task_name="docproc.canary.fail",
                    retries=0,
                    queue="document_processing",
                    worker="w",
                    correlation_id=task_id,
                ),
            )
            sync_store.run(
                task_runs.record_failure,
                task_id,
                "docproc.canary.fail",
                state="FAILURE",
                error_type="CanaryFailure",
                message="the canary failed, as asked",
                traceback=None,
            )
    finally:
        sync_store.close()

    found = await drained(vhost, 2)

    by_task = {letter.task_id: letter for letter in found.values()}
    compressed, plain = by_task[sent["zlib"]], by_task[sent[None]]
    assert compressed.error_type == "CanaryFailure", compressed.error_message
    assert (compressed.args, compressed.kwargs) == (["doc-1"], {"why": "testing"})
    assert compressed.fingerprint == plain.fingerprint, "one failure, one group"
    assert compressed.headers["compression"] == "application/x-gzip"
    as_sent = msgspec.json.decode(zlib.decompress(compressed.body))  # kept as it came
    assert as_sent[:2] == [["doc-1"], {"why": "testing"}]

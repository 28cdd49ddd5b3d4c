"""RabbitMQ refusing a redrive's messages, for real: a queue at its `max-length` (a policy, as an
operator sets one) makes RabbitMQ nack each publish (`x-overflow: reject-publish`, which the
topology declares). The letters did not go out, so their claims are given back; the redrive says
it waits for RabbitMQ, and sends each letter once when RabbitMQ takes messages again."""

from __future__ import annotations

import asyncio
import functools
import itertools
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote

import aio_pika
import amqp
import httpx
import kombu
import pytest

from service.broker.publisher import Publisher
from service.deadletters.redrive import MAX_IN_FLIGHT, RedriveRunner
from service.store import documents, redrives
from service.store.database import AsyncStore, Store
from service.store.dead_letters import Filters
from service.worker.app import create_celery
from service.worker.maintenance import _send_document_task, sweep_unpublished
from tests.api.test_dead_letters_api import bury, dead_message
from tests.store.test_documents_and_search import add_document
from tests.support import Vhost, eventually

pytestmark = [pytest.mark.rabbitmq]

QUEUE = "document_processing"
LETTERS = 3


class Policies:
    """The policies of one vhost, through the management API (the vhost's own: nothing
    node-wide changes)."""

    def __init__(self, vhost: Vhost) -> None:
        rabbitmq = vhost.rabbitmq
        self.vhost = vhost
        self.http = httpx.AsyncClient(
            base_url=rabbitmq.management_url, auth=(rabbitmq.user, rabbitmq.password)
        )
        self.path = f"/api/policies/{quote(vhost.name, safe='')}/full-queue"
        self.held = 0
        """Messages the queue took while its limit was coming into force."""

    async def fill_up(self, queue: str) -> None:
        """A queue that may hold nothing, and holds what was published until RabbitMQ enforced
        that (`held`: a quorum queue takes one message past its limit, then refuses)."""
        policy = {"pattern": f"^{queue}$", "definition": {"max-length": 0}, "apply-to": "queues"}
        (await self.http.put(self.path, json=policy)).raise_for_status()
        await eventually(lambda: self._limited(queue, True), 15, f"the policy on {queue}")
        connection = await self.vhost.connect()
        async with connection:
            channel = await connection.channel(publisher_confirms=True)

            async def refused() -> bool | None:
                try:
                    await channel.default_exchange.publish(
                        aio_pika.Message(b"filler"), routing_key=queue
                    )
                except aio_pika.exceptions.DeliveryError:
                    return True
                self.held += 1
                return None

            await eventually(refused, 15, f"{queue} to refuse a message")

    async def clear(self, queue: str) -> None:
        (await self.http.delete(self.path)).raise_for_status()
        await eventually(lambda: self._limited(queue, False), 15, f"the policy gone from {queue}")

    async def _limited(self, queue: str, wanted: bool) -> bool | None:
        """Whether the management API shows a max-length in effect on the queue, when that is
        what is `wanted`."""
        async with self.vhost.management() as management:
            found = [q for q in await management.queue_policies() if q.name == queue]
        definition = found[0].effective_policy_definition if found else {}
        limited = isinstance(definition, dict) and "max-length" in definition
        return True if limited == wanted else None


async def depth(vhost: Vhost, queue: str) -> int:
    """How many messages the queue holds, as RabbitMQ answers a passive declare (at once, unlike
    the management API's statistics)."""
    connection = await vhost.connect()
    async with connection:
        declared = await (await connection.channel()).declare_queue(queue, passive=True)
        count = declared.declaration_result.message_count
    assert count is not None
    return count


@pytest.mark.parametrize(
    ("letters", "rate"),
    [(LETTERS, 100.0), (2 * MAX_IN_FLIGHT + 22, 10_000.0)],
    ids=["a few", "a group past the confirms in flight"],
)
async def test_letters_rabbitmq_refuses_are_not_lost_nor_failed_and_go_out_once_it_takes_them(
    vhost: Vhost, tmp_path: Path, letters: int, rate: float
) -> None:
    """Also at full rate, one group of more letters than the confirms kept in flight, against
    RabbitMQ's own nacks: none is lost or failed, and each goes out once. (That the letters not
    yet tried are not tried shows only where publishes may have gone out: test_operator_safety.)"""
    url = f"sqlite:///{tmp_path / 'docproc.db'}"
    store, shared = Store(url), AsyncStore(url)
    bury(store, *(dead_message(queue=QUEUE) for _ in range(letters)))
    policies = Policies(vhost)
    publisher = Publisher(vhost.settings(), name="redrive")
    runner = RedriveRunner(shared, publisher, owner="one")
    stop = asyncio.Event()
    running: asyncio.Task[None] | None = None
    try:
        await policies.fill_up(QUEUE)
        await publisher.start()
        assert publisher.connected
        running = asyncio.create_task(runner.run(stop))
        job = await shared.write(redrives.create, Filters(queue=QUEUE), rate)
        runner.wake.set()

        async def state(wanted: str | None = None) -> redrives.Redrive | None:
            found = await shared.run(redrives.get, job.id)
            assert found is not None
            if wanted is None:  # waiting, and saying why
                said = found.last_error or ""
                return found if said.startswith(redrives.WAITING) else None
            return found if found.state == wanted else None

        waiting = await eventually(state, 20, "the redrive to wait, saying RabbitMQ refused")
        assert (waiting.state, waiting.published, waiting.failed) == ("running", 0, 0)
        assert waiting.last_error == (
            f"{redrives.WAITING}: RabbitMQ refused the message (nack): is a queue it goes to at "
            "its max-length?"
        )
        assert await depth(vhost, QUEUE) == policies.held  # the fillers alone

        await policies.clear(QUEUE)
        done = await eventually(lambda: state("finished"), 30, "the redrive to finish")
    finally:
        stop.set()
        if running is not None:
            await running
        await publisher.close()
        await policies.http.aclose()
        await shared.close()
        store.close()

    assert (done.published, done.failed, done.last_error) == (letters, 0, None)
    assert await depth(vhost, QUEUE) == policies.held + letters, "each letter once"


async def test_a_sweep_a_full_queue_refused_publishes_once_the_limit_is_lifted(
    vhost: Vhost, tmp_path: Path
) -> None:
    """Beat's sweeper publishes through Celery's producer (kombu and py-amqp), which take a nack
    for a lost connection and make it again: the sweep fails, its claim lapses, and the next sweep
    after the limit is lifted publishes the document, once."""
    store = Store(f"sqlite:///{tmp_path / 'docproc.db'}")
    app = create_celery(vhost.settings())
    policies = Policies(vhost)
    publish = functools.partial(_send_document_task, app)
    try:
        add_document(store, b"accepted, never confirmed", "a.txt")
        await policies.fill_up(QUEUE)
        later = datetime.now(UTC) + documents.PUBLISH_CLAIM + timedelta(seconds=1)

        with pytest.raises(kombu.exceptions.OperationalError) as refused:
            await asyncio.to_thread(sweep_unpublished, store, publish, later)
        assert isinstance(refused.value.__cause__, amqp.exceptions.MessageNacked)
        await policies.clear(QUEUE)
        moments = itertools.count(2, 2)  # each sweep after the last one's claim has lapsed

        async def swept() -> int | None:
            moment = later + documents.PUBLISH_CLAIM * next(moments)
            try:
                return await asyncio.to_thread(sweep_unpublished, store, publish, moment)
            except kombu.exceptions.OperationalError:
                return None  # the limit's end not yet in force in the queue

        published = await eventually(swept, 15, "a sweep to publish the document")
    finally:
        app.close()
        await policies.http.aclose()
        store.close()
    assert published == 1
    assert await depth(vhost, QUEUE) == policies.held + 1, "the document's task once"

"""With RabbitMQ blocked by a memory alarm, the API stays responsive, uploads are accepted within
their timeout, and once the alarm clears every accepted document is processed — none lost, none
twice. The API is a real process: an in-process test client would serialise the requests."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from aio_pika.abc import AbstractIncomingMessage
from sqlalchemy import text

from service.broker.publisher import PUBLISH_TIMEOUT, task_message
from service.cli.client import CLIENT_KEEP_ALIVE
from service.store import task_runs
from service.store.database import Store
from service.task_contract import PUBLISH_UNPUBLISHED
from service.topology import DOCUMENT_QUEUE, EXCHANGE
from service.worker import canary
from service.worker.app import create_celery
from service.worker.consumer import HAND_BACK_TIMEOUT, HOLD_LIMIT
from tests.support import (
    Process,
    RabbitMQ,
    Vhost,
    all_succeeded,
    eventually,
    queue_tasks,
    rabbitmqctl_on,
    start_api,
    start_worker,
)

pytestmark = [pytest.mark.rabbitmq, pytest.mark.worker, pytest.mark.node_wide]

DOCUMENTS = 5


def watermark_arguments(answer: str) -> list[str]:
    """`set_vm_memory_high_watermark` arguments that restore what `get_vm_memory_high_watermark`
    answered: a fraction (`0.4`) or an absolute limit (`{absolute,1073741824}`)."""
    absolute = re.fullmatch(r"\{absolute,\s*(\d+)\}", answer)
    if absolute:
        return ["absolute", absolute.group(1)]
    float(answer)  # anything else is not a watermark: fail before changing the broker
    return [answer]


@pytest.fixture
def memory_alarm(rabbitmq: RabbitMQ) -> Iterator[Callable[[], None]]:
    """Blocks every publisher of the local node; yields the function that clears the alarm,
    which always runs at the end and restores the watermark exactly as it was found."""
    rabbitmqctl = rabbitmqctl_on(rabbitmq)
    found = watermark_arguments(
        rabbitmqctl("eval", "vm_memory_monitor:get_vm_memory_high_watermark().")
    )

    def alarm(wanted: bool) -> None:
        """Wait until the node's memory alarm is `wanted` (set or cleared): RabbitMQ raises and
        clears it a moment after the watermark changes, and tells connections after that."""
        deadline = time.monotonic() + 30
        while ("memory" in rabbitmqctl("eval", "rabbit_alarm:get_alarms().")) != wanted:
            assert time.monotonic() < deadline, f"the memory alarm never became {wanted}"
            time.sleep(0.1)  # polling the node, with a deadline

    def clear() -> None:
        rabbitmqctl("set_vm_memory_high_watermark", *found)
        alarm(False)

    rabbitmqctl("set_vm_memory_high_watermark", "0")
    try:
        alarm(True)
        yield clear
    finally:
        clear()


def stored(store: Store, filename: str) -> bool | None:
    found = store.run(
        lambda c: c.execute(
            text("SELECT 1 FROM documents WHERE filename = :f"), {"f": filename}
        ).first()
    )
    return True if found else None


async def test_a_blocked_broker_loses_nothing_and_processes_nothing_twice(
    vhost: Vhost, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    worker: Process = await start_worker(vhost, tmp_path / "worker.log")
    api = await start_api(vhost, tmp_path / "api.log")
    settings = vhost.settings()
    store = Store(settings.resolved_database_url)
    accepted: list[str] = []
    try:
        # Idle connections dropped before the API's keep-alive ends (CLIENT_KEEP_ALIVE): a
        # /health sent on one as the server closed it failed once, after a 5 s upload.
        limits = httpx.Limits(keepalive_expiry=CLIENT_KEEP_ALIVE)
        async with httpx.AsyncClient(base_url=api.url, timeout=60, limits=limits) as http:
            clear_alarm = request.getfixturevalue("memory_alarm")

            for n in range(DOCUMENTS):
                filename = f"blocked-{n}.txt"
                started = time.monotonic()
                upload = asyncio.create_task(
                    http.post(
                        "/documents",
                        files={"file": (filename, f"Document {n} waits it out.".encode())},
                    )
                )
                # The API's event loop is not blocked by a publish waiting for its confirm: once
                # the document is stored, /health answers while the upload still waits (an
                # order of events, not a timing).
                await eventually(
                    lambda name=filename: asyncio.to_thread(stored, store, name),
                    PUBLISH_TIMEOUT,
                    "the upload to be stored",
                    interval=0.02,
                )
                assert (await http.get("/health")).status_code == 200
                assert not upload.done(), "the upload waits for a confirm that cannot come"
                response = await upload
                took = time.monotonic() - started
                assert response.status_code == 202, response.text
                assert took < PUBLISH_TIMEOUT * 4, f"the upload took {took:.1f} s"
                assert response.json()["queued"] is False
                accepted.append(response.json()["task_id"])

            clear_alarm()
            # Beat's sweeper, run now instead of waiting: what was never confirmed is published.
            store.run(
                lambda c: c.execute(
                    text("UPDATE documents SET created_at = :past WHERE published_at IS NULL"),
                    {"past": "2000-01-01 00:00:00"},
                )
            )
            client = create_celery(settings)
            try:
                client.send_task(PUBLISH_UNPUBLISHED)
            finally:
                client.close()

            await eventually(
                all_succeeded(store, accepted), 60, "every accepted document to be processed"
            )
            # From the store: one outcome each (a second commit would be refused), its chunks
            # stored once.
            rows = store.run(
                lambda c: c.execute(
                    text(
                        "SELECT d.task_id, d.chunk_count, count(c.id) FROM documents d "
                        "LEFT JOIN chunks c ON c.document_id = d.id "
                        "WHERE d.processed_at IS NOT NULL GROUP BY d.task_id, d.chunk_count"
                    )
                ).all()
            )
            assert sorted(task_id for task_id, _, _ in rows) == sorted(accepted)
            assert all(chunk_count == stored for _, chunk_count, stored in rows)
    finally:
        api.stop()
        worker.stop()
        store.close()


async def test_a_task_due_later_met_while_rabbitmq_is_blocked_is_held_and_the_worker_goes_on(
    vhost: Vhost, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """The worker gives a task due later back to the delay queues and waits for RabbitMQ's
    confirm — which a blocked broker never sends. It waits HAND_BACK_TIMEOUT, then holds the
    task itself, as Celery would: the task behind it runs meanwhile, and the held one at its eta
    once the alarm is gone. A worker does not start while RabbitMQ blocks publishers, and no
    one can publish the tasks then: another consumer holds them from before the alarm and
    hands them back during it."""
    store = Store(vhost.settings().resolved_database_url)
    connection = await vhost.connect()
    worker: Process | None = None
    try:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(EXCHANGE, ensure=False)
        due = datetime.now(UTC) + timedelta(seconds=60)  # past a worker's start on a loaded host
        later, now = str(uuid.uuid4()), str(uuid.uuid4())
        for task_id, eta in ((later, due), (now, None)):
            message = task_message(canary.SUCCEED, task_id, kwargs={})
            message.headers["eta"] = eta.isoformat() if eta else None
            await exchange.publish(message, routing_key=DOCUMENT_QUEUE)
        holder = await connection.channel()
        await holder.set_qos(prefetch_count=2)
        queue = await holder.get_queue(DOCUMENT_QUEUE, ensure=False)
        held: list[AbstractIncomingMessage] = []
        both_held = asyncio.Event()

        async def hold(message: AbstractIncomingMessage) -> None:
            held.append(message)
            if len(held) == 2:
                both_held.set()

        await queue.consume(hold)
        await asyncio.wait_for(both_held.wait(), 10)
        worker = await start_worker(vhost, tmp_path / "worker.log")
        ahead = (due - datetime.now(UTC)).total_seconds()
        assert ahead > HOLD_LIMIT + 10, (
            f"the worker took so long to start that {ahead:.0f} s are left"
        )
        clear_alarm = request.getfixturevalue("memory_alarm")
        await holder.close()  # both back in the queue, in their order, and to the worker

        async def finished(task_id: str) -> task_runs.TaskRun | None:
            run = await asyncio.to_thread(store.run, task_runs.get, task_id)
            return run if run is not None and run.state == "SUCCESS" else None

        await eventually(lambda: finished(now), 30 + HAND_BACK_TIMEOUT, "the task behind to run")
        assert "cannot hand a delayed task back to the broker" in worker.output()
        assert await finished(later) is None, "not before its eta"
        clear_alarm()
        ran = await eventually(lambda: finished(later), 90, "the held task to run at its eta")
    finally:
        if worker is not None:
            worker.stop()
        await connection.close()
        store.close()
    assert ran.started_at is not None
    assert ran.started_at >= due - timedelta(seconds=1)  # Celery's timer, to the second


BACKLOG = 5000
"""Tasks queued before the alarm: with Celery's task events the worker's events connection filled
its socket's buffers after some 800 to 1,200 of them (three small events each), during the alarm."""


async def test_a_worker_works_through_its_backlog_while_rabbitmq_is_blocked(
    vhost: Vhost, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Task events on (the default): while RabbitMQ blocks the events' connection the worker drops
    them and goes on; when the alarm clears they flow again. Before, the kernel dropped the full
    connection (py-amqp's TCP_USER_TIMEOUT), Celery restarted its consumer for it, and the restart
    waited for the alarm to clear."""
    store = Store(vhost.settings().resolved_database_url)
    connection = await vhost.connect()
    worker: Process | None = None

    def succeeded() -> int:
        count = store.run(
            lambda c: c.execute(text("SELECT count(*) FROM task_runs WHERE state = 'SUCCESS'"))
        )
        return int(count.scalar_one())

    try:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(EXCHANGE, ensure=False)
        for start in range(0, BACKLOG, 250):
            await asyncio.gather(
                *(
                    exchange.publish(
                        task_message(canary.SUCCEED, str(uuid.uuid4()), kwargs={}),
                        routing_key=DOCUMENT_QUEUE,
                    )
                    for _ in range(start, min(start + 250, BACKLOG))
                )
            )
        worker = await start_worker(vhost, tmp_path / "worker.log", CELERY_TASK_EVENTS="true")
        events = await channel.declare_queue(exclusive=True, auto_delete=True)
        await events.bind("celeryev", routing_key="task.#")
        clear_alarm = request.getfixturevalue("memory_alarm")
        before = await asyncio.to_thread(succeeded)
        assert BACKLOG - before > 2500, f"{before} ran before the alarm: too few left to show it"

        async def all_ran() -> bool | None:
            return True if await asyncio.to_thread(succeeded) == BACKLOG else None

        await eventually(all_ran, 120, "the whole backlog to run while RabbitMQ blocks")
        assert "events are dropped until it unblocks; the work goes on" in worker.output()
        assert "Connection to broker lost" not in worker.output(), "the consumer restarted"
        clear_alarm()

        await worker.said(
            "RabbitMQ unblocked", 30, "the worker to hear that RabbitMQ unblocked its events"
        )
        await events.purge()
        after = str(uuid.uuid4())
        await exchange.publish(
            task_message(canary.SUCCEED, after, kwargs={}), routing_key=DOCUMENT_QUEUE
        )

        async def event_of_after() -> bool | None:
            while (message := await events.get(fail=False, no_ack=True)) is not None:
                if after.encode() in message.body and b"task-succeeded" in message.body:
                    return True
            return None

        await eventually(event_of_after, 30, "the next task's events to flow again")
    finally:
        if worker is not None:
            worker.stop()
        await connection.close()
        store.close()


async def test_a_worker_started_while_rabbitmq_is_blocked_runs_what_is_queued(
    vhost: Vhost, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A worker's consumer sends a hello to the other workers as it starts (Celery's Mingle), and
    Celery waited for RabbitMQ's confirm of it, which a blocked broker does not send: a worker
    started — or reconnected — during an alarm did nothing until the alarm cleared. The hello now
    goes without a confirm (service.worker.control): the worker finds itself alone and starts."""
    store = Store(vhost.settings().resolved_database_url)
    worker: Process | None = None
    try:
        queued = await queue_tasks(vhost, canary.SUCCEED, 20)
        clear_alarm = request.getfixturevalue("memory_alarm")
        worker = await start_worker(vhost, tmp_path / "worker.log")
        await eventually(
            all_succeeded(store, queued), 60, "what was queued to run while RabbitMQ blocks"
        )
        clear_alarm()
    finally:
        if worker is not None:
            worker.stop()
        store.close()


async def test_a_worker_losing_its_connection_while_rabbitmq_is_blocked_goes_on_and_stops(
    vhost: Vhost, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Celery restarts its consumer when the connection is lost, and closes the events connection
    first — with a handshake a blocked broker does not answer; the worker's stop closes it the
    same way. That connection is now dropped while blocked: the restarted consumer works through
    the rest during the alarm, and SIGTERM ends the worker at once."""
    store = Store(vhost.settings().resolved_database_url)
    worker: Process | None = None
    try:
        # Some 6 s of work for the worker's two pool processes.
        queued = await queue_tasks(vhost, canary.SLEEP, 60, seconds=0.2)
        worker = await start_worker(vhost, tmp_path / "worker.log", CELERY_TASK_EVENTS="true")
        clear_alarm = request.getfixturevalue("memory_alarm")
        await worker.said("events are dropped", 30, "RabbitMQ to block the worker's events")
        async with vhost.management() as management:

            async def consuming_connection() -> str | None:
                path = f"/api/consumers/{quote(vhost.name, safe='')}"
                found = (await management._request("GET", path)).json()
                names = {
                    item["channel_details"]["connection_name"]
                    for item in found
                    if item["queue"]["name"] == DOCUMENT_QUEUE and item.get("channel_details")
                }
                return names.pop() if len(names) == 1 else None

            name = await eventually(consuming_connection, 30, "the worker's consumer connection")
            closed = await management._request("DELETE", f"/api/connections/{quote(name)}")
            assert closed.status_code in (200, 204), closed.text

        await eventually(
            all_succeeded(store, queued),
            60,
            "the rest to run after the reconnect, RabbitMQ blocking",
        )
        assert "Connection to broker lost" in worker.output(), "the consumer restarted"
        stopping = time.monotonic()
        assert worker.stop() == 0, worker.tail()  # SIGTERM; SIGKILL after 20 s
        took = time.monotonic() - stopping
        assert took < 15, f"the worker took {took:.0f} s to stop while RabbitMQ blocks"
        worker = None
        clear_alarm()
    finally:
        if worker is not None:
            worker.stop()
        store.close()

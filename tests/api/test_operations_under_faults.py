"""/ready and /metrics while RabbitMQ misbehaves without going away: a link that stops forwarding
(the connection stays up), a management API that accepts connections and never answers, or one
that refuses them. The API runs under uvicorn in a thread, so that this test's event loop is free
to run the link and the silent listener beside it."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from service.api.app import create_app
from service.api.routes.operations import (
    NO_ANSWER,
    QUEUE_FIGURES_TIMEOUT,
    READY_TIMEOUT,
)
from service.broker.publisher import round_trip
from service.settings import Settings
from tests.support import CuttableLink, Vhost, free_port, served_by_uvicorn

pytestmark = pytest.mark.rabbitmq


class LinkInThread:
    """A `CuttableLink` run by an event loop of its own, in a thread: it goes on forwarding while
    this test's loop waits for uvicorn (`served_by_uvicorn` blocks it)."""

    def __init__(self, host: str, port: int) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self.link = CuttableLink(host, port)
        self.port = self.link.port

    def _run(self, operation: Coroutine[Any, Any, None]) -> None:
        asyncio.run_coroutine_threadsafe(operation, self._loop).result(10)

    def heal(self) -> None:
        self._run(self.link.heal())

    def hold(self) -> None:
        self._loop.call_soon_threadsafe(self.link.hold)

    def release(self) -> None:
        self._run(self.link.release())

    def close(self) -> None:
        self._run(self.link.cut())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


async def test_ready_says_the_broker_is_down_once_it_stops_answering_on_a_live_connection(
    api_vhost: Vhost, settings_for: Callable[..., Settings]
) -> None:
    rabbitmq = api_vhost.rabbitmq
    link = LinkInThread(rabbitmq.host, rabbitmq.port)
    try:
        link.heal()
        through = api_vhost.url.replace(f":{rabbitmq.port}/", f":{link.port}/")
        app = create_app(settings_for(DOCPROC_BROKER_URL=through))
        with served_by_uvicorn(app) as port:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
                before = await http.get("/ready")
                link.hold()  # RabbitMQ reads nothing more; its connection stays open
                started = time.monotonic()
                during = await asyncio.gather(*(http.get("/ready") for _ in range(4)))
                took = time.monotonic() - started
                link.release()
                after = await http.get("/ready")
    finally:
        link.close()

    assert before.status_code == 200, before.text
    for answer in during:
        assert answer.status_code == 503, answer.text
        assert answer.headers["content-type"] == "application/problem+json"
        assert answer.json()["broker"] == f"unavailable: {NO_ANSWER}"
        assert answer.json()["store"] == "ok"
        assert answer.json()["detail"] == "down: broker"
    assert took < READY_TIMEOUT + 1.5, f"the probes took {took:.1f} s"
    assert after.status_code == 200, after.text


class CountingConnection:
    """What `round_trip` uses of a connection, answering after `delay`, counting channels."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.opened = 0

    async def channel(self, publisher_confirms: bool = True) -> CountingConnection:
        self.opened += 1
        await asyncio.sleep(self.delay)
        return self

    async def close(self) -> None:
        return None


async def test_concurrent_probes_share_one_round_trip() -> None:
    slow = CountingConnection(delay=0.2)
    await asyncio.gather(*(round_trip(slow, 0.5) for _ in range(20)))  # type: ignore[arg-type]
    await round_trip(slow, 0.5)  # type: ignore[arg-type]
    assert slow.opened == 2

    silent = CountingConnection(delay=60)
    results = await asyncio.gather(
        *(round_trip(silent, 0.5) for _ in range(5)),  # type: ignore[arg-type]
        return_exceptions=True,
    )
    assert [type(result) for result in results] == [TimeoutError] * 5
    assert silent.opened == 1


@contextlib.asynccontextmanager
async def silent_nodes(count: int) -> AsyncIterator[list[str]]:
    """`count` HTTP servers that accept every connection and never answer."""
    held: list[asyncio.StreamWriter] = []

    async def hold(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    servers = [await asyncio.start_server(hold, "127.0.0.1", 0) for _ in range(count)]
    try:
        yield [f"http://127.0.0.1:{s.sockets[0].getsockname()[1]}" for s in servers]
    finally:
        for writer in held:
            writer.transport.abort()
        for server in servers:
            server.close()
            await server.wait_closed()


def gauges(text: str) -> dict[str, float]:
    return {
        sample.name + str(sorted(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def scrape(settings: Settings, times: int = 1) -> list[tuple[float, dict[str, float]]]:
    """Scrapes of one app's /metrics, one after the other: the seconds each took and its samples
    (with Prometheus' default 10 s timeout)."""
    scrapes = []
    with served_by_uvicorn(create_app(settings)) as port:
        async with httpx.AsyncClient(timeout=10) as http:
            for _ in range(times):
                started = time.monotonic()
                answer = await http.get(f"http://127.0.0.1:{port}/metrics")
                assert answer.status_code == 200, answer.text
                scrapes.append((time.monotonic() - started, gauges(answer.text)))
    return scrapes


STORE_UP = "docproc_store_up[]"
MANAGEMENT_UP = "docproc_management_up[]"
CONSUMERS = "docproc_queue_consumers[('queue', 'document_processing')]"


async def test_metrics_answer_in_time_without_the_queues_when_the_management_api_hangs(
    settings_for: Callable[..., Settings],
) -> None:
    async with silent_nodes(2) as nodes:
        [(took, samples)] = await scrape(settings_for(DOCPROC_MANAGEMENT_URL=";".join(nodes)))

    assert took < QUEUE_FIGURES_TIMEOUT + 2, f"/metrics took {took:.1f} s"
    assert samples[STORE_UP] == 1
    assert samples[MANAGEMENT_UP] == 0
    assert CONSUMERS not in samples
    assert "docproc_requests_total" in str(samples)


async def test_the_next_scrape_asks_the_node_that_answers_first(
    api_vhost: Vhost, settings_for: Callable[..., Settings]
) -> None:
    async with silent_nodes(1) as [silent]:
        urls = f"{silent};{api_vhost.rabbitmq.management_url}"
        first, second = await scrape(settings_for(DOCPROC_MANAGEMENT_URL=urls), times=2)

    assert first[1][MANAGEMENT_UP] == 0, "the silent node, asked first, had the whole deadline"
    assert second[1][MANAGEMENT_UP] == 1
    assert CONSUMERS in second[1]
    assert second[0] < 2, f"the second scrape took {second[0]:.1f} s"


async def test_metrics_say_when_the_management_api_refuses_connections(
    settings_for: Callable[..., Settings],
) -> None:
    refused = f"http://127.0.0.1:{free_port()}"
    [(_, down)] = await scrape(settings_for(DOCPROC_MANAGEMENT_URL=refused))
    [(_, up)] = await scrape(settings_for())

    assert down[MANAGEMENT_UP] == 0
    assert CONSUMERS not in down
    assert up[MANAGEMENT_UP] == 1
    assert CONSUMERS in up


async def test_metrics_say_when_the_management_api_answers_with_an_error(
    settings_for: Callable[..., Settings],
) -> None:
    async def unavailable(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(unavailable, "127.0.0.1", 0)
    node = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        [(_, samples)] = await scrape(settings_for(DOCPROC_MANAGEMENT_URL=node))
        with served_by_uvicorn(create_app(settings_for(DOCPROC_MANAGEMENT_URL=node))) as port:
            async with httpx.AsyncClient(timeout=10) as http:
                stats = await http.get(f"http://127.0.0.1:{port}/tasks/stats")
    finally:
        server.close()
        await server.wait_closed()

    assert samples[MANAGEMENT_UP] == 0
    assert samples[STORE_UP] == 1
    assert stats.status_code == 200, stats.text  # it was a 500
    assert "the management API answered" in str(stats.json()), stats.text

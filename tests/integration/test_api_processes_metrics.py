"""`docproc serve api` with several worker processes: /metrics adds up what each counted, so
that a counter never goes back whichever process answers a scrape — and still does once uvicorn
has replaced a worker that died."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support import Api, Vhost, eventually, start_api

pytestmark = pytest.mark.rabbitmq

HEALTH_CHECKS = 24
HEALTH = {"method": "GET", "path": "/health", "status_code": "200", "app_name": "docproc"}


async def health_count(http: httpx.AsyncClient) -> float:
    """docproc_requests_total of GET /health, as one scrape says it."""
    answer = await http.get("/metrics")
    assert answer.status_code == 200, answer.text
    families = {f.name: f for f in text_string_to_metric_families(answer.text)}
    assert "docproc_store_up" in families, "docproc's own figures are served too"
    return sum(
        sample.value
        for sample in families["docproc_requests"].samples
        if sample.name == "docproc_requests_total" and sample.labels == HEALTH
    )


def workers_of(api: Api) -> list[int]:
    """The pids of uvicorn's worker processes (spawned: `multiprocessing.spawn`)."""
    return [
        pid
        for pid in api.process.children()
        if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()
    ]


def metrics_directory(pid: int) -> Path:
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    [found] = [v for v in environ if v.startswith(b"PROMETHEUS_MULTIPROC_DIR=")]
    return Path(found.split(b"=", 1)[1].decode())


async def test_http_counters_add_up_across_the_api_processes(vhost: Vhost, tmp_path: Path) -> None:
    api = await start_api(vhost, tmp_path / "api.log", DOCPROC_API_WORKERS="2")
    # No connection kept: each request and each scrape reaches whichever process accepts it.
    fresh = httpx.Limits(max_keepalive_connections=0)
    try:
        async with httpx.AsyncClient(base_url=api.url, timeout=10, limits=fresh) as http:
            seen = []
            for _ in range(HEALTH_CHECKS):
                assert (await http.get("/health")).status_code == 200
                seen.append(await health_count(http))
            # A request is counted just after its answer is sent: the last may be a scrape late.
            seen.append(
                await eventually(
                    lambda: _at_least(http, HEALTH_CHECKS), 10, "every health check counted"
                )
            )
            assert seen == sorted(seen), f"a counter went back: {seen}"

            workers = workers_of(api)
            assert len(workers) == 2, api.process.tail()
            directory = metrics_directory(workers[0])
            # One that served requests: its requests in progress are a live gauge of its own.
            killed = next(p for p in workers if (directory / f"gauge_livesum_{p}.db").exists())
            os.kill(killed, signal.SIGKILL)

            async def retired() -> bool | None:
                # uvicorn starts another; the dead one's counts stay, its live gauges go.
                left = {p.name for p in directory.iterdir() if p.name.endswith(f"_{killed}.db")}
                return True if left == {f"counter_{killed}.db", f"histogram_{killed}.db"} else None

            await eventually(retired, 10, "the killed worker's live gauges to be retired")
            after = [await health_count(http) for _ in range(6)]
            assert min(after) >= seen[-1], f"counts were lost with the worker: {seen} {after}"
    finally:
        api.stop()
    assert not directory.exists(), "the metrics directory outlived the API"


async def _at_least(http: httpx.AsyncClient, count: int) -> float | None:
    found = await health_count(http)
    return found if found >= count else None

"""Status reads: `GET /tasks/{id}/status` per second from docproc's API, against the smallest
Litestar handler (bench.minimal_api) served by uvicorn the same way, with the same client at
the same concurrency. Server CPU per request is reported too: unlike requests per second, it
does not depend on how much of the two cores the client takes.
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from collections.abc import Awaitable, Callable

from sqlalchemy import Connection

from bench.harness import BenchError, Process, Session, alternate, free_port, http_ready
from bench.load import Load, client_cpu, http_load, latency
from bench.report import Comparison, median
from bench.wire import Client
from service.store import task_runs
from service.task_contract import PROCESS_DOCUMENT
from service.topology import DOCUMENT_QUEUE

TASKS = 100
WARM_UP = 200


def finished_runs(connection: Connection, count: int) -> list[str]:
    """`count` task runs as a successful document task leaves them."""
    ids = [str(uuid.uuid4()) for _ in range(count)]
    for task_id in ids:
        task_runs.record_pending(
            connection,
            task_id,
            PROCESS_DOCUMENT,
            document_id=str(uuid.uuid4()),
            queue=DOCUMENT_QUEUE,
        )
        task_runs.record_started(
            connection,
            task_runs.Start(
                task_id=task_id,
                task_name=PROCESS_DOCUMENT,
                retries=0,
                queue=DOCUMENT_QUEUE,
                worker="worker-1@bench",
                correlation_id=task_id,
            ),
        )
        task_runs.record_progress(connection, task_id, step="index", steps_done=3, steps_total=4)
        task_runs.record_success(connection, task_id)
    return ids


async def start_minimal(run: Session) -> tuple[Process, str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = await run.start(
        "minimal litestar",
        [sys.executable, "-m", "bench.minimal_api", str(port)],
        lambda: http_ready(url + "/health"),
    )
    return process, url


async def measure(run: Session) -> None:
    options = run.options
    store = run.store()
    ids = await asyncio.to_thread(store.run, finished_runs, TASKS)
    store.close()
    api, api_url = await run.start_docproc("api")
    minimal, minimal_url = await start_minimal(run)
    assert api_url is not None
    cpu: dict[str, list[float]] = {"docproc": [], "baseline": []}

    async def read(client: Client, index: int) -> None:
        answer = await client.get(f"/tasks/{ids[index % TASKS]}/status")
        if answer.status != 200:
            raise BenchError(f"GET status: {answer.status} {answer.body[:500]!r}")

    def reads(side: str, process: Process, url: str) -> Callable[[], Awaitable[Load]]:
        async def one_round() -> Load:
            before = process.cpu()
            load = await http_load(url, options.status_reads, options.concurrency, read)
            cpu[side].append((process.cpu() - before) / (load.count + options.concurrency) * 1e6)
            return load

        return one_round

    try:
        await http_load(api_url, WARM_UP, options.concurrency, read)
        await http_load(minimal_url, WARM_UP, options.concurrency, read)
        rounds = await alternate(
            options.rounds,
            {
                "baseline": reads("baseline", minimal, minimal_url),
                "docproc": reads("docproc", api, api_url),
            },
        )
    finally:
        run.stop(minimal)
        run.stop(api)
    mine, raw = rounds["docproc"], rounds["baseline"]
    shared = f"{options.concurrency} concurrent, one client"
    run.report.compare(
        Comparison(
            measure="status",
            figure="GET /tasks/{id}/status",
            unit="/s",
            baseline_name=f"minimal Litestar handler under uvicorn, {shared}",
            docproc=[load.rate for load in mine],
            baseline=[load.rate for load in raw],
            details={
                "docproc p50 / p99 ms": latency(mine),
                "baseline p50 / p99 ms": latency(raw),
            },
        )
    )
    client = client_cpu(raw)
    if client > median(cpu["baseline"]):
        run.report.notes.append(
            f"status: the client took {client:.0f} µs of CPU per request, more than the minimal "
            f"server ({median(cpu['baseline']):.0f} µs): both request rates are the client's, so "
            "their ratio flatters docproc; requests per server CPU second is the server's own"
        )
    run.report.compare(
        Comparison(
            measure="status",
            figure="requests per server CPU second",
            unit="/s",
            baseline_name="the same minimal handler's server process",
            docproc=[1e6 / us for us in cpu["docproc"]],
            baseline=[1e6 / us for us in cpu["baseline"]],
            target=0.5,
            details={
                "client CPU µs per request, against docproc / minimal": (
                    f"{client_cpu(mine):.0f} / {client_cpu(raw):.0f}"
                ),
                "server CPU µs per request, docproc / minimal": f"{median(cpu['docproc']):.0f} / "
                f"{median(cpu['baseline']):.0f}",
            },
        )
    )

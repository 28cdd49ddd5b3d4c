"""Process: documents through the worker end to end (accepted → SUCCESS in the store), against a
no-op Celery task through the same worker, and against the pipeline called directly.

Documents are accepted as the API accepts them (document and PENDING task run in one
transaction, then a confirmed publish) while the worker is idle, so the figure is the worker's
own: tasks per second from the first start to the last finish, as the store timestamps them.
The no-op is `docproc.canary.succeed` on the same queue and worker; it keeps the task-state
writes every docproc task gets. The direct call is `service.indexing.index_document`, the
function the task wraps (load, extract, chunk, the same store write), in as many processes as
the worker has, with no Celery and no progress writes.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import multiprocessing
import statistics
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace

import aio_pika
from sqlalchemy import Connection, func, select

from bench.corpus import longer_pdf, pdf_document, text_document
from bench.harness import (
    BenchError,
    Process,
    Session,
    alternate,
    children,
    cpu_seconds,
    eventually,
    local_broker_pids,
)
from bench.load import drive
from bench.report import Comparison, median
from service import pipeline
from service.broker.publisher import task_message
from service.indexing import index_document
from service.intake import Upload, accept
from service.settings import Settings
from service.store import task_runs
from service.store.database import Store
from service.store.schema import task_runs as runs
from service.task_contract import CANARY_SUCCEED, PROCESS_DOCUMENT
from service.topology import DOCUMENT_QUEUE, EXCHANGE

SMALL_BYTES = 2000
HEAVY_DISTINCT_PAGES = 32

# The direct call's per-process state, set by the pool's initializer.
_store: Store | None = None
_settings: Settings | None = None


def _init_direct(database_url: str, settings: Settings) -> None:
    global _store, _settings  # noqa: PLW0603  # one store per pool process, as the worker has
    _store = Store(database_url)
    _settings = settings


def direct(document_id: str) -> tuple[float, float]:
    """The document task's own function, minus Celery and progress: its start and end (epoch
    seconds), to be compared with the worker's task timestamps."""
    assert _store is not None
    assert _settings is not None
    started = time.time()
    index_document(_store, document_id, _settings)
    return started, time.time()


def pipeline_ms(data: bytes, filename: str, size: int, overlap: int) -> float:
    """Median milliseconds of extract + chunk_text on `data`, in this process."""
    times = []
    for _ in range(3):
        started = time.perf_counter()
        text = pipeline.extract(data, filename).text
        pipeline.chunk_text(text, size=size, overlap=overlap)
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def heavy_document(target_ms: float, size: int, overlap: int) -> tuple[bytes, float, int]:
    """A PDF with enough pages that the pipeline takes at least `target_ms` (with a margin):
    32 pages of prose, repeated (laying out 300 distinct pages took 3.5 s of a quick run)."""
    pages = HEAVY_DISTINCT_PAGES
    distinct = pdf_document(pages, seed=7)
    while True:
        data = longer_pdf(distinct, pages)
        ms = pipeline_ms(data, "heavy.pdf", size, overlap)
        if ms >= target_ms * 1.15:
            return data, ms, pages
        pages = max(pages + 1, math.ceil(pages * target_ms * 1.3 / ms))


def accept_all(
    connection: Connection, prefix: str, count: int, content: bytes, filename: str | None
) -> list[tuple[str, str]]:
    """`count` documents (or, without a filename, bare task runs) as the API accepts them."""
    sha256 = hashlib.sha256(content).hexdigest()
    accepted = []
    for index in range(count):
        document_id, task_id = str(uuid.uuid4()), f"{prefix}{index:06d}"
        if filename is None:
            task_runs.record_pending(connection, task_id, CANARY_SUCCEED, queue=DOCUMENT_QUEUE)
        else:
            upload = Upload(
                filename=filename,
                content_type=None,
                content=content,
                sha256=sha256,
                correlation_id=task_id,
            )
            accept(connection, upload, document_id, task_id)
        accepted.append((document_id, task_id))
    return accepted


def counted(connection: Connection, prefix: str) -> tuple[int, int]:
    """How many of a batch's tasks have succeeded, and how many failed: one row, read while the
    bench waits. Reading every finished task's times at each poll cost the bench, on the cores
    the worker uses, 70-150 µs of CPU a task more (`bench process --rounds 2`, two pairs)."""
    c = runs.c
    row = connection.execute(
        select(
            func.count().filter(c.state == "SUCCESS"),
            func.count().filter(c.state.in_(("FAILURE", "DEAD"))),
        ).where(c.task_id.like(prefix + "%"))
    ).one()
    return int(row[0]), int(row[1])


def spans(connection: Connection, prefix: str) -> list[tuple[float, float]]:
    """The (start, finish) epoch seconds of a batch's successful tasks."""
    c = runs.c
    rows = connection.execute(
        select(c.started_at, c.finished_at).where(
            c.task_id.like(prefix + "%"), c.state == "SUCCESS"
        )
    ).all()
    return [(row.started_at.timestamp(), row.finished_at.timestamp()) for row in rows]


class ChainCpu:
    """The CPU each part of the chain spends while a batch goes through the worker: its main
    process (consuming, dispatching to the pool, acking), its pool, the RabbitMQ node when it
    runs on this machine, and this process (publishing the batch, polling the store for its
    end). On two cores they all share the same CPU, so the rate follows their sum."""

    def __init__(self, worker: Process, broker: list[int]) -> None:
        self.worker = worker
        self.broker = broker
        self.before = self._read()

    def _read(self) -> dict[str, dict[int, float]]:
        parts = {
            "worker main": {self.worker.pid: cpu_seconds(self.worker.pid)},
            "worker pool": {child: cpu_seconds(child) for child in children(self.worker.pid)},
            "bench (publishing, polling)": {0: time.process_time()},
        }
        if self.broker:
            parts["RabbitMQ node"] = {pid: cpu_seconds(pid) for pid in self.broker}
        return parts

    def per_task(self, count: int) -> dict[str, float]:
        """µs of CPU per task of each part since this was made."""
        spent = {
            part: sum(seconds - self.before[part].get(pid, 0.0) for pid, seconds in pids.items())
            for part, pids in self._read().items()
        }
        return {part: seconds / count * 1e6 for part, seconds in spent.items()}


@dataclass(frozen=True)
class Batch:
    """How a batch went: its work spans (start, end), the processes that did it, and through
    the worker the CPU per task of each part of the chain."""

    spans: list[tuple[float, float]]
    processes: int
    cpu: dict[str, float] = field(default_factory=dict)

    @property
    def seconds(self) -> float:
        return max(end for _, end in self.spans) - min(start for start, _ in self.spans)

    @property
    def rate(self) -> float:
        return len(self.spans) / self.seconds

    @property
    def mean_ms(self) -> float:
        return statistics.mean(end - start for start, end in self.spans) * 1000

    @property
    def busy(self) -> float:
        """The share of the processes' time spent inside a task (or direct call)."""
        return sum(end - start for start, end in self.spans) / (self.seconds * self.processes)


def chain_cpu(documents: list[Batch], noops: list[Batch]) -> str:
    """'worker pool 2300 / 850, …, all 4530 / 2880': µs per task, document / no-op, medians."""
    figures = [
        f"{part} {median([b.cpu[part] for b in documents]):.0f} / "
        f"{median([b.cpu[part] for b in noops]):.0f}"
        for part in documents[0].cpu
    ]
    everything = [sum(b.cpu.values()) for b in documents], [sum(b.cpu.values()) for b in noops]
    figures.append(f"all {median(everything[0]):.0f} / {median(everything[1]):.0f}")
    return ", ".join(figures)


def _split(worker: list[Batch], direct: list[Batch]) -> dict[str, float | str]:
    return {
        "ms per document inside the task / the direct call": (
            f"{median([b.mean_ms for b in worker]):.1f} / {median([b.mean_ms for b in direct]):.1f}"
        ),
        "processes busy, worker / direct": (
            f"{median([b.busy for b in worker]):.0%} / {median([b.busy for b in direct]):.0%}"
        ),
    }


async def measure(run: Session) -> None:
    options, report = run.options, run.report
    settings = run.settings()
    size, overlap = settings.chunk_size, settings.chunk_overlap
    heavy, heavy_ms, pages = await asyncio.to_thread(
        heavy_document, options.heavy_ms, size, overlap
    )
    small = text_document(SMALL_BYTES)
    store = run.store()
    concurrency = str(options.worker_concurrency)
    worker, _ = await run.start_docproc("worker", CELERY_CONCURRENCY=concurrency)
    broker = local_broker_pids()  # read with each batch, found once
    pool = ProcessPoolExecutor(
        options.worker_concurrency,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_init_direct,
        initargs=(run.database_url, settings),
    )
    connection = await aio_pika.connect(run.broker_url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(EXCHANGE, ensure=False)

        async def through_worker(count: int, content: bytes | None, filename: str) -> Batch:
            prefix = f"bench-{uuid.uuid4().hex[:12]}-"
            name = None if content is None else filename
            accepted = await asyncio.to_thread(
                store.run, accept_all, prefix, count, content or b"", name
            )
            cpu = ChainCpu(worker, broker)

            async def publish(index: int) -> None:
                document_id, task_id = accepted[index]
                kwargs = {} if content is None else {"document_id": document_id}
                task = CANARY_SUCCEED if content is None else PROCESS_DOCUMENT
                message = task_message(task, task_id, kwargs=kwargs, correlation_id=task_id)
                await exchange.publish(message, routing_key=DOCUMENT_QUEUE, mandatory=True)

            await drive(count, 64, publish)

            async def done() -> Batch | None:
                worker.check()
                succeeded, failed = await asyncio.to_thread(store.run, counted, prefix)
                if failed:
                    raise BenchError(f"{failed} {filename} tasks failed; see {worker.log}")
                if succeeded < count:
                    return None
                found = await asyncio.to_thread(store.run, spans, prefix)
                return Batch(found, options.worker_concurrency)

            batch = await eventually(done, 30 + count * 0.5, f"{count} {filename} tasks")
            return replace(batch, cpu=cpu.per_task(count))

        async def direct_calls(count: int, content: bytes, filename: str) -> Batch:
            prefix = f"bench-{uuid.uuid4().hex[:12]}-"
            accepted = await asyncio.to_thread(
                store.run, accept_all, prefix, count, content, filename
            )
            loop = asyncio.get_running_loop()
            spans = await asyncio.gather(
                *(loop.run_in_executor(pool, direct, document_id) for document_id, _ in accepted)
            )
            return Batch(spans, options.worker_concurrency)

        n, h = options.process_documents, options.heavy_documents
        warm = 4 * options.worker_concurrency  # untimed: lazy imports, caches, connections
        await through_worker(warm, None, "no-op")
        await through_worker(warm, small, "small.txt")
        await direct_calls(warm, small, "small.txt")
        await through_worker(2 * options.worker_concurrency, heavy, "heavy.pdf")
        await direct_calls(2 * options.worker_concurrency, heavy, "heavy.pdf")
        smalls = await alternate(
            options.rounds,
            {
                "noop": lambda: through_worker(n, None, "no-op"),
                "docproc": lambda: through_worker(n, small, "small.txt"),
                "direct": lambda: direct_calls(n, small, "small.txt"),
            },
        )
        heavies = await alternate(
            options.rounds,
            {
                "docproc": lambda: through_worker(h, heavy, "heavy.pdf"),
                "direct": lambda: direct_calls(h, heavy, "heavy.pdf"),
            },
        )
    finally:
        await connection.close()
        pool.shutdown(cancel_futures=True)
        run.stop(worker)
        store.close()
    processes = f"{options.worker_concurrency} processes"
    heavy_details: dict[str, float | str] = {
        "documents": f"{h} PDFs of {pages} pages ({len(heavy) / 1000:.0f} kB) per round",
        "pipeline (extract + chunk) per document, ms": heavy_ms,
    }
    report.compare(
        Comparison(
            measure="process",
            figure="small documents",
            unit="/s",
            baseline_name=f"no-op task {CANARY_SUCCEED}, same worker",
            docproc=[b.rate for b in smalls["docproc"]],
            baseline=[b.rate for b in smalls["noop"]],
            target=0.75,
            details={
                "documents": f"{n} x {SMALL_BYTES} B text per round, {processes}",
                "ms per task inside the worker, document / no-op": (
                    f"{median([b.mean_ms for b in smalls['docproc']]):.1f} / "
                    f"{median([b.mean_ms for b in smalls['noop']]):.1f}"
                ),
                "CPU µs per task, document / no-op": chain_cpu(smalls["docproc"], smalls["noop"]),
            },
        )
    )
    report.compare(
        Comparison(
            measure="process",
            figure="small documents",
            unit="/s",
            baseline_name=f"direct load+extract+chunk+store, {processes}",
            docproc=[b.rate for b in smalls["docproc"]],
            baseline=[b.rate for b in smalls["direct"]],
            target=0.7,
            details=_split(smalls["docproc"], smalls["direct"]),
        )
    )
    report.compare(
        Comparison(
            measure="process",
            figure=f"documents of ≥{options.heavy_ms:g} ms",
            unit="/s",
            baseline_name=f"direct load+extract+chunk+store, {processes}",
            docproc=[b.rate for b in heavies["docproc"]],
            baseline=[b.rate for b in heavies["direct"]],
            target=0.9,
            details=heavy_details | _split(heavies["docproc"], heavies["direct"]),
        )
    )

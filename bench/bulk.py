"""Bulk: many small files through `docproc submit --wait`, end to end — the real CLI uploading to
the real API, the worker processing them, the CLI following every task to its end — in files
per second, from starting the command to its exit.

The mark: at least 0.8 x the slower of the two stages measured alone in the same run — the API
accepting documents (the submit measure) and the worker processing small documents of the same
size (the process measure) — as a pipeline runs no faster than its slowest stage. Run without
them, bulk reports its rate and no ratio: measuring the stages again would take as long as their
own measures, which `python -m bench submit process bulk` runs beside it.
"""

from __future__ import annotations

import asyncio
import resource
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy import Connection, func, select

from bench.corpus import text_document
from bench.harness import BenchError, Session, eventually
from bench.process import SMALL_BYTES
from bench.report import Comparison, Report, median
from service.store.schema import documents, task_runs

TARGET = 0.8
STAGES = {"submit": "documents accepted", "process": "small documents"}
"""The figures of the stages' own measures (their docproc side) that bound bulk's rate."""


def write_files(folder: Path, prefix: str, count: int) -> None:
    """`count` text files of about SMALL_BYTES, each different (none is a duplicate upload)."""
    folder.mkdir()
    body = text_document(SMALL_BYTES)
    for index in range(count):
        (folder / f"{prefix}{index:05d}.txt").write_bytes(f"File {index}.\n\n".encode() + body)


@dataclass(frozen=True)
class Outcome:
    succeeded: int
    last_accepted: datetime
    last_finished: datetime


def outcome(connection: Connection, prefix: str) -> Outcome:
    """How the batch's documents ended, as the store saw it."""
    row = connection.execute(
        select(
            func.count().filter(task_runs.c.state == "SUCCESS"),
            func.max(documents.c.created_at),
            func.max(task_runs.c.finished_at),
        )
        .select_from(documents.join(task_runs, task_runs.c.task_id == documents.c.task_id))
        .where(documents.c.filename.like(prefix + "%"))
    ).one()
    return Outcome(*row)


def stage_rates(report: Report) -> dict[str, float]:
    """The stages' rates measured earlier in this run (docproc side, median of rounds)."""
    return {
        measure: median(c.docproc)
        for c in report.comparisons
        for measure, figure in STAGES.items()
        if c.measure == measure and c.figure == figure
    }


async def measure(run: Session) -> None:
    options = run.options
    count = options.bulk_files
    prefix = f"bulk-{uuid.uuid4().hex[:8]}-"
    folder = run.workdir / "bulk"
    await asyncio.to_thread(write_files, folder, prefix, count)
    store = run.store()
    api, url = await run.start_docproc("api")
    assert url is not None
    worker, _ = await run.start_docproc(
        "worker", CELERY_CONCURRENCY=str(options.worker_concurrency)
    )
    timeout = 120 + count * 0.2
    args = [sys.executable, "-m", "service", "submit", str(folder), "--wait"]
    args += ["--api", url, "--timeout", f"{timeout:g}"]
    try:
        api_before, worker_before = api.cpu(), worker.cpu()
        children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started_at, started = time.time(), time.perf_counter()
        cli = run.spawn("docproc submit", args, run.env())

        async def exited() -> int | None:
            code = cli.popen.poll()
            if code is None:
                api.check()
                worker.check()
            return code

        code = await eventually(exited, timeout + 30, f"docproc submit of {count} files", 0.1)
        seconds = time.perf_counter() - started
        # The command is the only child that ends meanwhile: its CPU is what the children's grew.
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        api_cpu, worker_cpu = api.cpu() - api_before, worker.cpu() - worker_before
        if code != 0:
            raise BenchError(f"docproc submit exited {code}:\n{cli.tail()}")
        found = await asyncio.to_thread(store.run, outcome, prefix)
    finally:
        run.stop(worker)
        run.stop(api)
        store.close()
    if found.succeeded != count:
        raise BenchError(f"{found.succeeded} of {count} files ended SUCCESS; see {cli.log}")
    client = (children.ru_utime + children.ru_stime) - (
        children_before.ru_utime + children_before.ru_stime
    )
    uploaded = found.last_accepted.timestamp() - started_at
    processed = found.last_finished.timestamp() - started_at
    rate = count / seconds
    details: dict[str, float | str] = {
        "files": f"{count} x ~{SMALL_BYTES} B text, {options.worker_concurrency} worker processes",
        "last upload accepted / last task finished / command exited, s": (
            f"{uploaded:.1f} / {processed:.1f} / {seconds:.1f}"
        ),
        "CPU µs per file, the command / API / worker (its pool included)": (
            f"{client / count * 1e6:.0f} / {api_cpu / count * 1e6:.0f} / "
            f"{worker_cpu / count * 1e6:.0f}"
        ),
    }
    figure = "files through `docproc submit --wait`"
    stages = stage_rates(run.report)
    if len(stages) < len(STAGES):
        run.report.read(
            "bulk",
            figure,
            rate,
            "/s",
            f"{'; '.join(f'{k}: {v}' for k, v in details.items())}; no mark: its stages were not "
            "measured in this run (python -m bench submit process bulk)",
        )
        return
    slower = min(stages, key=stages.__getitem__)
    details["stages alone, accepted / processed per s"] = (
        f"{stages['submit']:.0f} / {stages['process']:.0f}"
    )
    run.report.compare(
        Comparison(
            measure="bulk",
            figure=figure,
            unit="/s",
            baseline_name=f"the slower stage alone in this run ({slower})",
            docproc=[rate],
            baseline=[stages[slower]],
            target=TARGET,
            details=details,
        )
    )

"""The machinery every measure shares: a fresh vhost and store, real docproc processes started
and stopped by deadline, and rounds that alternate the baseline with docproc.

Nothing here sleeps to synchronise: each wait polls a condition (a consumer on a queue, an HTTP
answer, a row count) until a deadline, and says what it waited for when the deadline passes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar
from urllib.parse import quote, unquote, urlsplit

import httpx
from sqlalchemy import text

from bench import profiling
from bench.report import Report
from service.broker.declarer import consumer_counts, declare_topology
from service.broker.management import Management
from service.settings import Settings
from service.store.database import Store
from service.store.migrations import upgrade
from service.topology import DEAD_LETTER_QUEUE, WORK_QUEUES

T = TypeVar("T")
ROOT = Path(__file__).resolve().parent.parent
LOG_LEVEL = "WARNING"
"""Every docproc process logs at this level: the cost of log lines is not what is measured."""


@dataclass(frozen=True)
class Options:
    """What one run measures and how much: the command line's options."""

    rounds: int = 3
    broker_url: str = "amqp://guest:guest@127.0.0.1:5672/"
    management_url: str = "http://127.0.0.1:15672"
    database_url: str | None = None
    concurrency: int = 32
    worker_concurrency: int = 2
    submit_documents: int = 500
    process_documents: int = 200
    heavy_documents: int = 24
    heavy_ms: float = 100.0
    # Each round a second or two: at 1,500 and 300 the dead-letter ratio read 0.64-0.78 and the
    # redrive one 0.44-0.64 in three runs minutes apart; at these sizes 0.65-0.71 and 0.43-0.44.
    dead_letters: int = 6000
    redrive_letters: int = 1500
    status_reads: int = 1200
    html_mb: float = 3.0
    pdf_mb: float = 0.4
    ocr_pages: int = 6
    ocr_lines: int = 30
    memory_dead_letters: int = 100_000
    search_chunks: tuple[int, ...] = (10_000, 100_000, 1_000_000)
    search_queries: int = 200
    bulk_files: int = 10_000
    keep_logs: bool = False
    profile: str | None = None


class BenchError(Exception):
    """A run that cannot go on: a process died, a deadline passed."""


async def eventually(
    probe: Callable[[], Awaitable[T | None]], timeout: float, what: str, interval: float = 0.05
) -> T:
    """Call `probe` until it returns something other than None; BenchError after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        result = await probe()
        if result is not None:
            return result
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(interval)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _proc_status(pid: int, key: str) -> int:
    """A kB figure from /proc/<pid>/status (VmRSS, VmHWM); 0 once the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def rss_kb(pid: int) -> int:
    return _proc_status(pid, "VmRSS")


def peak_rss_kb(pid: int) -> int:
    return _proc_status(pid, "VmHWM")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time the process has used so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def command_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def local_broker_pids() -> list[int]:
    """The Erlang VM of a RabbitMQ node on this machine (none when the broker is elsewhere)."""
    pids = (int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit())
    return [pid for pid in pids if command_name(pid) == "beam.smp"]


def children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


class Process:
    """A real process of the run, its output in a log file shown when it fails."""

    def __init__(self, name: str, args: Sequence[str], env: Mapping[str, str], log: Path) -> None:
        self.name = name
        self.log = log
        self._log_file = log.open("wb")
        self.popen = subprocess.Popen(
            list(args), env=dict(env), stdout=self._log_file, stderr=subprocess.STDOUT, cwd=ROOT
        )
        self.pid = self.popen.pid
        self.peaks: dict[str, int] = {}
        self.profiler: subprocess.Popen[bytes] | None = None
        self.profile: Path | None = None

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, lines: int = 40) -> str:
        self._log_file.flush()
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def check(self) -> None:
        if not self.alive():
            raise BenchError(f"{self.name} exited ({self.popen.returncode}):\n{self.tail()}")

    def peak_rss(self) -> dict[str, int]:
        """Peak RSS in kB of the process and of each child (a worker's pool processes)."""
        peaks = {self.name: peak_rss_kb(self.pid)}
        for number, child in enumerate(children(self.pid), start=1):
            peaks[f"{self.name} child {number}"] = peak_rss_kb(child)
        return {name: kb for name, kb in peaks.items() if kb}

    def cpu(self) -> float:
        return cpu_seconds(self.pid) + sum(cpu_seconds(child) for child in children(self.pid))

    def stop(self, timeout: float = 20.0) -> None:
        if self.alive():
            self.peaks = self.peak_rss() or self.peaks
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout)
        self._log_file.close()


@dataclass
class Session:
    """One run: its vhost, store, working directory, processes and report."""

    options: Options
    vhost: str
    workdir: Path
    database_url: str
    report: Report
    processes: list[Process] = field(default_factory=list)

    @property
    def broker_url(self) -> str:
        parts = urlsplit(self.options.broker_url)
        return parts._replace(path="/" + quote(self.vhost, safe="")).geturl()

    def env(self, **extra: str) -> dict[str, str]:
        """The environment of a docproc process of this run."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DOCPROC_", "CELERY_"))}
        env |= {
            "DOCPROC_BROKER_URL": self.broker_url,
            "DOCPROC_MANAGEMENT_URL": self.options.management_url,
            "DOCPROC_DATABASE_URL": self.database_url,
            "DOCPROC_DATA_DIR": str(self.workdir),
            "CELERY_LOG_LEVEL": LOG_LEVEL,
            "PYTHONUNBUFFERED": "1",
        }
        return env | extra

    def settings(self, **extra: str) -> Settings:
        return Settings.from_env(self.env(**extra))

    def store(self) -> Store:
        return Store(self.database_url)

    def vacuum(self, *tables: str) -> None:
        """On a PostgreSQL server whose autovacuum is off (this machine's CI configuration is
        one), what autovacuum would have done between two bursts of work: `tables`' dead rows
        cleared, so that a round does not pay for the rounds before it. (A ledger row is written
        and deleted for every dead letter: 400,000 dead rows made a batch's DELETE of stale rows
        scan them all, 11 ms a batch.) Said once in the report's notes. Nothing on SQLite, nor
        where autovacuum runs."""
        store = self.store()
        try:
            if store.engine.dialect.name != "postgresql":
                return
            with store.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
                if c.execute(text("SELECT current_setting('autovacuum')")).scalar() == "on":
                    return
                c.execute(text(f"VACUUM {', '.join(tables)}"))
        finally:
            store.close()
        note = (
            "PostgreSQL's autovacuum is off on this server: the tables docproc churns are "
            "vacuumed before each docproc round, as autovacuum would have"
        )
        if note not in self.report.notes:
            self.report.notes.append(note)

    def spawn(self, name: str, args: Sequence[str], env: Mapping[str, str]) -> Process:
        stem = f"{name.replace(' ', '-')}-{len(self.processes)}"
        process = Process(name, args, env, self.workdir / f"{stem}.log")
        self.processes.append(process)
        if self.options.profile:
            process.profile = Path(self.options.profile) / f"{stem}.txt"
            process.profile.parent.mkdir(parents=True, exist_ok=True)
            process.profiler = profiling.attach(process.pid, process.profile)
        return process

    async def start(
        self,
        name: str,
        args: Sequence[str],
        ready: Callable[[], Awaitable[bool]],
        *,
        env: Mapping[str, str] | None = None,
        timeout: float = 45.0,
    ) -> Process:
        """Start a process and return once `ready()` says so; BenchError if it dies first."""
        process = self.spawn(name, args, env or self.env())

        async def probe() -> bool | None:
            process.check()
            return True if await ready() else None

        try:
            await eventually(probe, timeout, f"{name} to be ready", interval=0.1)
        except BenchError as exc:
            process.stop()
            raise BenchError(f"{exc}\n{process.tail()}") from None
        return process

    def stop(self, process: Process) -> None:
        if process.popen.returncode is not None and process.profiler is None:
            return  # stopped before
        process.stop()
        for name, kb in process.peaks.items():
            self.report.peak(name, kb)
        if process.profiler is not None:
            try:
                process.profiler.wait(30)  # py-spy writes its profile once the target is gone
            except subprocess.TimeoutExpired:
                process.profiler.kill()
            process.profiler = None
            if process.profile is not None and process.profile.exists():
                self.report.profiles.append(profiling.summarise(process.profile))

    async def start_docproc(self, component: str, **extra: str) -> tuple[Process, str | None]:
        """`docproc serve <component>`, ready: the API answering /ready (its URL is returned),
        the worker consuming its queues, the DLQ consumer consuming docproc.dead_letter."""
        args = [sys.executable, "-m", "service", "serve", component]
        if component == "api":
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            env = self.env(DOCPROC_API_PORT=str(port), **extra)
            process = await self.start("api", args, lambda: http_ready(url + "/ready"), env=env)
            return process, url
        queues = [DEAD_LETTER_QUEUE] if component == "dlq" else list(WORK_QUEUES)
        settings = self.settings()

        async def consuming() -> bool:
            return all((await consumer_counts(settings, queues)).values())

        process = await self.start(component, args, consuming, env=self.env(**extra))
        return process, None


async def http_ready(url: str) -> bool:
    try:
        async with httpx.AsyncClient(timeout=2.0) as client:
            return (await client.get(url)).status_code == 200
    except httpx.HTTPError:
        return False


def _management(options: Options, vhost: str) -> Management:
    parts = urlsplit(options.broker_url)
    auth = (unquote(parts.username or "guest"), unquote(parts.password or "guest"))
    return Management(options.management_url, vhost, auth)


@contextlib.asynccontextmanager
async def session(options: Options, report: Report) -> AsyncIterator[Session]:
    """A fresh vhost with docproc's topology and a migrated store, all gone at the end — after a
    failure or Ctrl-C too."""
    vhost = f"docproc-bench-{uuid.uuid4().hex[:10]}"
    workdir = Path(tempfile.mkdtemp(prefix="docproc-bench-"))
    database_url = options.database_url or f"sqlite:///{workdir / 'docproc.db'}"
    async with _management(options, vhost) as management:
        await management.create_vhost()
        run = Session(options, vhost, workdir, database_url, report)
        try:
            await declare_topology(run.settings())
            await asyncio.to_thread(upgrade, database_url)
            yield run
        finally:
            for process in reversed(run.processes):
                run.stop(process)
            await asyncio.shield(management.delete_vhost())
            if options.keep_logs:
                print(f"logs kept in {workdir}", file=sys.stderr)
            else:
                shutil.rmtree(workdir, ignore_errors=True)


Runner = Callable[[], Awaitable[T]]


async def alternate(rounds: int, runners: Mapping[str, Runner[T]]) -> dict[str, list[T]]:
    """Run each runner once per round, the order rotated every round so that neither side
    always runs first on a machine whose load drifts."""
    names = list(runners)
    results: dict[str, list[T]] = {name: [] for name in names}
    for number in range(rounds):
        shift = number % len(names)
        for name in names[shift:] + names[:shift]:
            results[name].append(await runners[name]())
    return results

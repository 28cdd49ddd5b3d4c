"""`docproc up`: the four processes on one machine, supervised.

Starts API, worker, beat and DLQ consumer as child processes (after declaring the topology and
migrating the store), restarts a child that dies with a growing pause, stops everything with a
clear message when one keeps dying, and on SIGINT/SIGTERM shuts down in order: stop accepting
(API, beat), let the worker finish or hand back its tasks (late ack), drain the DLQ consumer.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass

import httpx
from loguru import logger

from service.broker import consumer_timeout
from service.broker.connection import BROKER_ERRORS
from service.broker.declarer import consumer_counts
from service.broker.management import Management
from service.errors import ConfigError, DocprocError, abort
from service.redaction import redact
from service.settings import Settings
from service.tessdata import configured, problem
from service.topology import DEAD_LETTER_QUEUE, WORK_QUEUES

START_ORDER = ("dlq", "worker", "beat", "api")
STOP_ORDER = ("api", "beat", "worker", "dlq")
STOP_TIMEOUT = {"api": 25.0, "beat": 10.0, "worker": 60.0, "dlq": 20.0}
READY_TIMEOUT = 60.0
PROBE_TIMEOUT = 10.0
"""The longest a look at RabbitMQ's consumers may take while `up` waits for its children: a
broker that stalls (a network path that swallows traffic) is "not ready yet", and Ctrl-C is
heard within it."""
_PROBE_FAILED: tuple[type[BaseException], ...] = (DocprocError, *BROKER_ERRORS)
MAX_RESTARTS = 5
"""Deaths in a row, each within STABLE_AFTER of the child's start, after which `up` gives up."""
STABLE_AFTER = 60.0
"""Seconds a child runs before a death of it counts as a first again. Deaths were counted
within a window of 60 s instead: a child that died 8 s after each start, the pauses between
starts included, never had six in a window, and was restarted for ever."""
LONGEST_RESTART_PAUSE = 30.0


def _die_with_parent() -> None:
    """In the child, before exec: be sent SIGTERM if `up` itself dies (Linux), no orphans."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class Child:
    name: str
    process: asyncio.subprocess.Process | None = None
    started_at: float = 0.0
    deaths: int = 0
    """Deaths in a row, each within STABLE_AFTER of its start."""

    async def start(self) -> None:
        self.started_at = time.monotonic()
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "service",
            "serve",
            self.name,
            # Its own session: a Ctrl-C in the terminal reaches `up` only, which stops the
            # children in order instead of all at once.
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        logger.bind(child=self.name, child_pid=self.process.pid).info("started {}", self.name)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    async def stop(self, timeout: float) -> int | None:
        if self.process is None or self.process.returncode is not None:
            return self.process.returncode if self.process else None
        self.process.send_signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(self.process.wait(), timeout)
        except TimeoutError:
            logger.warning("{} did not stop within {:g} s; killing it", self.name, timeout)
            self.process.kill()
            return await self.process.wait()


class GaveUp(Exception):
    """A child kept dying."""


class Supervisor:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.children = {name: Child(name) for name in START_ORDER}
        self.stopping = asyncio.Event()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, self.stopping.set)
        started = time.monotonic()
        for child in self.children.values():
            await child.start()
        try:
            await self._wait_ready(started)
            await self._supervise()
        except GaveUp as exc:
            _say(f"docproc up: {exc}")
            return 1
        else:
            return 0
        finally:
            await self._stop_all()

    async def _wait_ready(self, started: float) -> None:
        deadline = started + READY_TIMEOUT
        while not self.stopping.is_set():
            await self._restart_dead()
            if self.stopping.is_set():
                return
            missing = await self._not_ready()
            if not missing:
                elapsed = time.monotonic() - started
                _banner(self.settings, elapsed)
                logger.bind(seconds=round(elapsed, 2)).info("every component is connected")
                return
            if time.monotonic() > deadline:
                logger.warning("still waiting for: {}", ", ".join(missing))
                deadline = time.monotonic() + READY_TIMEOUT
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), 0.25)

    async def _not_ready(self) -> list[str]:
        missing = []
        try:
            async with httpx.AsyncClient(timeout=2) as http:
                response = await http.get(f"{self.settings.api_url}/ready")
            if response.status_code != 200:
                missing.append("api")
        except httpx.HTTPError:
            missing.append("api")
        try:
            queues = await asyncio.wait_for(
                consumer_counts(self.settings, [*WORK_QUEUES, DEAD_LETTER_QUEUE]), PROBE_TIMEOUT
            )
        except _PROBE_FAILED as exc:
            # Not there yet, or its connection dropped or stalled: the next look says.
            logger.debug("RabbitMQ's consumers could not be read yet: {}", exc)
            return [*missing, "worker", "dlq"]
        if not all(queues.get(name, 0) > 0 for name in WORK_QUEUES):
            missing.append("worker")
        if queues.get(DEAD_LETTER_QUEUE, 0) == 0:
            missing.append("dlq")
        return missing

    def _check_children(self) -> list[Child]:
        """The children that died; raises GaveUp for one that keeps dying: more than
        MAX_RESTARTS times in a row, each soon after its start."""
        dead = []
        now = time.monotonic()
        for child in self.children.values():
            if child.process is not None and child.process.returncode is not None:
                soon = now - child.started_at < STABLE_AFTER
                child.deaths = child.deaths + 1 if soon else 1
                if child.deaths > MAX_RESTARTS:
                    raise GaveUp(
                        f"the {child.name} process keeps dying (exit status "
                        f"{child.process.returncode}, {child.deaths} times in a row, each within "
                        f"{STABLE_AFTER:g} s of its start); its log lines above say why"
                    )
                dead.append(child)
        return dead

    async def _supervise(self) -> None:
        while not self.stopping.is_set():
            await self._restart_dead()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), 0.25)

    async def _restart_dead(self) -> None:
        """Restart each child that died, after a pause that doubles with its recent deaths."""
        for child in self._check_children():
            assert child.process is not None
            pause = min(
                self.settings.restart_delay * 2 ** (child.deaths - 1), LONGEST_RESTART_PAUSE
            )
            logger.bind(child=child.name, exit_status=child.process.returncode).warning(
                "{} exited with status {}; restarting it in {:g} s",
                child.name,
                child.process.returncode,
                pause,
            )
            child.process = None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), pause)
            if self.stopping.is_set():
                return
            await child.start()

    async def _stop_all(self) -> None:
        _say("docproc up: stopping (API, beat, worker, DLQ consumer, in that order)")
        for name in STOP_ORDER:
            status = await self.children[name].stop(STOP_TIMEOUT[name])
            logger.bind(child=name, exit_status=status).info("{} stopped", name)


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _banner(settings: Settings, elapsed: float) -> None:
    _say(
        f"docproc is up ({elapsed:.1f} s)\n"
        f"  API               {settings.api_url}\n"
        f"  API docs          {settings.api_url}/schema\n"
        f"  RabbitMQ UI       {redact(settings.management_url)}\n"
        f"  store             {redact(settings.resolved_database_url)}\n"
        "Ctrl-C stops it."
    )


def check_port(settings: Settings) -> None:
    """Stop at once, with the fix, when the API's address is taken (otherwise the API child would
    die at each start, and `up` would give up a minute later with the reason buried)."""
    address = f"{settings.api_host}:{settings.api_port}"
    try:
        with socket.socket(
            socket.AF_INET6 if ":" in settings.api_host else socket.AF_INET
        ) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
            probe.bind((settings.api_host, settings.api_port))
    except OSError as exc:
        reason = "is taken by another program" if exc.errno == errno.EADDRINUSE else f"({exc})"
        abort(
            ConfigError(
                f"{address} {reason}: stop it, or set DOCPROC_API_PORT (and DOCPROC_API_HOST) "
                "to an address that is free"
            )
        )


def warn_about_the_broker(settings: Settings) -> None:
    """What `docproc topology check` warns about, said at start: a consumer timeout shorter than
    the task time limit (a long task would be cut off and run again)."""

    async def lines() -> list[str]:
        async with Management.from_settings(settings) as management:
            return await consumer_timeout.check(settings, management)

    for line in asyncio.run(lines()):
        if line.startswith("warning:"):
            _say(f"docproc up: {line}")


def warn_about_ocr(settings: Settings) -> None:
    """Say at start when OCR is configured but Tesseract or its language data is missing here:
    the worker would fail every scan and image (OcrUnavailable, naming what to install)."""
    reason = problem(configured(settings))
    if reason is not None:
        _say(f"docproc up: warning: {reason}; until then scans and images end DEAD")


def run(settings: Settings) -> int:
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    return asyncio.run(Supervisor(settings).run())

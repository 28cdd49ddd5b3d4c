"""What the tests share: the services they need, real processes, and waiting with a deadline."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit, urlunsplit

import aio_pika
import psycopg
import pytest
import uvicorn
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage

from service.api.server import GuardedHttpToolsProtocol
from service.broker.declarer import consumer_counts
from service.broker.management import Management
from service.broker.publisher import task_message
from service.settings import Settings
from service.store import task_runs
from service.store.database import Store
from service.store.migrations import upgrade
from service.topology import DEAD_LETTER_QUEUE, DOCUMENT_QUEUE, EXCHANGE, WORK_QUEUES

ROOT = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI", "").lower() == "true"

T = TypeVar("T")

# Worker settings for tests: short retries and time limits, so that each path takes seconds.
FAST_WORKER_ENV = {
    "CELERY_RETRY_DELAY": "1",
    "CELERY_RETRY_BACKOFF_MAX": "2",
    "CELERY_MAX_RETRIES": "5",
    "CELERY_SOFT_TIME_LIMIT": "20",
    "CELERY_TIME_LIMIT": "30",
    "CELERY_CONCURRENCY": "2",
    "CELERY_LOG_LEVEL": "INFO",
}


def missing(reason: str) -> None:
    """A service the test needs is not there: fail under CI=true, skip elsewhere, saying why."""
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: a missing service fails the run)", pytrace=False)
    pytest.skip(reason)


def free_port() -> int:
    """A TCP port nobody listens on right now, for a server a test starts."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def served_by_uvicorn(
    app: Any, *, http: type[asyncio.Protocol] = GuardedHttpToolsProtocol
) -> Iterator[int]:
    """`app` served by uvicorn in a thread of this process, on a free port (yielded), with
    docproc's HTTP protocol as `docproc serve api` serves it, until the block ends."""
    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_config=None, lifespan="on", http=http
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started:  # set once uvicorn listens
            assert thread.is_alive(), "uvicorn stopped before it listened"
            assert time.monotonic() < deadline, "uvicorn did not listen within 20 s"
            thread.join(0.01)
        yield port
    finally:
        server.should_exit = True
        thread.join(20)
        assert not thread.is_alive()


def port_open(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


async def eventually(
    probe: Callable[[], Awaitable[T | None]],
    timeout: float,
    what: str,
    interval: float = 0.1,
) -> T:
    """Call `probe` until it returns something other than None; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = await probe()
        if result is not None:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(interval)


@dataclass(frozen=True)
class RabbitMQ:
    """A broker the tests may create vhosts on."""

    host: str
    port: int
    user: str
    password: str
    management_url: str

    def url(self, vhost: str) -> str:
        return (
            f"amqp://{quote(self.user, safe='')}:{quote(self.password, safe='')}"
            f"@{self.host}:{self.port}/{quote(vhost, safe='')}"
        )

    def management(self, vhost: str) -> Management:
        return Management(self.management_url, vhost, (self.user, self.password))


@dataclass(frozen=True)
class Vhost:
    """One vhost of the test broker, and the settings that point docproc at it."""

    rabbitmq: RabbitMQ
    name: str
    overrides: Mapping[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.rabbitmq.url(self.name)

    def env(self, **overrides: str) -> dict[str, str]:
        """The environment for a docproc process on this vhost."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DOCPROC_", "CELERY_"))}
        env |= {
            "DOCPROC_BROKER_URL": self.url,
            "DOCPROC_MANAGEMENT_URL": self.rabbitmq.management_url,
            "PYTHONUNBUFFERED": "1",
        }
        return env | dict(self.overrides) | overrides

    def settings(self, **overrides: str) -> Settings:
        return Settings.from_env(self.env(**overrides))

    def management(self) -> Management:
        return self.rabbitmq.management(self.name)

    async def connect(self) -> aio_pika.abc.AbstractConnection:
        return await aio_pika.connect(self.url)


async def create_vhost(rabbitmq: RabbitMQ, prefix: str = "docproc-test") -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:10]}"
    async with rabbitmq.management(name) as management:
        await management.create_vhost()
    return name


async def delete_vhost(rabbitmq: RabbitMQ, name: str) -> None:
    async with rabbitmq.management(name) as management:
        await management.delete_vhost()


def docproc_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "service", *args]


class Process:
    """A real docproc process, its output in a file so a failing test can show it."""

    def __init__(
        self, args: list[str], env: Mapping[str, str], log: Path, cwd: Path = ROOT
    ) -> None:
        self.args = args
        self.log = log
        self._log_file = log.open("wb")
        self.popen = subprocess.Popen(
            args, env=dict(env), stdout=self._log_file, stderr=subprocess.STDOUT, cwd=cwd
        )

    def output(self) -> str:
        if not self._log_file.closed:
            self._log_file.flush()
        return self.log.read_text(errors="replace")

    def tail(self, lines: int = 60) -> str:
        return "\n".join(self.output().splitlines()[-lines:])

    async def said(self, text: str, timeout: float, what: str, interval: float = 0.25) -> None:
        """Wait until the process's log has `text` (read off the event loop)."""
        await eventually(
            lambda: asyncio.to_thread(lambda: True if text in self.output() else None),
            timeout,
            what,
            interval=interval,
        )

    def alive(self) -> bool:
        return self.popen.poll() is None

    def children(self) -> list[int]:
        """The pids of this process's children (a worker's pool processes)."""
        found = subprocess.run(
            ["pgrep", "-P", str(self.popen.pid)], capture_output=True, text=True, check=False
        )
        return [int(pid) for pid in found.stdout.split()]

    def stop(self, timeout: float = 20.0) -> int:
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout)
        self._log_file.close()
        return self.popen.returncode


def all_succeeded(store: Store, task_ids: list[str]) -> Callable[[], Awaitable[bool | None]]:
    """A probe for `eventually`: True once every task of `task_ids` has succeeded."""

    async def probe() -> bool | None:
        runs = [await asyncio.to_thread(store.run, task_runs.get, t) for t in task_ids]
        return True if all(r is not None and r.state == "SUCCESS" for r in runs) else None

    return probe


async def queue_tasks(vhost: Vhost, task: str, count: int, **kwargs: Any) -> list[str]:
    """`count` tasks published to document_processing, each confirmed; their ids."""
    ids = [str(uuid.uuid4()) for _ in range(count)]
    connection = await vhost.connect()
    try:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(EXCHANGE, ensure=False)
        for task_id in ids:
            message = task_message(task, task_id, kwargs=kwargs)
            await exchange.publish(message, routing_key=DOCUMENT_QUEUE)
    finally:
        await connection.close()
    return ids


async def start_worker(
    vhost: Vhost, log: Path, *, prefix: Sequence[str] = (), **env: str
) -> Process:
    """A worker on `vhost`, returned once it consumes all three work queues; `prefix` runs it
    (`ip netns exec NAME`, say)."""
    command = [*prefix, *docproc_command("serve", "worker")]
    worker = Process(command, vhost.env(**(FAST_WORKER_ENV | env)), log)

    async def consuming() -> bool | None:
        if not worker.alive():
            raise AssertionError(f"the worker exited early:\n{worker.tail()}")
        counts = await consumer_counts(vhost.settings(), WORK_QUEUES)
        return True if all(counts.values()) else None

    try:
        # A worker consumes in ~3 s on an idle machine; the deadline is for a loaded one.
        await eventually(consuming, 90, "the worker to consume its queues", interval=0.25)
    except AssertionError as exc:
        worker.stop()
        raise AssertionError(f"{exc}\n{worker.tail()}") from None
    return worker


class Reports:
    """An exclusive queue that canary tasks report to (their `report_to`)."""

    def __init__(self, channel: AbstractChannel, queue: aio_pika.abc.AbstractQueue) -> None:
        self._channel = channel
        self._queue = queue
        self.seen: list[dict[str, Any]] = []

    @classmethod
    async def open(cls, connection: aio_pika.abc.AbstractConnection) -> Reports:
        channel = await connection.channel()
        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        return cls(channel, queue)

    @property
    def name(self) -> str:
        return self._queue.name

    async def _drain(self) -> None:
        while (message := await self._queue.get(no_ack=True, fail=False)) is not None:
            self.seen.append(json.loads(message.body))

    async def wait_for(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 30, what: str = ""
    ) -> dict[str, Any]:
        async def probe() -> dict[str, Any] | None:
            await self._drain()
            return next((report for report in self.seen if predicate(report)), None)

        return await eventually(probe, timeout, what or "a canary report")

    async def events(self, task_id: str) -> list[str]:
        await self._drain()
        return [report["event"] for report in self.seen if report["task_id"] == task_id]


class DeadLetterQueue:
    """Reads `docproc.dead_letter` directly (no DLQ consumer runs in these tests)."""

    def __init__(self, channel: AbstractChannel) -> None:
        self._channel = channel
        self.seen: list[AbstractIncomingMessage] = []

    async def _drain(self) -> None:
        queue = await self._channel.get_queue(DEAD_LETTER_QUEUE, ensure=False)
        while (message := await queue.get(no_ack=True, fail=False)) is not None:
            self.seen.append(message)

    async def wait_for(
        self,
        predicate: Callable[[AbstractIncomingMessage], bool],
        timeout: float = 30,
        what: str = "a dead letter",
    ) -> AbstractIncomingMessage:
        async def probe() -> AbstractIncomingMessage | None:
            await self._drain()
            return next((message for message in self.seen if predicate(message)), None)

        return await eventually(probe, timeout, what)

    async def drained(self) -> list[AbstractIncomingMessage]:
        """Every dead letter read so far, the queue read to its end first."""
        await self._drain()
        return list(self.seen)

    async def for_task(self, task_id: str, timeout: float = 30) -> AbstractIncomingMessage:
        return await self.wait_for(
            lambda m: (m.headers or {}).get("id") == task_id, timeout, f"task {task_id} to die"
        )


def first_death(message: AbstractIncomingMessage) -> dict[str, Any]:
    deaths = (message.headers or {}).get("x-death")
    assert isinstance(deaths, list), f"no x-death header: {message.headers}"
    assert deaths, f"an empty x-death header: {message.headers}"
    death = deaths[0]
    assert isinstance(death, dict)
    return death


def broker_from_environment() -> RabbitMQ | None:
    """DOCPROC_TEST_BROKER_URL, else a broker answering on localhost, else None."""
    url = os.environ.get("DOCPROC_TEST_BROKER_URL")
    management = os.environ.get("DOCPROC_TEST_MANAGEMENT_URL")
    if url:
        parts = urlsplit(url)
        host = parts.hostname or "localhost"
        return RabbitMQ(
            host=host,
            port=parts.port or 5672,
            user=parts.username or "guest",
            password=parts.password or "guest",
            management_url=management or f"http://{host}:15672",
        )
    if port_open("127.0.0.1", 5672):
        return RabbitMQ("127.0.0.1", 5672, "guest", "guest", management or "http://127.0.0.1:15672")
    return None


def run_docproc(
    *args: str, env: Mapping[str, str], timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        docproc_command(*args),
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        check=False,
    )


async def start_dlq(vhost: Vhost, log: Path, **env: str) -> Process:
    """A DLQ consumer on `vhost`, returned once it consumes docproc.dead_letter."""
    consumer = Process(docproc_command("serve", "dlq"), vhost.env(**env), log)

    async def consuming() -> bool | None:
        if not consumer.alive():
            raise AssertionError(f"the DLQ consumer exited early:\n{consumer.tail()}")
        counts = await consumer_counts(vhost.settings(), [DEAD_LETTER_QUEUE])
        return True if counts[DEAD_LETTER_QUEUE] else None

    try:
        await eventually(consuming, 30, "the DLQ consumer to consume", interval=0.25)
    except AssertionError as exc:
        consumer.stop()
        raise AssertionError(f"{exc}\n{consumer.tail()}") from None
    return consumer


@dataclass
class Api:
    """A real `docproc serve api` process and where it answers."""

    process: Process
    url: str

    def stop(self) -> int:
        return self.process.stop()


async def start_api(vhost: Vhost, log: Path, **env: str) -> Api:
    """An API process on `vhost` and a free port, returned once /ready answers 200."""
    import httpx

    port = free_port()
    process = Process(
        docproc_command("serve", "api"), vhost.env(DOCPROC_API_PORT=str(port), **env), log
    )
    url = f"http://127.0.0.1:{port}"

    async def ready() -> bool | None:
        if not process.alive():
            raise AssertionError(f"the API exited early:\n{process.tail()}")
        try:
            async with httpx.AsyncClient(timeout=2) as http:
                return True if (await http.get(f"{url}/ready")).status_code == 200 else None
        except httpx.HTTPError:
            return None

    try:
        await eventually(ready, 60, "the API to be ready", interval=0.25)
    except AssertionError as exc:
        process.stop()
        raise AssertionError(f"{exc}\n{process.tail()}") from None
    return Api(process, url)


def rabbitmqctl_on(rabbitmq: RabbitMQ) -> Callable[..., str]:
    """`rabbitmqctl` for the test broker, which must run on this machine (fail in CI if not)."""
    import shutil

    if shutil.which("rabbitmqctl") is None or rabbitmq.host not in ("127.0.0.1", "localhost"):
        missing("this test drives the broker with rabbitmqctl, on the broker's own machine")

    def run(*args: str) -> str:
        done = subprocess.run(
            ["rabbitmqctl", "-q", *args], check=True, capture_output=True, text=True, timeout=120
        )
        return done.stdout.strip()

    return run


class CuttableLink:
    """A TCP proxy in front of a server (RabbitMQ) that a test can cut and heal: connections
    through it drop at once and new ones are refused, as across a network partition. It can also
    hold what clients send, until released: a server that stops reading a connection that stays
    up, as RabbitMQ blocked by a memory or disk alarm does."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.StreamWriter] = set()
        self._holding = False
        self._held: list[tuple[asyncio.StreamWriter, bytes]] = []

    def hold(self) -> None:
        self._holding = True

    async def release(self) -> None:
        """Send what was held, in order, and pass what comes from now on."""
        self._holding = False
        held, self._held = self._held, []
        for writer, chunk in held:  # no wait between writes: nothing overtakes what was held
            if not writer.is_closing():
                writer.write(chunk)
        for writer in {writer for writer, _ in held if not writer.is_closing()}:
            await writer.drain()

    async def heal(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def cut(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in list(self._pipes):
            writer.transport.abort()
        self._pipes.clear()
        self._holding = False
        self._held.clear()  # lost with their connections

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._pipes.update((writer, upstream_writer))
        await asyncio.gather(
            self._pump(reader, upstream_writer, upstream=True), self._pump(upstream_reader, writer)
        )

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, upstream: bool = False
    ) -> None:
        try:
            while chunk := await reader.read(65536):
                if upstream and (self._holding or self._held):
                    self._held.append((writer, chunk))
                    continue
                writer.write(chunk)
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            self._pipes.discard(writer)
            writer.transport.abort()


async def topology_vhost(rabbitmq: RabbitMQ, store_url: str, **overrides: str) -> Vhost:
    """A fresh vhost with docproc's topology declared, and settings pointing at `store_url`
    (migrated); delete it with `delete_vhost` when done."""
    from service.store.migrations import upgrade

    name = await create_vhost(rabbitmq)
    upgrade(store_url)
    vhost = Vhost(rabbitmq, name, {"DOCPROC_DATABASE_URL": store_url, **overrides})
    declared = await asyncio.to_thread(run_docproc, "topology", "declare", env=vhost.env())
    if declared.returncode != 0:
        await delete_vhost(rabbitmq, name)
        raise AssertionError(declared.stderr)
    return vhost


@dataclass
class Sent:
    message: aio_pika.Message
    routing_key: str
    exchange: str


class RecordingPublisher:
    """A publisher that keeps what it is given (tests about HTTP need no broker); `refusal`
    makes every publish raise it, as RabbitMQ away (BrokerUnavailable) or returning (Unroutable)
    would."""

    def __init__(self) -> None:
        self.sent: list[Sent] = []
        self.refusal: Exception | None = None
        self.on_connect: Callable[[], None] | None = None

    @property
    def connected(self) -> bool:
        return self.refusal is None

    async def start(self) -> None:
        if self.on_connect is not None:
            self.on_connect()

    async def publish(
        self, message: aio_pika.Message, routing_key: str, *, exchange: str = "docproc"
    ) -> None:
        if self.refusal is not None:
            raise self.refusal
        self.sent.append(Sent(message, routing_key, exchange))

    async def publish_settling(self, message: aio_pika.Message, routing_key: str) -> None:
        await self.publish(message, routing_key)

    async def close(self) -> None:
        return None


class ScratchDatabase:
    """A PostgreSQL database of a test's own, next to `admin`'s: created and migrated, made
    unreachable (the store outage: no new connection, every open one cut) and back, dropped."""

    def __init__(self, admin: str, prefix: str) -> None:
        self.admin = admin
        self.name = f"{prefix}_{uuid.uuid4().hex[:10]}"
        self.url = urlunsplit(urlsplit(admin)._replace(path=f"/{self.name}"))

    def create(self) -> None:
        with psycopg.connect(self.admin, autocommit=True, connect_timeout=5) as connection:
            connection.execute(f'CREATE DATABASE "{self.name}"')
        upgrade(self.url)

    def drop(self) -> None:
        self.unblock()
        with psycopg.connect(self.admin, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')

    def block(self) -> None:
        with psycopg.connect(self.admin, autocommit=True) as connection:
            connection.execute(f'ALTER DATABASE "{self.name}" ALLOW_CONNECTIONS false')
            connection.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                (self.name,),
            )

    def unblock(self) -> None:
        with psycopg.connect(self.admin, autocommit=True) as connection:
            connection.execute(f'ALTER DATABASE "{self.name}" ALLOW_CONNECTIONS true')


def peak_kib(pid: int) -> int | None:
    """The most resident memory a process has had (VmHWM, KiB); None once it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return None


def cpu_start() -> float:
    """The start of a CPU-time bound on code under test, for `cpu_since`: this thread's clock,
    after a full garbage collection. Process time would count other threads, and a collection
    of the heap earlier tests left, falling inside the bound, is not the code's cost (one such
    made a 0.2 s refusal take 0.55 s in a full run)."""
    gc.collect()
    return time.thread_time()


def cpu_since(started: float) -> float:
    return time.thread_time() - started

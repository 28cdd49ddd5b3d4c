"""One scenario's docproc: API, two workers, DLQ consumer and beat, each `docproc serve …` in a
process group of its own (a SIGKILL takes a worker's pool with it, as a machine's crash would),
on the cluster's node list, a vhost and a database of the scenario's own.

Each process can tell whether it is at work right now, from outside: the API answers /ready; a
worker or the DLQ consumer has a consumer on its queue whose connection is that process's (the
management API's consumers, matched to processes by their local port with `ss`, or by address
for the worker in the network namespace); beat's maintenance tasks are running again."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from service.task_contract import PUBLISH_UNPUBLISHED
from service.topology import DEAD_LETTER_QUEUE, DOCUMENT_QUEUE
from tests.faults import ledger
from tests.faults.cluster import CLIENT, Cluster, local_ports_by_pid
from tests.faults.ledger import Database
from tests.faults.network import HOST_ADDRESS, INSIDE_ADDRESS, Namespace
from tests.support import ROOT, eventually, free_port

Probe = Callable[[], Awaitable[bool]]
STEADY = 3.0
"""Seconds a process must stay at work to count as recovered."""


class Member:
    """One docproc process of the deployment, started again as often as a scenario asks."""

    def __init__(self, name: str, args: list[str], env: Mapping[str, str], logs: Path) -> None:
        self.name = name
        self.args = args
        self.env = dict(env)
        self.log = logs / f"{name}.log"
        self.popen: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        with self.log.open("ab") as log:
            log.write(f"--- start {self.starts + 1} at {datetime.now(UTC)}\n".encode())
            self.popen = subprocess.Popen(
                self.args,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                start_new_session=True,
            )
        self.starts += 1

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def kill(self) -> None:
        """SIGKILL to the whole process group, and wait until the leader is gone."""
        if self.popen is None:
            return
        self._reap()
        self.popen.wait(30)

    def stop(self, timeout: float = 30) -> None:
        if not self.alive():
            self._reap()
            return
        assert self.popen is not None
        os.killpg(self.popen.pid, signal.SIGTERM)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
        self._reap()

    def _reap(self) -> None:
        """Whatever is left of the group (a pool process whose parent was killed)."""
        if self.popen is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)

    def tail(self, lines: int = 40) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    @property
    def hostname(self) -> str:
        """The Celery hostname `docproc serve worker` gives itself."""
        return f"worker-{self.pid}@{socket.gethostname()}"


class Deployment:
    def __init__(
        self,
        cluster: Cluster,
        database: Database,
        vhost: str,
        workdir: Path,
        *,
        relay_port: int,
    ) -> None:
        self.cluster = cluster
        self.database = database
        self.vhost = vhost
        self.workdir = workdir
        self.port = free_port()
        self.api_url = f"http://127.0.0.1:{self.port}"
        base = {k: v for k, v in os.environ.items() if not k.startswith(("DOCPROC_", "CELERY_"))}
        base |= {
            "DOCPROC_BROKER_URL": cluster.broker_url(vhost),
            "DOCPROC_MANAGEMENT_URL": cluster.management_url,
            "DOCPROC_DATABASE_URL": database.url,
            "DOCPROC_DATA_DIR": str(workdir),
            "DOCPROC_API_PORT": str(self.port),
            "DOCPROC_LOG_FORMAT": "json",
            # A quick look for lost messages: beat's reconciliation is part of what is tested.
            "DOCPROC_RECONCILE_AFTER": "60",
            "CELERY_LOG_LEVEL": "INFO",
            "CELERY_CONCURRENCY": "2",
            "PYTHONUNBUFFERED": "1",
        }
        serve = [sys.executable, "-m", "service", "serve"]
        self.api = Member("api", [*serve, "api"], base, workdir)
        self.workers = [
            Member("worker-1", [*serve, "worker"], base, workdir),
            Member("worker-2", [*serve, "worker"], base, workdir),
        ]
        # worker-2 is in the network namespace: RabbitMQ across the veth as the suite's client
        # user, PostgreSQL through the relay.
        self.inside = self.workers[1]
        self.inside.args = Namespace().command(self.inside.args)
        store = urlsplit(database.url)
        user = f"{store.username}@" if store.username else ""
        self.inside.env |= {
            "DOCPROC_BROKER_URL": cluster.broker_url(vhost, HOST_ADDRESS, CLIENT),
            "DOCPROC_DATABASE_URL": store._replace(
                netloc=f"{user}{HOST_ADDRESS}:{relay_port}"
            ).geturl(),
        }
        self.dlq = Member("dlq", [*serve, "dlq"], base, workdir)
        self.beat = Member("beat", [*serve, "beat"], base, workdir)

    @property
    def members(self) -> list[Member]:
        return [self.api, *self.workers, self.dlq, self.beat]

    async def revive(self) -> None:
        """Start whatever is not running (at first, everything, at once), and wait until every
        process is at work (beat: running; its first task is 15 s away)."""
        for member in self.members:
            if not member.alive():
                member.start()
        await asyncio.gather(
            *(self.ready(member, 90) for member in self.members if member is not self.beat)
        )
        if not self.beat.alive():
            raise AssertionError(f"beat exited:\n{self.beat.tail()}")

    async def stop(self) -> None:
        await asyncio.gather(*(asyncio.to_thread(member.stop) for member in self.members))

    # -- at work? ---------------------------------------------------------------------------

    def probe(self, member: Member, since: datetime | None = None) -> Probe:
        """Whether `member` is at work right now (beat: whether its tasks ran after `since`)."""
        if member is self.api:
            return self._api_ready
        if member is self.beat:
            moment = since or datetime.now(UTC)
            return lambda: asyncio.to_thread(
                ledger.maintenance_since, self.database, PUBLISH_UNPUBLISHED, moment
            )
        queue = DEAD_LETTER_QUEUE if member is self.dlq else DOCUMENT_QUEUE

        async def consuming() -> bool:
            return await self.consumes(member, queue)

        return consuming

    async def _api_ready(self) -> bool:
        try:
            async with httpx.AsyncClient(timeout=2) as client:
                return (await client.get(f"{self.api_url}/ready")).status_code == 200
        except httpx.HTTPError:
            return False

    async def consumes(self, member: Member, queue: str) -> bool:
        if not member.alive():
            return False
        try:
            consumers = [c for c in await self.cluster.consumers(self.vhost) if c.queue == queue]
        except httpx.HTTPError:
            return False
        # RabbitMQ lists a partitioned worker's consumer until it notices the connection is gone,
        # well after the worker dropped it: only a connection the process still holds counts.
        inside = member is self.inside
        host = INSIDE_ADDRESS if inside else "127.0.0.1"
        where = Namespace().command([]) if inside else None
        owners = await asyncio.to_thread(local_ports_by_pid, where)
        return any(
            c.peer_host == host and member.pid in owners.get(c.peer_port, ()) for c in consumers
        )

    async def ready(self, member: Member, timeout: float) -> None:
        probe = self.probe(member)

        async def working() -> bool | None:
            if not member.alive():
                raise AssertionError(f"{member.name} exited:\n{member.tail()}")
            return True if await probe() else None

        try:
            await eventually(working, timeout, f"{member.name} to be at work", interval=0.25)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{member.tail()}") from None

    async def recovery(
        self, healed: float, members: list[Member] | None = None, timeout: float = 180
    ) -> dict[str, float | None]:
        """Seconds from `healed` (time.monotonic()) until each member is at work again and stays
        so for STEADY seconds (a consumer RabbitMQ still lists for a connection the partition
        killed is not work); None for one that is not by `timeout`."""
        healed_at = datetime.now(UTC)
        chosen = members if members is not None else self.members

        async def one(member: Member) -> float | None:
            probe = self.probe(member, since=healed_at)
            deadline = healed + timeout
            since: float | None = None
            while time.monotonic() < deadline:
                if not await probe():
                    since = None
                elif since is None:
                    since = time.monotonic()
                elif member is self.beat or time.monotonic() - since >= STEADY:
                    return round(max(0.0, since - healed), 1)
                await asyncio.sleep(0.2)
            return None

        found = await asyncio.gather(*(one(member) for member in chosen))
        return {member.name: seconds for member, seconds in zip(chosen, found, strict=True)}

    async def busy(self, member: Member, timeout: float = 20) -> bool:
        """Until `member` (a worker) holds a task in progress; False if none by `timeout`.
        One connection, polled every few milliseconds: a small document takes tens of them."""
        return await asyncio.to_thread(
            ledger.wait_for_work, self.database, member.hostname, timeout
        )

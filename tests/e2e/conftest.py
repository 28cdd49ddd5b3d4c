"""`docproc up` as a user runs it, on a vhost of its own: the fixture the end-to-end tests share."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio

from tests.support import (
    ROOT,
    Process,
    RabbitMQ,
    Vhost,
    create_vhost,
    delete_vhost,
    docproc_command,
    eventually,
    free_port,
    peak_kib,
)


def descendants(pid: int) -> set[int]:
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False)
    children = {int(p) for p in found.stdout.split()}
    return children.union(*(descendants(child) for child in children)) if children else set()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def peak_memory(pid: int) -> tuple[str, int] | None:
    """A process's command line and the most resident memory it has had (VmHWM, KiB)."""
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return None
    peak = peak_kib(pid)
    return None if peak is None else (command.strip()[:120], peak)


@dataclass
class Running:
    up: Process
    env: dict[str, str]
    api: str
    directory: Path
    vhost: Vhost


@contextlib.asynccontextmanager
async def docproc_up(
    rabbitmq: RabbitMQ, directory: Path, **overrides: str
) -> AsyncIterator[Running]:
    """`docproc up` in `directory` on a fresh vhost, ready; stopped and the vhost deleted after."""
    name = await create_vhost(rabbitmq)
    port = free_port()
    env = Vhost(rabbitmq, name).env(
        DOCPROC_API_PORT=str(port),
        CELERY_RETRY_DELAY="1",
        CELERY_RETRY_BACKOFF_MAX="2",
        **overrides,
    )
    env["PYTHONPATH"] = str(ROOT)
    up = Process(docproc_command("up"), env, directory / "up.log", cwd=directory)

    async def banner() -> bool | None:
        if not up.alive():
            raise AssertionError(f"docproc up exited:\n{up.tail()}")
        return True if "docproc is up" in up.output() else None

    try:
        await eventually(banner, 90, "docproc up to be ready", interval=0.2)
        yield Running(up, env, f"http://127.0.0.1:{port}", directory, Vhost(rabbitmq, name))
    finally:
        up.stop(timeout=90)
        await delete_vhost(rabbitmq, name)


@pytest.fixture
def up_env() -> dict[str, str]:
    """Settings of the `docproc up` under test beyond the defaults; a module overrides it."""
    return {}


@pytest_asyncio.fixture(loop_scope="session")
async def running(
    rabbitmq: RabbitMQ, tmp_path: Path, up_env: dict[str, str]
) -> AsyncIterator[Running]:
    async with docproc_up(rabbitmq, tmp_path, **up_env) as started:
        yield started


def docproc(running: Running, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        docproc_command(*args, "--api", running.api) if args[0] != "up" else docproc_command(*args),
        env=running.env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=running.directory,
        check=False,
    )

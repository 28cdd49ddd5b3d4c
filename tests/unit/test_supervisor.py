"""`docproc up`'s supervisor, its own logic: when a child that keeps dying is given up on, and a
look at RabbitMQ that fails or stalls while it waits for its children. Real child processes
(that exit at once) and a clock the test moves; tests/e2e/test_up.py runs `up` itself."""

from __future__ import annotations

import asyncio
import sys
from types import SimpleNamespace

import aiormq
import pytest

from service import supervisor
from service.settings import Settings
from service.supervisor import Child, GaveUp, Supervisor
from tests.support import free_port


def settings() -> Settings:
    nowhere = free_port()
    return Settings.from_env(
        {
            "DOCPROC_API_PORT": str(nowhere),
            "DOCPROC_BROKER_URL": f"amqp://guest:guest@127.0.0.1:{nowhere}//",
        }
    )


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


async def exited() -> asyncio.subprocess.Process:
    """A child process that has exited, with status 3."""
    process = await asyncio.create_subprocess_exec(sys.executable, "-c", "raise SystemExit(3)")
    await process.wait()
    return process


async def lives_and_dies(up: Supervisor, child: Child, clock: Clock, lived: float) -> list[Child]:
    """`child` started now, died `lived` seconds later: what `up` makes of it (and the pause it
    would wait before starting it again)."""
    child.started_at = clock.now
    clock.now += lived
    child.process = await exited()
    dead = up._check_children()
    clock.now += min(up.settings.restart_delay * 2 ** (child.deaths - 1), 30.0)
    child.process = None
    return dead


async def test_a_child_that_dies_soon_after_each_start_is_given_up_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A child that died 8 s after each start was restarted for ever: deaths were counted within
    a window of 60 s, and with the growing pauses between starts never six fell in one."""
    clock = Clock()
    monkeypatch.setattr(supervisor, "time", SimpleNamespace(monotonic=clock.monotonic))
    up = Supervisor(settings())
    beat = up.children["beat"]

    for _ in range(supervisor.MAX_RESTARTS):
        assert await lives_and_dies(up, beat, clock, lived=8.0) == [beat]
    with pytest.raises(GaveUp, match=r"the beat process keeps dying .* 6 times in a row"):
        await lives_and_dies(up, beat, clock, lived=8.0)


async def test_a_child_that_ran_a_while_before_dying_is_restarted_as_at_first(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = Clock()
    monkeypatch.setattr(supervisor, "time", SimpleNamespace(monotonic=clock.monotonic))
    up = Supervisor(settings())
    worker = up.children["worker"]

    for _ in range(supervisor.MAX_RESTARTS * 3):
        assert await lives_and_dies(up, worker, clock, lived=supervisor.STABLE_AFTER + 1) == [
            worker
        ]
        assert worker.deaths == 1, "a first death again: the shortest pause"


@pytest.mark.parametrize("broker", ["drops the connection", "stalls"])
async def test_a_look_at_rabbitmq_that_fails_or_stalls_is_not_ready_yet(
    monkeypatch: pytest.MonkeyPatch, broker: str
) -> None:
    """RabbitMQ dropping the readiness probe's connection once during start-up ended `up` with a
    traceback, every child stopped; stalling it, `up` hung in the probe, deaf to Ctrl-C."""

    async def consumers(*_: object) -> dict[str, int]:
        if broker == "stalls":
            await asyncio.Event().wait()
        raise aiormq.exceptions.AMQPConnectionError("Server connection reset")

    monkeypatch.setattr(supervisor, "consumer_counts", consumers)
    monkeypatch.setattr(supervisor, "PROBE_TIMEOUT", 0.2, raising=False)
    up = Supervisor(settings())

    missing = await asyncio.wait_for(up._not_ready(), 10)

    assert missing == ["api", "worker", "dlq"]


def test_the_banner_shows_no_password(capsys: pytest.CaptureFixture[str]) -> None:
    given = Settings.from_env(
        {
            "DOCPROC_DATABASE_URL": "postgresql://postgres:TopSecretPw1@127.0.0.1:5432/docproc",
            "DOCPROC_MANAGEMENT_URL": "http://admin:Mg%2Fmt@127.0.0.1:15672",
        }
    )

    supervisor._banner(given, 1.0)

    said = capsys.readouterr().err
    assert "TopSecretPw1" not in said
    assert "Mg%2Fmt" not in said
    assert "postgresql://postgres:***@127.0.0.1:5432/docproc" in said

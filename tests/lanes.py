"""`tox`'s test run: the fault suite beside the fast and integration tiers, then the rest.

The fault suite (tests/faults) boots a private three-node cluster and then mostly waits: for a
node to come back, a partition to heal, a killed process to be replaced. The machine's load
stayed under 1.6 on 2 cores with it running beside the other tests, and the whole run took 13
minutes 21 s against 19 minutes 34 s one after the other (2026-12-04). The fault suite has its
own RabbitMQ nodes (ports 5701-5703, 15701-15703, 25701-25703), network namespace and
PostgreSQL database; the other session uses the local broker, a vhost and a database of its
own. They share the PostgreSQL server, epmd and the machine.

Three pytest sessions:

1. the fault suite (`-m "faults and not full_faults"`), its output kept in a file and printed
   after the second session's;
2. at the same time, the unit, store, HTTP, API and integration tiers;
3. once both have ended, the tiers whose bounds are in wall-clock time: observability, the
   console in Chromium, and `docproc up` end to end.

With arguments (`tox -- tests/unit -x`), one pytest session runs them after `-m "not
full_faults"`; a `-m` of your own replaces that one (`-m "not node_wide and not full_faults"`).

Ctrl-C, SIGTERM or SIGHUP to this runner reaches each session as one Ctrl-C, so that its
teardown runs: the cluster is stopped, vhosts and databases dropped, node-wide changes undone
(tox.ini gives it the time: `interrupt_timeout`).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType
from typing import IO

NOT_FULL = "not full_faults"
"""The whole-cluster restart runs in `tox -e faults` only (3.5 minutes on its own)."""
FAULTS = ["tests/faults", "-m", f"faults and {NOT_FULL}", "-p", "no:cacheprovider"]
BESIDE = ("unit", "store", "http", "api", "integration")
AFTER = ("observability", "console", "e2e")
TEARDOWN = 150
"""Seconds a session may take to tear down after Ctrl-C (the fault suite stops three nodes)."""
TESTS = Path(__file__).parent


def pytest(*args: str) -> list[str]:
    return [sys.executable, "-m", "pytest", *args]


def tiers(*names: str) -> list[str]:
    return ["-m", f"not faults and {NOT_FULL}", *(f"tests/{name}" for name in names)]


def unlisted() -> list[str]:
    """Test packages, and test modules at the top of tests/, that no session would run."""
    listed = {*BESIDE, *AFTER, "faults"}
    return sorted(
        path.name
        for path in TESTS.iterdir()
        if ((path / "__init__.py").exists() and path.name not in listed)
        or (path.name.startswith("test_") and path.suffix == ".py")
    )


def _interrupt(_signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def start(args: list[str], output: IO[bytes] | None = None) -> subprocess.Popen[bytes]:
    """A pytest session in a process session of its own: a Ctrl-C at the terminal reaches this
    runner alone, which passes exactly one on (a second would cut pytest's teardown short)."""
    errors = None if output is None else subprocess.STDOUT
    return subprocess.Popen(pytest(*args), stdout=output, stderr=errors, start_new_session=True)


def settle(sessions: list[subprocess.Popen[bytes]]) -> None:
    """Ctrl-C each session still running, wait for its teardown; SIGKILL what outlasts it."""
    running = [session for session in sessions if session.poll() is None]
    for session in running:
        session.send_signal(signal.SIGINT)
    deadline = time.monotonic() + TEARDOWN
    for session in running:
        try:
            session.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(session.pid, signal.SIGKILL)
            session.wait()


def main(arguments: list[str]) -> int:
    if arguments:
        os.execv(sys.executable, pytest("-m", NOT_FULL, *arguments))
    missing = unlisted()
    if missing:
        print(f"tests/lanes.py runs no session for tests/{missing}: add them to BESIDE or AFTER")
        return 4
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGHUP, _interrupt)
    log = Path(os.environ.get("TOX_ENV_DIR") or tempfile.gettempdir()) / "fault-lane.log"
    print(f"the fault suite runs beside the first session; its output: {log}", flush=True)
    sessions: list[subprocess.Popen[bytes]] = []
    codes: dict[str, int] = {}
    try:
        with log.open("wb") as out:
            faults = start(FAULTS, out)
            sessions.append(faults)
            beside = start(tiers(*BESIDE))
            sessions.append(beside)
            codes["fast and integration tiers"] = beside.wait()
            codes["fault suite"] = faults.wait()
        sessions.clear()
        after = start(tiers(*AFTER))
        sessions.append(after)
        codes["observability, console, end to end"] = after.wait()
    except KeyboardInterrupt:
        settle(sessions)
        codes["interrupted"] = 130
    finally:
        print("\n=== the fault suite (tests/faults), run beside the first session ===", flush=True)
        sys.stdout.write(log.read_text(errors="replace") if log.exists() else "(no output)\n")
        print("\n" + ", ".join(f"{name}: exit {code}" for name, code in codes.items()))
    return next((code for code in codes.values() if code), 0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""`tox`'s test run: the tiers in sessions side by side, so that both cores work.

Most of the fault suite (tests/faults) and of the tests that change the whole broker node
(`node_wide`: a memory alarm, a restart) is waiting: for a node to come back, an alarm to take
hold, a killed process to be replaced. One session after another, the whole run left a core idle
most of the time (31.5 minutes, 20 of CPU, on 2026-12-08's machine). The sessions:

1. at once: the fault suite (`-m "faults and not full_faults"`: its own three-node cluster,
   network namespace and PostgreSQL database), the `node_wide` tests (alone on the machine's
   broker, since nothing else may use it while they change it), and the tiers that use no
   broker (unit, store, HTTP);
2. as soon as the `node_wide` tests have ended: the API and integration tiers, in a session each;
3. once every one of those has ended: the tiers whose bounds are in wall-clock time
   (observability, the console in Chromium, `docproc up` end to end), alone.

The first session of the tiers that use no broker writes to the terminal; each other one's
output is kept in a file and printed after it, in this order.

With arguments (`tox -- tests/unit -x`), one pytest session runs them after `-m "not
full_faults"`; a `-m` of your own replaces that one (`-m "not node_wide and not full_faults"`).

Ctrl-C, SIGTERM or SIGHUP to this runner reaches each session as one Ctrl-C, so that its
teardown runs: the cluster is stopped, vhosts and databases dropped, node-wide changes undone
(tox.ini gives it the time: `interrupt_timeout`).
"""

from __future__ import annotations

import contextlib
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
NO_BROKER = ("unit", "store", "http")
"""Tiers that use no broker: they run while the `node_wide` tests change the machine's."""
BROKER = ("api", "integration")
"""Tiers on the machine's broker, in sessions of their own once the `node_wide` tests end: the
API tier in one, the integration tier — the longest, its tests starting workers — in two, every
other module in each (`halves`)."""
NODE_WIDE = "node_wide"
AFTER = ("observability", "console", "e2e")
TEARDOWN = 150
"""Seconds a session may take to tear down after Ctrl-C (the fault suite stops three nodes)."""
TESTS = Path(__file__).parent


def pytest(*args: str) -> list[str]:
    return [sys.executable, "-m", "pytest", *args]


def tiers(*names: str, marks: str = "") -> list[str]:
    return ["-m", f"not faults and {NOT_FULL}{marks}", *(f"tests/{name}" for name in names)]


def halves(tier: str) -> list[list[str]]:
    """The modules of `tier`, every other one in each half, in name order."""
    modules = sorted(f"tests/{tier}/{path.name}" for path in (TESTS / tier).glob("test_*.py"))
    return [modules[0::2], modules[1::2]]


def on_broker() -> dict[str, list[str]]:
    """The sessions on the machine's broker once the `node_wide` tests end, by name."""
    marks = ["-m", f"not faults and {NOT_FULL} and not {NODE_WIDE}"]
    first, second = halves("integration")
    return {
        "api tier": [*marks, "tests/api"],
        "integration tier, first half": [*marks, *first],
        "integration tier, second half": [*marks, *second],
    }


def aside(args: list[str]) -> list[str]:
    """A session beside the one with the cache: pytest's cache is one directory per rootdir."""
    return [*args, "-p", "no:cacheprovider"]


def unlisted() -> list[str]:
    """Test packages, and test modules at the top of tests/, that no session would run."""
    listed = {*NO_BROKER, *BROKER, *AFTER, "faults"}
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
    logs = Path(os.environ.get("TOX_ENV_DIR") or tempfile.gettempdir())
    kept = {
        "fault suite": logs / "fault-lane.log",
        "node-wide tests": logs / "node-wide-lane.log",
        **{
            name: logs / f"{name.replace(',', '').replace(' ', '-')}-lane.log"
            for name in on_broker()
        },
    }
    print(f"sessions beside this one write to {logs}/*-lane.log", flush=True)
    sessions: list[subprocess.Popen[bytes]] = []
    codes: dict[str, int] = {}
    try:
        with contextlib.ExitStack() as files:
            out = {name: files.enter_context(path.open("wb")) for name, path in kept.items()}
            faults = start(FAULTS, out["fault suite"])
            node_wide = start(
                aside(tiers("integration", marks=f" and {NODE_WIDE}")), out["node-wide tests"]
            )
            no_broker = start(tiers(*NO_BROKER))
            sessions += [faults, node_wide, no_broker]
            codes["node-wide tests"] = node_wide.wait()
            broker = {name: start(aside(args), out[name]) for name, args in on_broker().items()}
            sessions += broker.values()
            codes["unit, store and HTTP tiers"] = no_broker.wait()
            for name, session in broker.items():
                codes[name] = session.wait()
            codes["fault suite"] = faults.wait()
        sessions.clear()
        after = start(tiers(*AFTER))
        sessions.append(after)
        codes["observability, console, end to end"] = after.wait()
    except KeyboardInterrupt:
        settle(sessions)
        codes["interrupted"] = 130
    finally:
        for name, path in kept.items():
            print(f"\n=== the {name}, run beside the first session ===", flush=True)
            sys.stdout.write(path.read_text(errors="replace") if path.exists() else "(none)\n")
        print("\n" + ", ".join(f"{name}: exit {code}" for name, code in codes.items()))
    return next((code for code in codes.values() if code), 0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

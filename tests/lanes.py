"""`tox`'s test run: the fault suite and everything else, as two pytest sessions at once.

The fault suite (tests/faults) boots a private three-node cluster and then mostly waits: for a
node to come back, a partition to heal, a killed process to be replaced. The machine's load
stayed under one core through it, so it runs beside the rest rather than before it — about four
minutes less of CI's 25. The two share nothing but the machine: the fault suite has its own
RabbitMQ nodes (ports 5701-5703), network namespace and PostgreSQL database; the rest uses the
local broker, a vhost and a database of its own.

The rest runs its fast tiers first (unit, store, HTTP, API, then integration): the end-to-end
and browser tests, whose bounds are in wall-clock time, come after the fault suite has ended.

    python -m tests.lanes              # both lanes; the fault lane's output follows the other's
    python -m tests.lanes tests/unit   # arguments: one pytest session with them, as given
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

NOT_FULL = "not full_faults"
"""The whole-cluster restart runs in `tox -e faults` only (3.5 minutes on its own)."""
FAULTS = ["tests/faults", "-m", f"faults and {NOT_FULL}", "-p", "no:cacheprovider"]
TIERS = ("unit", "store", "http", "api", "integration", "observability", "console", "e2e")
REST = ["-m", f"not faults and {NOT_FULL}", *(f"tests/{tier}" for tier in TIERS)]


def pytest(*args: str) -> list[str]:
    return [sys.executable, "-m", "pytest", *args]


def main(arguments: list[str]) -> int:
    if arguments:
        return subprocess.call(pytest("-m", NOT_FULL, *arguments))
    with tempfile.NamedTemporaryFile("w+", prefix="docproc-fault-lane-", suffix=".log") as log:
        faults = subprocess.Popen(
            pytest(*FAULTS), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            rest = subprocess.call(pytest(*REST))
            print("\n=== the fault lane (tests/faults), run beside the above ===", flush=True)
            status = faults.wait()
        finally:
            if faults.poll() is None:  # interrupted: as Ctrl-C, so its teardown stops the cluster
                faults.send_signal(signal.SIGINT)
                try:
                    faults.wait(timeout=120)
                except subprocess.TimeoutExpired:
                    os.killpg(faults.pid, signal.SIGKILL)
                    faults.wait()
        sys.stdout.write(Path(log.name).read_text(errors="replace"))
    return rest or status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

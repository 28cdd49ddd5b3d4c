"""The suite's sizes and its table. Sizes come from the environment, so that CI runs the suite
reduced and `tox -e faults` at full size: DOCPROC_FAULTS_DOCUMENTS (documents per scenario),
DOCPROC_FAULTS_PARTITION (seconds the worker in the namespace stays cut off),
DOCPROC_FAULTS_OUTAGE (seconds the store stays blocked), DOCPROC_FAULTS_KILLS (worker kills in
the SIGKILL loop, at most 4), DOCPROC_FAULTS_REPORT (a file the table is written to, as
Markdown)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

from tests.faults.ledger import Outcome

DOCUMENTS = int(os.environ.get("DOCPROC_FAULTS_DOCUMENTS", "32"))
PARTITION = float(os.environ.get("DOCPROC_FAULTS_PARTITION", "10"))
OUTAGE = float(os.environ.get("DOCPROC_FAULTS_OUTAGE", "15"))
KILLS = int(os.environ.get("DOCPROC_FAULTS_KILLS", "2"))
REPORT = os.environ.get("DOCPROC_FAULTS_REPORT")
PROCESSES = ("api", "worker-1", "worker-2", "dlq", "beat")


@dataclass
class Row:
    scenario: str
    outcome: Outcome
    recovery: dict[str, float | None]
    seconds: float

    def cells(self) -> list[str]:
        o = self.outcome
        counts = [o.submitted, o.accepted, o.success, o.dead, o.lost, o.duplicated, o.stuck]
        times = [self.recovery.get(name, "—") for name in PROCESSES]
        shown = ["never" if t is None else str(t) for t in times]
        return [self.scenario, *map(str, counts), str(o.wrong), *shown, f"{self.seconds:.0f}"]


HEADER = [
    "scenario", "submitted", "accepted", "SUCCESS", "DEAD", "lost", "duplicated", "stuck",
    "wrong", *(f"{name} (s)" for name in PROCESSES), "took (s)",
]  # fmt: skip


@dataclass
class Table:
    rows: list[Row] = field(default_factory=list)

    def markdown(self) -> str:
        lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
        lines += ["| " + " | ".join(row.cells()) + " |" for row in self.rows]
        return "\n".join(lines)


TABLE = Table()


def record(name: str, outcome: Outcome, recovery: dict[str, float | None], began: float) -> Row:
    row = Row(name, outcome, recovery, time.monotonic() - began)
    TABLE.rows.append(row)
    print("\n" + TABLE.markdown())  # the table so far, for a run with -s
    return row

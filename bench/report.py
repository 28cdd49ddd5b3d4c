"""What a run found: ratios of docproc to its baselines, plain readings, the table and the JSON."""

from __future__ import annotations

import datetime
import os
import platform
import statistics
from collections.abc import Collection
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import msgspec


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def percentile(values: list[float], fraction: float) -> float:
    """The value below which `fraction` of `values` lie (nearest rank)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))]


@dataclass
class Comparison:
    """One figure of docproc beside the same figure of a raw baseline, per round."""

    measure: str
    figure: str
    unit: str
    baseline_name: str
    docproc: list[float]
    baseline: list[float]
    target: float | None = None
    details: dict[str, float | str] = field(default_factory=dict)

    @property
    def round_ratios(self) -> list[float]:
        return [d / b for d, b in zip(self.docproc, self.baseline, strict=True) if b]

    @property
    def ratio(self) -> float:
        """The median of the rounds' ratios (each round runs both sides back to back, so its
        ratio is the least disturbed by a machine whose load drifts); higher is better."""
        return median(self.round_ratios)

    @property
    def met(self) -> bool | None:
        return None if self.target is None else self.ratio >= self.target


@dataclass
class Reading:
    """A figure with no baseline (memory, a calibration, a split of where time goes)."""

    measure: str
    figure: str
    value: float
    unit: str
    note: str = ""
    ceiling: float | None = None
    """The most this figure may be (a mark, as a ratio's target is)."""

    @property
    def met(self) -> bool | None:
        return None if self.ceiling is None else self.value <= self.ceiling


def machine() -> dict[str, Any]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "python": platform.python_version(),
        "kernel": platform.release(),
        "loadavg_at_start": os.getloadavg(),
    }


@dataclass
class Report:
    comparisons: list[Comparison] = field(default_factory=list)
    readings: list[Reading] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    profiles: list[str] = field(default_factory=list)
    machine: dict[str, Any] = field(default_factory=machine)
    started: str = field(default_factory=lambda: datetime.datetime.now(datetime.UTC).isoformat())
    seconds: float = 0.0
    options: dict[str, Any] = field(default_factory=dict)

    def compare(self, comparison: Comparison) -> Comparison:
        self.comparisons.append(comparison)
        return comparison

    def read(
        self,
        measure: str,
        figure: str,
        value: float,
        unit: str,
        note: str = "",
        *,
        ceiling: float | None = None,
    ) -> None:
        self.readings.append(Reading(measure, figure, value, unit, note, ceiling))

    def shortfalls(
        self, leniency: float = 1.0, known: Collection[tuple[str, str, str]] = ()
    ) -> tuple[list[str], list[str]]:
        """Every figure that misses its mark, the mark loosened by `leniency` (0.5: a ratio may
        fall to half its target, a reading rise to twice its ceiling): those not in `known`
        (measure, figure, how its baseline's name begins), then those in it. A figure that
        could not be measured (NaN) misses too, known or not."""

        def is_known(measure: str, figure: str, baseline: str) -> bool:
            return any((measure, figure) == (m, f) and baseline.startswith(b) for m, f, b in known)

        failing: list[str] = []
        expected: list[str] = []
        for c in self.comparisons:
            if c.target is not None and not c.ratio >= c.target * leniency:
                line = (
                    f"{c.measure}: {c.figure} against {c.baseline_name}: ratio {c.ratio:.2f}, "
                    f"below {c.target * leniency:.2f}"
                )
                (expected if is_known(c.measure, c.figure, c.baseline_name) else failing).append(
                    line
                )
        for r in self.readings:
            if r.ceiling is not None and not r.value <= r.ceiling / leniency:
                line = (
                    f"{r.measure}: {r.figure}: {r.value:.2f} {r.unit}, "
                    f"above {r.ceiling / leniency:.2f}"
                )
                (expected if is_known(r.measure, r.figure, "") else failing).append(line)
        return failing, expected

    def peak(self, process: str, kb: int) -> None:
        """A docproc process's peak RSS, the highest seen when one name ran more than once."""
        figure = f"peak RSS {process}"
        for reading in self.readings:
            if reading.measure == "memory" and reading.figure == figure:
                reading.value = max(reading.value, kb / 1024)
                return
        self.read("memory", figure, kb / 1024, "MiB", "VmHWM")

    def table(self) -> str:
        lines = [
            f"docproc bench — {self.started[:19]}Z — {self.machine['nproc']} x "
            f"{self.machine['cpu']} — {self.seconds:.0f} s",
        ]
        if self.comparisons:
            lines += [
                "",
                f"{'measure':<12} {'figure':<34} {'docproc':>10} {'baseline':>10} {'ratio':>6} "
                f"{'target':>7}  baseline",
            ]
        for c in self.comparisons:
            verdict = "" if c.met is None else ("ok" if c.met else "MISSED")
            target = f"≥{c.target:.2f}" if c.target is not None else "—"
            lines.append(
                f"{c.measure:<12} {c.figure + ' (' + c.unit + ')':<34} "
                f"{_number(median(c.docproc)):>10} {_number(median(c.baseline)):>10} "
                f"{c.ratio:>6.2f} {target:>7} {verdict:<6} {c.baseline_name}"
            )
            for name, value in c.details.items():
                shown = _number(value) if isinstance(value, float) else value
                lines.append(f"{'':<12}   {name}: {shown}")
        if self.readings:
            lines += ["", f"{'measure':<12} {'reading':<56} {'value':>10}"]
            for r in self.readings:
                note = f"  ({r.note})" if r.note else ""
                mark = ""
                if r.ceiling is not None:
                    mark = f"  ≤{_number(r.ceiling)} {'ok' if r.met else 'MISSED'}"
                lines.append(
                    f"{r.measure:<12} {r.figure:<56} {_number(r.value):>10} {r.unit}{mark}{note}"
                )
        lines += ["", *(f"note: {note}" for note in self.notes)]
        if self.profiles:
            lines += ["", "profiles (py-spy):", *self.profiles]
        return "\n".join(lines)

    def to_json(self) -> bytes:
        document = {
            "started": self.started,
            "seconds": round(self.seconds, 1),
            "machine": self.machine | {"loadavg_at_end": os.getloadavg()},
            "options": self.options,
            "comparisons": [
                asdict(c)
                | {
                    "docproc_median": median(c.docproc),
                    "baseline_median": median(c.baseline),
                    "ratio": c.ratio,
                    "round_ratios": c.round_ratios,
                    "met": c.met,
                }
                for c in self.comparisons
            ],
            "readings": [asdict(r) | {"met": r.met} for r in self.readings],
            "notes": self.notes,
            "profiles": self.profiles,
        }
        return msgspec.json.format(msgspec.json.encode(document), indent=2)


def _number(value: float) -> str:
    if value != value:  # NaN
        return "—"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"

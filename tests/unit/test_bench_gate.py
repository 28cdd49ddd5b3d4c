"""The benchmarks' regression guard: which figures fail a run, and which are only reported."""

from __future__ import annotations

from bench.report import Comparison, Report


def comparison(measure: str, figure: str, ratio: float, target: float) -> Comparison:
    return Comparison(
        measure=measure,
        figure=figure,
        unit="/s",
        baseline_name="raw",
        docproc=[ratio, ratio],
        baseline=[1.0, 1.0],
        target=target,
    )


def test_a_figure_below_half_its_mark_fails_unless_it_is_a_known_shortfall() -> None:
    report = Report()
    report.compare(comparison("submit", "documents accepted", 0.14, 0.3))  # fell: fails
    report.compare(comparison("status", "per CPU", 0.16, 0.5))  # known: reported
    report.compare(comparison("redrive", "re-published", 0.3, 0.5))  # above half: passes
    report.compare(comparison("search", "p99", float("nan"), 0.5))  # unmeasured: fails, even known
    # The same figure against another baseline is not excused by a known shortfall's entry.
    report.compare(comparison("process", "small", 0.2, 0.7))
    report.comparisons[-1].baseline_name = "direct call"
    report.compare(comparison("process", "small", 0.2, 0.75))

    failing, known = report.shortfalls(
        0.5, {("status", "per CPU", ""), ("process", "small", "direct")}
    )

    assert [line.split(" against ")[0] for line in failing] == [
        "submit: documents accepted",
        "search: p99",
        "process: small",
    ]
    assert [line.split(": ratio")[0] for line in known] == [
        "status: per CPU against raw",
        "process: small against direct call",
    ]
    # Held to the whole mark, with nothing excused, everything below it fails.
    assert len(report.shortfalls(1.0)[0]) == 6

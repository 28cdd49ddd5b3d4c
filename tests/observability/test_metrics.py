"""Metrics of the work itself, and the dashboard and alerts over what is really exported.

One deployment of real processes: documents uploaded through the API, canary tasks that retry
and fail for good; then the worker's /metrics (its two pool processes added up), the API's
/metrics and RabbitMQ's Prometheus plugin are read as Prometheus would scrape them."""

from __future__ import annotations

import json
import re
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from service.task_contract import (
    CANARY_FAIL,
    CANARY_FLAKY,
    CANARY_SUCCEED,
    ERROR_TYPE_HEADER,
    PENDING_FAILURE_HEADER,
    PROCESS_DOCUMENT,
)
from tests.observability.conftest import Stack
from tests.support import ROOT, eventually

pytestmark = [pytest.mark.rabbitmq, pytest.mark.worker]

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]

CONTENTS = [f"Lighthouse keeper's log, entry {n}.\n\nAll quiet.\n".encode() for n in range(6)]
DOCUMENTS = len(CONTENTS)
STEPS = ("load", "extract", "chunk", "index")


async def scrape(url: str, **params: Any) -> Samples:
    async with httpx.AsyncClient(timeout=10) as http:
        answer = await http.get(url, params=params)
    assert answer.status_code == 200, f"{url}: {answer.status_code} {answer.text[:200]}"
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(answer.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return sum(
        found
        for (sample, sample_labels), found in samples.items()
        if sample == name and set(labels.items()) <= sample_labels
    )


@pytest.fixture(scope="module")
async def worked(stack: Stack) -> Stack:
    """Documents processed, a canary retried once, another failed for good and stored."""
    task_ids = [await stack.upload(content, f"log-{n}.txt") for n, content in enumerate(CONTENTS)]
    flaky = stack.celery.send_task(CANARY_FLAKY, kwargs={"failures": 1}).id
    failing = stack.celery.send_task(CANARY_FAIL).id
    for task_id in task_ids:
        await stack.state(task_id, "SUCCESS")
    await stack.state(flaky, "SUCCESS")
    await stack.state(failing, "DEAD")
    return stack


async def test_the_worker_exports_task_and_step_durations_retries_failures_and_bytes(
    worked: Stack,
) -> None:
    async def settled() -> Samples | None:
        # A task's figures are written just after its outcome is committed: poll for the last.
        samples = await scrape(f"{worked.worker_metrics}/metrics")
        done = value(samples, "docproc_task_duration_seconds_count", outcome="success")
        return samples if done >= DOCUMENTS + 1 else None  # the documents and the flaky canary

    samples = await eventually(settled, 10, "the worker's figures of every task")

    # Six documents, whichever of the two pool processes ran each: counted once each.
    assert (
        value(
            samples,
            "docproc_task_duration_seconds_count",
            task=PROCESS_DOCUMENT,
            document_type="text",
            outcome="success",
        )
        == DOCUMENTS
    )
    for step in STEPS:
        count = value(samples, "docproc_step_duration_seconds_count", step=step)
        assert count == DOCUMENTS, (step, count)
        assert value(samples, "docproc_step_duration_seconds_sum", step=step) > 0
    extracted = value(samples, "docproc_extracted_bytes_total", document_type="text")
    assert extracted == sum(len(content) for content in CONTENTS)
    assert (
        value(
            samples,
            "docproc_task_retries_total",
            task=CANARY_FLAKY,
            error_type="TransientProcessingError",
        )
        == 1
    )
    assert (
        value(samples, "docproc_task_duration_seconds_count", task=CANARY_FLAKY, outcome="retry")
        == 1
    )
    assert (
        value(samples, "docproc_task_failures_total", task=CANARY_FAIL, error_type="CanaryFailure")
        == 1
    )
    assert "Signal handler" not in worked.worker.output(), worked.worker.tail()


async def test_a_failure_type_a_message_forged_is_recorded_but_counted_as_other(
    worked: Stack,
) -> None:
    forged = [f"Forged{n}-{'x' * 100 * n}" for n in range(3)]
    task_ids = [
        worked.celery.send_task(
            CANARY_SUCCEED, headers={PENDING_FAILURE_HEADER: True, ERROR_TYPE_HEADER: name}
        ).id
        for name in forged
    ]

    async def counted() -> Samples | None:
        samples = await scrape(f"{worked.worker_metrics}/metrics")
        failed = value(samples, "docproc_task_failures_total", task=CANARY_SUCCEED)
        return samples if failed >= len(forged) else None

    samples = await eventually(counted, 30, "the forged failures in the worker's figures")
    status = await worked.state(task_ids[0], "FAILURE", "DEAD")

    labels = {
        dict(sample_labels)["error_type"]
        for (name, sample_labels), _ in samples.items()
        if name == "docproc_task_failures_total" and ("task", CANARY_SUCCEED) in sample_labels
    }
    assert labels == {"other"}
    error = status["error"]
    assert isinstance(error, dict)
    assert error["type"] == forged[0]  # the run says what the headers said


async def test_the_api_exports_the_figures_alerts_read(worked: Stack) -> None:
    async def stored() -> Samples | None:
        samples = await scrape(f"{worked.api.url}/metrics")
        return samples if value(samples, "docproc_dead_letters", reason="rejected") else None

    samples = await eventually(stored, 30, "the dead letter in /metrics")

    assert value(samples, "docproc_tasks", state="SUCCESS") >= DOCUMENTS
    assert ("docproc_oldest_pending_task_seconds", frozenset()) in samples
    assert value(samples, "docproc_redrive_items", state="failed") == 0
    # (The DLQ consumer leaves the queue while it stores a batch: its count may read 0 then.)
    assert ("docproc_queue_consumers", frozenset({("queue", "docproc.dead_letter")})) in samples


# Words of PromQL that are not metric names.
_PROMQL_WORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
    "sum", "min", "max", "avg", "count", "rate", "delta", "deriv", "increase",
    "histogram_quantile", "le",
}  # fmt: skip


def metric_names(expression: str) -> set[str]:
    """The metric names a PromQL expression reads (label names and matchers left out)."""
    without_matchers = re.sub(r"\{[^}]*\}", "", expression)
    without_windows = re.sub(r"\[[^\]]*\]", "", without_matchers)
    without_groupings = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", without_windows)
    words = set(re.findall(r"\b[a-zA-Z_:][a-zA-Z0-9_:]*\b", without_groupings))
    return {word for word in words if word not in _PROMQL_WORDS and "_" in word}


def dashboard_expressions() -> list[str]:
    dashboard = json.loads((ROOT / "infra" / "grafana" / "dashboards" / "docproc.json").read_text())
    return [
        target["expr"]
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
        if target.get("expr")
    ]


def alert_expressions() -> list[str]:
    yaml = pytest.importorskip("yaml")
    rules = yaml.safe_load((ROOT / "infra" / "prometheus" / "alerts.yml").read_text())
    return [rule["expr"] for group in rules["groups"] for rule in group["rules"]]


async def scraped_by_prometheus(stack: Stack) -> set[str]:
    """Every sample name the jobs of infra/prometheus/prometheus.yml would scrape here."""
    yaml = pytest.importorskip("yaml")
    config = yaml.safe_load((ROOT / "infra" / "prometheus" / "prometheus.yml").read_text())
    rabbitmq = httpx.URL(stack.vhost.rabbitmq.management_url).host
    where = {
        "docproc-api": stack.api.url,
        "docproc-worker": stack.worker_metrics,
        "rabbitmq": f"http://{rabbitmq}:15692",
        "rabbitmq-queues": f"http://{rabbitmq}:15692",
    }
    assert set(where) == {job["job_name"] for job in config["scrape_configs"]}
    names: set[str] = {"up"}
    for job in config["scrape_configs"]:
        samples = await scrape(
            where[job["job_name"]] + job.get("metrics_path", "/metrics"), **job.get("params", {})
        )
        names |= {name for name, _ in samples}
    return names


async def test_every_metric_the_dashboard_and_the_alerts_query_is_exported(
    worked: Stack,
) -> None:
    exported = await scraped_by_prometheus(worked)
    queried = {
        name
        for expression in dashboard_expressions() + alert_expressions()
        for name in metric_names(expression)
    }

    assert "docproc_task_duration_seconds_bucket" in queried
    assert "rabbitmq_alarms_memory_used_watermark" in queried
    assert queried - exported == set()


def test_metric_names_reads_promql() -> None:
    expression = (
        "histogram_quantile(0.95, sum by (le, step) (rate(docproc_step_duration_seconds_bucket"
        '{step=~"a|b"}[5m]))) / on (instance) rabbitmq_resident_memory_limit_bytes'
    )
    assert metric_names(expression) == {
        "docproc_step_duration_seconds_bucket",
        "rabbitmq_resident_memory_limit_bytes",
    }

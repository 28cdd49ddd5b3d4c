"""Retries wait in the broker (Celery's native delayed delivery), not in worker memory."""

from __future__ import annotations

import itertools
import json
import uuid

import pytest

from service.logs import CORRELATION_HEADER
from service.topology import RETRY_QUEUE
from service.worker import canary
from service.worker.app import DocprocCelery
from tests.support import DeadLetterQueue, Process, Reports, first_death

pytestmark = [pytest.mark.rabbitmq, pytest.mark.worker]


def delay_in_routing_key(routing_key: str) -> int:
    """Native delayed delivery writes the delay as 28 binary digits before the real routing key."""
    bits = routing_key.split(".")[:28]
    assert all(bit in "01" for bit in bits), routing_key
    return int("".join(bits), 2)


async def test_five_successive_delayed_retries_each_travel_through_the_broker_and_succeed(
    worker: Process, client: DocprocCelery, reports: Reports
) -> None:
    result = client.send_task(canary.FLAKY, kwargs={"failures": 5, "report_to": reports.name})

    await reports.wait_for(
        lambda r: r["task_id"] == result.id and r["event"] == "succeeded",
        timeout=60,
        what="the flaky canary to succeed after five retries",
    )

    runs = [r for r in reports.seen if r["task_id"] == result.id]
    assert [r["event"] for r in runs] == ["retrying"] * 5 + ["succeeded"]
    assert [r["retries"] for r in runs] == [0, 1, 2, 3, 4, 5]
    for before, after in itertools.pairwise(runs):
        # Each retry came back from retry_queue through the delay cascade ...
        assert after["routing_key"].endswith(f".{RETRY_QUEUE}")
        assert any(q.startswith("celery_delayed_") for q in after["delayed_through"]), after
        # ... no earlier than the delay it asked for (whole seconds, never zero).
        delay = delay_in_routing_key(after["routing_key"])
        assert 1 <= delay <= 2  # CELERY_RETRY_DELAY=1, CELERY_RETRY_BACKOFF_MAX=2 in tests
        assert after["time"] - before["time"] >= delay - 0.05


async def test_retries_are_spent_then_the_task_is_dead_lettered(
    worker: Process, client: DocprocCelery, reports: Reports, dead_letters: DeadLetterQueue
) -> None:
    result = client.send_task(canary.FLAKY, kwargs={"failures": 10, "report_to": reports.name})

    dead = await dead_letters.for_task(result.id, timeout=60)

    assert first_death(dead)["reason"] == "rejected"
    assert first_death(dead)["queue"] == RETRY_QUEUE
    # CELERY_MAX_RETRIES=5 in tests: the first run and exactly five retries.
    assert await reports.events(result.id) == ["retrying"] * 6
    assert (dead.headers or {})["retries"] == 5


async def test_the_correlation_id_header_is_bound_to_the_task_log_lines_across_retries(
    worker: Process, client: DocprocCelery, reports: Reports
) -> None:
    correlation_id = f"corr-{uuid.uuid4()}"
    result = client.send_task(
        canary.FLAKY,
        kwargs={"failures": 1, "report_to": reports.name},
        headers={CORRELATION_HEADER: correlation_id},
    )
    await reports.wait_for(lambda r: r["task_id"] == result.id and r["event"] == "succeeded")

    lines = [json.loads(line) for line in worker.output().splitlines() if line.startswith("{")]
    canary_lines = [
        line
        for line in lines
        if line.get("correlation_id") == correlation_id and line["message"].startswith("canary ")
    ]
    assert [line["message"] for line in canary_lines] == [
        f"canary {canary.FLAKY}: retrying",
        f"canary {canary.FLAKY}: succeeded",
    ]

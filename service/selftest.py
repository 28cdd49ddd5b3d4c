"""`docproc selftest`: canary tasks through a live deployment, each path checked end to end.

Canaries are published straight to the broker (as Celery protocol-2 messages, like the API's),
report what they do to a temporary queue, and their outcome is read back through the API: a
success; a transient failure that retries through retry_queue and the broker's delay, then
succeeds; a permanent failure that RabbitMQ dead-letters and the DLQ consumer stores; and, with
`--crash`, a task that kills its worker process until the delivery limit dead-letters it. The
dead letters it made are discarded at the end.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import httpx
import msgspec
from aio_pika.abc import AbstractIncomingMessage

from service.broker.declarer import connect
from service.broker.publisher import task_message
from service.settings import Settings
from service.tasks import CANARY_CRASH, CANARY_FAIL, CANARY_FLAKY, CANARY_SUCCEED
from service.topology import DOCUMENT_QUEUE, EXCHANGE


class Outcome(msgspec.Struct, kw_only=True):
    path: str
    ok: bool
    seconds: float
    detail: str


class Path(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    task: str
    kwargs: dict[str, Any]
    state: str
    events: tuple[str, ...]
    reason: str | None = None


PATHS = (
    Path(name="success", task=CANARY_SUCCEED, kwargs={}, state="SUCCESS", events=("succeeded",)),
    Path(
        name="transient failure, retried",
        task=CANARY_FLAKY,
        kwargs={"failures": 1, "delay": 1},
        state="SUCCESS",
        events=("retrying", "succeeded"),
    ),
    Path(
        name="permanent failure, dead-lettered",
        task=CANARY_FAIL,
        kwargs={},
        state="DEAD",
        events=("failing",),
        reason="rejected",
    ),
)
CRASH = Path(
    name="worker crash, delivery limit",
    task=CANARY_CRASH,
    kwargs={},
    state="DEAD",
    events=(),
    reason="delivery_limit",
)
FINAL = frozenset({"SUCCESS", "DEAD", "REVOKED"})


async def run(
    settings: Settings, api_url: str, api_key: str | None, *, crash: bool, timeout: float
) -> list[Outcome]:
    paths = (*PATHS, CRASH) if crash else PATHS
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    connection = await connect(settings)
    events: dict[str, list[str]] = {}
    try:
        channel = await connection.channel(publisher_confirms=True)
        replies = await channel.declare_queue(exclusive=True, auto_delete=True)

        async def on_report(message: AbstractIncomingMessage) -> None:
            async with message.process():
                report = json.loads(message.body)
                events.setdefault(report["task_id"], []).append(report["event"])

        await replies.consume(on_report)
        exchange = await channel.get_exchange(EXCHANGE, ensure=False)
        async with httpx.AsyncClient(base_url=api_url, headers=headers, timeout=10) as api:
            await api.get("/health")
            started = {}
            for path in paths:
                task_id = f"selftest-{uuid.uuid4()}"
                message = task_message(
                    path.task,
                    task_id,
                    kwargs=path.kwargs | {"report_to": replies.name},
                    correlation_id=task_id,
                )
                await exchange.publish(message, routing_key=DOCUMENT_QUEUE, mandatory=True)
                started[task_id] = (path, time.monotonic())
            results = await asyncio.gather(
                *(
                    _outcome(
                        api,
                        task_id=task_id,
                        path=path,
                        began=began,
                        events=events,
                        timeout=timeout,
                    )
                    for task_id, (path, began) in started.items()
                )
            )
            await _clean_up(api, list(started))
    finally:
        await connection.close()
    return list(results)


async def _outcome(
    api: httpx.AsyncClient,
    *,
    task_id: str,
    path: Path,
    began: float,
    events: dict[str, list[str]],
    timeout: float,
) -> Outcome:
    status: dict[str, Any] = {}
    while time.monotonic() - began < timeout:
        response = await api.get(f"/tasks/{task_id}/status")
        if response.status_code == 200:
            status = response.json()
            if status["state"] in FINAL:
                break
        await asyncio.sleep(0.2)
    seconds = time.monotonic() - began
    state = status.get("state", "unknown")
    problems = []
    if state != path.state:
        problems.append(f"ended {state}, expected {path.state}")
    seen = tuple(events.get(task_id, ()))
    if path.events and seen != path.events:
        problems.append(f"the canary reported {list(seen)}, expected {list(path.events)}")
    if path.reason is not None and state == "DEAD":
        found = (await api.get("/dead-letters", params={"task_id": task_id})).json()["items"]
        reasons = {item["reason"] for item in found}
        if path.reason not in reasons:
            problems.append(f"dead letter reasons {sorted(reasons)}, expected {path.reason}")
    detail = "; ".join(problems) or _describe(status, seen)
    return Outcome(path=path.name, ok=not problems, seconds=round(seconds, 2), detail=detail)


def _describe(status: dict[str, Any], events: tuple[str, ...]) -> str:
    parts = [status.get("state", "?")]
    if status.get("retries"):
        parts.append(f"{status['retries']} retry")
    if status.get("error"):
        parts.append(str(status["error"].get("type")))
    if events:
        parts.append("canary: " + " → ".join(events))
    return ", ".join(parts)


async def _clean_up(api: httpx.AsyncClient, task_ids: list[str]) -> None:
    """Discard the dead letters the canaries made: an operator's DLQ holds real failures only."""
    for task_id in task_ids:
        found = await api.get("/dead-letters", params={"task_id": task_id, "status": "all"})
        if found.status_code != 200:
            continue
        for item in found.json()["items"]:
            if item["discarded_at"] is None:
                await api.delete(f"/dead-letters/{item['id']}")

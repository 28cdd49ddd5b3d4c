"""`docproc selftest`: canary tasks through a live deployment, each path checked end to end.

Canaries are published straight to the broker (as Celery protocol-2 messages, like the API's),
report what they do to a temporary queue, and their outcome is read back through the API: a
success; a transient failure that retries through retry_queue and the broker's delay, then
succeeds; a permanent failure that RabbitMQ dead-letters and the DLQ consumer stores; and, with
`--crash`, a task that kills its worker process until the delivery limit dead-letters it.

Whatever happens — a failed check, an API that answers badly, Ctrl-C — the run cleans up after
itself: its reply queue goes with its connection, which tells a crash canary still queued to stop
crashing (it checks that queue first), and the dead letters of its canaries, and of any earlier
run that was cut short, are discarded.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import Iterable
from typing import Any

import httpx
import msgspec
from aio_pika.abc import AbstractIncomingMessage

from service.broker.connection import connect
from service.broker.publisher import task_message
from service.settings import Settings
from service.task_contract import (
    CANARY_CRASH,
    CANARY_FAIL,
    CANARY_FLAKY,
    CANARY_SUCCEED,
    queue_for,
)
from service.topology import EXCHANGE

TASK_ID_PREFIX = "selftest-"
SETTLE_SECONDS = 20.0
"""How long clean-up waits for canaries still under way to end before discarding their letters."""


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
CANARY_TASKS = (CANARY_SUCCEED, CANARY_FLAKY, CANARY_FAIL, CANARY_CRASH)


class ApiAnswer(msgspec.Struct, frozen=True):
    status: int
    body: Any


async def _get(api: httpx.AsyncClient, path: str, **params: str) -> ApiAnswer:
    """GET as JSON; an answer that is not JSON is kept as its first line of text."""
    response = await api.get(path, params=params)
    try:
        body = response.json()
    except ValueError:
        body = response.text.strip().splitlines()[0][:200] if response.text.strip() else ""
    return ApiAnswer(response.status_code, body)


async def run(
    settings: Settings, api_url: str, api_key: str | None, *, crash: bool, timeout: float
) -> list[Outcome]:
    """Every path's outcome, then one for the clean-up."""
    paths = (*PATHS, CRASH) if crash else PATHS
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    started: dict[str, Path] = {}
    results: list[Outcome] = []
    async with httpx.AsyncClient(base_url=api_url, headers=headers, timeout=10) as api:
        try:
            results = await _run_paths(settings, api, paths, started, timeout)
        finally:
            # Ctrl-C cancelled this task: clean up anyway (a second Ctrl-C leaves at once).
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                task.uncancel()
            cleaned = await _clean_up(api, started)
    return [*results, cleaned]


async def _run_paths(
    settings: Settings,
    api: httpx.AsyncClient,
    paths: Iterable[Path],
    started: dict[str, Path],
    timeout: float,
) -> list[Outcome]:
    events: dict[str, list[str]] = {}
    connection = await connect(settings)
    try:
        channel = await connection.channel(publisher_confirms=True)
        replies = await channel.declare_queue(exclusive=True, auto_delete=True)

        async def on_report(message: AbstractIncomingMessage) -> None:
            async with message.process():
                report = json.loads(message.body)
                events.setdefault(report["task_id"], []).append(report["event"])

        await replies.consume(on_report)
        exchange = await channel.get_exchange(EXCHANGE, ensure=False)
        began: dict[str, float] = {}
        for path in paths:
            task_id = f"{TASK_ID_PREFIX}{uuid.uuid4()}"
            message = task_message(
                path.task,
                task_id,
                kwargs=path.kwargs | {"report_to": replies.name},
                correlation_id=task_id,
            )
            started[task_id] = path
            await exchange.publish(message, routing_key=queue_for(path.task), mandatory=True)
            began[task_id] = time.monotonic()
        return list(
            await asyncio.gather(
                *(
                    _outcome(
                        api, task_id, started[task_id], began=since, events=events, timeout=timeout
                    )
                    for task_id, since in began.items()
                )
            )
        )
    finally:
        # Closing deletes the exclusive reply queue: a crash canary still queued sees it gone
        # and ends instead of killing another worker process.
        with contextlib.suppress(Exception):
            await connection.close()


async def _outcome(
    api: httpx.AsyncClient,
    task_id: str,
    path: Path,
    *,
    began: float,
    events: dict[str, list[str]],
    timeout: float,
) -> Outcome:
    problems: list[str] = []
    status: dict[str, Any] = {}
    try:
        while time.monotonic() - began < timeout:
            answer = await _get(api, f"/tasks/{task_id}/status")
            if answer.status == 200 and isinstance(answer.body, dict):
                status = answer.body
                if status.get("state") in FINAL:
                    break
            elif answer.status != 404:
                problems.append(f"GET /tasks/…/status answered {answer.status} {answer.body}")
                break
            await asyncio.sleep(0.2)
        state = status.get("state", "unknown")
        if not problems and state != path.state:
            problems.append(f"ended {state}, expected {path.state}")
        seen = tuple(events.get(task_id, ()))
        if path.events and seen != path.events:
            problems.append(f"the canary reported {list(seen)}, expected {list(path.events)}")
        if path.reason is not None and state == "DEAD":
            letters = await _letters(api, task_id=task_id)
            reasons = {letter["reason"] for letter in letters}
            if path.reason not in reasons:
                problems.append(f"dead letter reasons {sorted(reasons)}, expected {path.reason}")
    except (httpx.HTTPError, LookupError, TypeError) as exc:
        problems.append(f"the API could not be read: {exc!r}")
        seen = ()
    detail = "; ".join(problems) or _describe(status, seen)
    seconds = round(time.monotonic() - began, 2)
    return Outcome(path=path.name, ok=not problems, seconds=seconds, detail=detail)


def _describe(status: dict[str, Any], events: tuple[str, ...]) -> str:
    parts = [str(status.get("state", "?"))]
    if status.get("retries"):
        parts.append(f"{status['retries']} retry")
    error = status.get("error")
    if isinstance(error, dict) and error.get("type"):
        parts.append(str(error["type"]))
    if events:
        parts.append("canary: " + " → ".join(events))
    return ", ".join(parts)


async def _letters(api: httpx.AsyncClient, **filters: str) -> list[dict[str, Any]]:
    """Every dead letter (any status) matching `filters`, following the cursor."""
    found: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        params = filters | {"status": "all", "limit": "200"}
        if cursor:
            params["cursor"] = cursor
        answer = await _get(api, "/dead-letters", **params)
        if answer.status != 200 or not isinstance(answer.body, dict):
            raise LookupError(f"GET /dead-letters answered {answer.status} {answer.body}")
        found += answer.body["items"]
        cursor = answer.body.get("next_cursor")
        if not cursor:
            return found


async def _discard(api: httpx.AsyncClient, letter_id: str) -> None:
    response = await api.delete(f"/dead-letters/{letter_id}")
    if response.status_code not in (200, 204, 404, 409):  # 404/409: discarded meanwhile
        raise LookupError(f"DELETE /dead-letters/… answered {response.status_code}")


async def _clean_up(api: httpx.AsyncClient, started: dict[str, Path]) -> Outcome:
    """Let this run's canaries end (briefly), then discard every canary dead letter left active:
    an operator's dead-letter store holds real failures only."""
    began = time.monotonic()
    try:
        pending = set(started)
        while pending and time.monotonic() - began < SETTLE_SECONDS:
            for task_id in list(pending):
                answer = await _get(api, f"/tasks/{task_id}/status")
                state = answer.body.get("state") if isinstance(answer.body, dict) else None
                if answer.status != 200 or state in FINAL:
                    pending.discard(task_id)
            if pending:
                await asyncio.sleep(0.5)
        letters = [
            letter
            for task in CANARY_TASKS
            for letter in await _letters(api, task=task)
            if str(letter.get("task_id") or "").startswith(TASK_ID_PREFIX)
            and letter.get("discarded_at") is None
        ]
        for letter in letters:
            await _discard(api, letter["id"])
    except (httpx.HTTPError, LookupError, KeyError, TypeError) as exc:
        return Outcome(
            path="clean-up",
            ok=False,
            seconds=round(time.monotonic() - began, 2),
            detail=f"canary dead letters may be left: {exc}",
        )
    detail = f"discarded {len(letters)} canary dead letter{'s' * (len(letters) != 1)}"
    if pending:
        detail += f"; {len(pending)} canary task(s) had not ended"
    return Outcome(
        path="clean-up",
        ok=not pending,
        seconds=round(time.monotonic() - began, 2),
        detail=detail,
    )

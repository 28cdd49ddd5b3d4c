"""Flower, started as the README says, against a real worker: a document uploaded through the
API is read back, processed, from Flower's HTTP API (task events: received, started, succeeded)."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio

from service.task_contract import PROCESS_DOCUMENT
from tests.observability.conftest import Stack
from tests.support import Process, eventually, free_port

pytestmark = [pytest.mark.rabbitmq, pytest.mark.worker]


@pytest_asyncio.fixture(loop_scope="session")
async def flower(stack: Stack) -> AsyncIterator[str]:
    """`celery -A service.worker.celery flower`, once it lists the stack's worker."""
    port = free_port()
    process = Process(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "service.worker.celery",
            "flower",
            f"--port={port}",
            "--address=127.0.0.1",
        ],
        stack.vhost.env(FLOWER_UNAUTHENTICATED_API="true"),
        stack.logs / "flower.log",
    )
    url = f"http://127.0.0.1:{port}"

    async def sees_the_worker() -> bool | None:
        if not process.alive():
            raise AssertionError(f"flower exited:\n{process.tail()}")
        try:
            async with httpx.AsyncClient(timeout=5) as http:
                answer = await http.get(f"{url}/api/workers", params={"refresh": "1"})
        except httpx.HTTPError:
            return None
        return True if answer.status_code == 200 and answer.json() else None

    try:
        await eventually(sees_the_worker, 60, "Flower to list the worker", interval=0.5)
        yield url
    finally:
        process.stop()


async def test_flower_shows_a_task_the_api_published(stack: Stack, flower: str) -> None:
    task_id = await stack.upload(b"Seen from Flower.\n", "flower.txt")
    await stack.state(task_id, "SUCCESS")

    async def processed() -> dict[str, Any] | None:
        async with httpx.AsyncClient(timeout=5) as http:
            answer = await http.get(f"{flower}/api/task/info/{task_id}")
        if answer.status_code != 200:
            return None
        info: dict[str, Any] = answer.json()
        return info if info.get("state") == "SUCCESS" else None

    info = await eventually(processed, 30, "Flower to show the task as SUCCESS", interval=0.5)

    assert info["name"] == PROCESS_DOCUMENT
    assert info["worker"].startswith("worker-")
    assert all(info[event] for event in ("received", "started", "succeeded")), info
    async with httpx.AsyncClient(timeout=5) as http:
        listed = (await http.get(f"{flower}/api/tasks", params={"state": "SUCCESS"})).json()
    assert task_id in listed

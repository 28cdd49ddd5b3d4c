"""Limits a `docproc up` of their own is started with: a pool process past its memory limit is
replaced, a PDF past the soft time limit dies of it. (Apart from tests/e2e/test_hostile_input.py,
whose shared `docproc up` is stopped before these start theirs.)"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from tests import corpus
from tests.e2e.conftest import Running, descendants, peak_memory
from tests.support import eventually

pytestmark = [pytest.mark.rabbitmq, pytest.mark.worker]


@pytest.mark.parametrize("up_env", [{"CELERY_MAX_MEMORY_PER_CHILD": "1"}])
async def test_a_pool_process_past_its_memory_limit_is_replaced_after_its_task(
    running: Running,
) -> None:
    worker = next(
        pid for pid in running.up.children() if "serve worker" in (peak_memory(pid) or ("",))[0]
    )
    pool = descendants(worker)
    async with httpx.AsyncClient(base_url=running.api, timeout=30) as http:
        accepted = await http.post("/documents", files={"file": ("note.txt", b"A short note.")})
        task_id = accepted.json()["task_id"]

        async def succeeded() -> bool | None:
            status = (await http.get(f"/tasks/{task_id}/status")).json()
            return True if status["state"] == "SUCCESS" else None

        await eventually(succeeded, 60, "the document to be processed")

    async def replaced() -> set[int] | None:
        # billiard's child says so only to a logger of its own; its pid says it too.
        now = await asyncio.to_thread(descendants, worker)
        return now if pool - now and len(now) == len(pool) else None

    await eventually(replaced, 30, "the pool process that ran it to be replaced by another")
    assert "restarting it" not in running.up.output(), "the worker itself did not die"


@pytest.mark.parametrize("up_env", [{"CELERY_SOFT_TIME_LIMIT": "1", "CELERY_TIME_LIMIT": "5"}])
async def test_a_pdf_that_outlasts_the_soft_time_limit_dies_of_it_not_as_corrupt(
    running: Running,
) -> None:
    async with httpx.AsyncClient(base_url=running.api, timeout=30) as http:
        pdf = corpus.scanned_pdf_sample(pages=8).data  # OCR takes about a second a page
        accepted = await http.post("/documents", files={"file": ("slow.pdf", pdf)})
        task_id = accepted.json()["task_id"]

        async def dead() -> dict[str, Any] | None:
            status: dict[str, Any] = (await http.get(f"/tasks/{task_id}/status")).json()
            return status if status["state"] in {"SUCCESS", "DEAD"} else None

        status = await eventually(dead, 60, "the PDF to be dead-lettered")
    assert status["state"] == "DEAD"
    # Raised during OCR, it is named; a hard limit (a reader swallowing the soft one) is a time
    # limit too. Never CorruptFile.
    assert status["error"]["type"] in {"SoftTimeLimitExceeded", "TimeLimitExceeded"}, status
    if status["error"]["type"] == "SoftTimeLimitExceeded":
        assert "CELERY_SOFT_TIME_LIMIT=1 s" in status["error"]["message"]

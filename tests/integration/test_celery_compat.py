"""Celery's own tools and stock clients work against a docproc worker."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest
from celery import Celery

from service.topology import DOCUMENT_QUEUE, EXCHANGE
from service.worker import canary
from tests.support import ROOT, Process, Reports, Vhost

pytestmark = [pytest.mark.rabbitmq, pytest.mark.worker]


async def test_celery_inspect_ping_is_answered(worker: Process, work_vhost: Vhost) -> None:
    ping = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "service.worker.celery",
            "inspect",
            "ping",
            "-t",
            "10",
        ],
        env=work_vhost.env(),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=False,
    )

    assert ping.returncode == 0, ping.stdout + ping.stderr
    assert "pong" in ping.stdout


async def test_a_stock_celery_client_sending_json_by_name_is_served(
    worker: Process, work_vhost: Vhost, reports: Reports
) -> None:
    stock = Celery(broker=work_vhost.url)  # nothing of docproc's: its defaults, plain JSON
    try:
        result = stock.send_task(
            canary.SUCCEED,
            kwargs={"report_to": reports.name},
            exchange=EXCHANGE,
            routing_key=DOCUMENT_QUEUE,
            declare=[],  # the queues exist; a stock client would declare `celery` without arguments
        )
    finally:
        stock.close()

    report = await reports.wait_for(lambda r: r["task_id"] == result.id)

    assert report["event"] == "succeeded"

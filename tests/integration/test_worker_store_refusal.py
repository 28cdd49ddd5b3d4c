"""A worker whose store it cannot use stops at start with the fix, and takes no task."""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from pathlib import Path

import pytest

from service.task_contract import PROCESS_DOCUMENT
from service.topology import DOCUMENT_QUEUE
from tests.store.test_migration_safety import at_a_newer_revision
from tests.support import FAST_WORKER_ENV, Process, Vhost, docproc_command, queue_tasks

pytestmark = [pytest.mark.rabbitmq, pytest.mark.worker]


async def test_a_worker_on_a_store_newer_than_it_stops_at_once_and_takes_no_task(
    vhost: Vhost, tmp_path: Path
) -> None:
    """Before, Alembic's CommandError was logged by Celery's signal dispatch ("Signal handler
    … raised") and the worker went on, processing tasks against that store."""
    newer = at_a_newer_revision(vhost.overrides["DOCPROC_DATABASE_URL"])
    [task_id] = await queue_tasks(vhost, PROCESS_DOCUMENT, 1, document_id=str(uuid.uuid4()))

    worker = Process(
        docproc_command("serve", "worker"), vhost.env(**FAST_WORKER_ENV), tmp_path / "worker.log"
    )
    try:
        code = await asyncio.to_thread(worker.popen.wait, 60)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the worker runs on a store newer than it:\n{worker.tail()}")
    finally:
        worker.stop()

    output = worker.output()
    assert code == 78, output
    assert "Traceback" not in output
    line = next(line for line in output.splitlines() if line.startswith("docproc: "))
    assert f"is at revision {newer}, newer than this docproc" in line
    connection = await vhost.connect()
    async with connection:
        queue = await (await connection.channel()).get_queue(DOCUMENT_QUEUE, ensure=False)
        message = await queue.get(no_ack=False, fail=False)
        assert message is not None, "the worker took the task"
        assert message.headers["id"] == task_id
        await message.nack(requeue=True)

"""Task status, retry of a failed or dead task, and the figures operators watch."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import Request, Response, get, post
from litestar.params import FromQuery, QueryParameter
from sqlalchemy import Connection

from service import figures
from service.api.correlation import correlation_id_of
from service.api.models import (
    DeadLetterCounts,
    Progress,
    QueueStats,
    Stats,
    TaskError,
    TaskStatus,
    TaskStatuses,
    Throughput,
    Timings,
)
from service.api.params import MAX_LENGTH, PathId
from service.api.responses import errors
from service.api.services import IntakeDep, ManagementDep, PublisherDep, StoreDep
from service.api.tracebacks import relative_paths
from service.broker.management import Management
from service.deadletters.republish import republish
from service.errors import BadRequest, BrokerUnavailable, Conflict, NotFound
from service.store import dead_letters, task_runs
from service.store.database import AsyncStore
from service.store.task_runs import TaskRun
from service.task_contract import PROCESS_DOCUMENT

RETRYABLE = frozenset({"FAILURE", "DEAD", "REVOKED"})


def status_of(run: TaskRun, *, with_traceback: bool = False) -> TaskStatus:
    """A run as the API shows it; the traceback only where asked for (the detail endpoint),
    with machine paths made relative."""
    error = None
    if run.error_type is not None or run.error_message is not None:
        error = TaskError(
            type=run.error_type,
            message=run.error_message,
            traceback=relative_paths(run.traceback) if with_traceback else None,
        )
    return TaskStatus(
        task_id=run.task_id,
        task=run.task_name,
        state=run.state,
        progress=Progress(
            step=run.step,
            steps_done=run.steps_done,
            steps_total=run.steps_total,
            percent=run.percent,
            step_times=run.step_times,
        ),
        retries=run.retries,
        retry_history=run.retry_history,
        error=error,
        timings=Timings(
            created_at=run.created_at,
            started_at=run.started_at,
            finished_at=run.finished_at,
            elapsed=run.elapsed,
            next_retry_at=run.next_retry_at,
        ),
        document_id=run.document_id,
        queue=run.queue,
        worker=run.worker,
        correlation_id=run.correlation_id,
    )


@get(
    "/tasks/{task_id:str}/status",
    responses=errors(404, 503),
    tags=["tasks"],
    summary="Where a task is: state, progress, retries, error, timings",
)
async def task_status(task_id: PathId, store: StoreDep) -> TaskStatus:
    return status_of(await _looked_up(store, task_id))


MAX_STATUSES = 100
"""Task ids one `GET /tasks/statuses` reads (their query string stays under ~4 kB)."""


@get(
    "/tasks/statuses",
    responses=errors(400, 503),
    tags=["tasks"],
    summary="Many tasks' statuses in one read",
    description=f"Up to {MAX_STATUSES} task ids, each as an `id` parameter "
    "(`/tasks/statuses?id=…&id=…`): their statuses in the order asked, and the ids with no "
    "record (unknown, or expired) in `unknown`. One read instead of one a task, for clients "
    "that follow many uploads (`docproc submit --wait`).",
)
async def task_statuses(
    store: StoreDep,
    ids: Annotated[
        list[str],
        QueryParameter(name="id", min_items=1, max_items=MAX_STATUSES),
    ],
) -> TaskStatuses:
    for task_id in ids:
        if not 0 < len(task_id) <= MAX_LENGTH or not task_id.isprintable():
            raise BadRequest(f"a task id is 1 to {MAX_LENGTH} printable characters")
    runs = {run.task_id: run for run in await store.read(task_runs.get_many, ids)}
    return TaskStatuses(
        statuses=[status_of(runs[task_id]) for task_id in dict.fromkeys(ids) if task_id in runs],
        unknown=[task_id for task_id in dict.fromkeys(ids) if task_id not in runs],
    )


@get(
    "/tasks/{task_id:str}",
    responses=errors(404, 503),
    tags=["tasks"],
    summary="A task in full: its status, and the traceback of its failure",
)
async def task_detail(task_id: PathId, store: StoreDep) -> TaskStatus:
    return status_of(await _looked_up(store, task_id), with_traceback=True)


async def _looked_up(store: AsyncStore, task_id: str) -> TaskRun:
    """The run of `task_id`, read together with other callers' (`AsyncStore.lookup`)."""
    return _known(task_id, await store.lookup(task_runs.by_id, task_id))


def _run(connection: Connection, task_id: str) -> TaskRun:
    return _known(task_id, task_runs.get(connection, task_id))


def _known(task_id: str, run: TaskRun | None) -> TaskRun:
    if run is None:
        raise NotFound(f"no task {task_id} (unknown, or its record expired)")
    return run


def _retry_plan(connection: Connection, task_id: str) -> tuple[TaskRun, str | None]:
    run = _run(connection, task_id)
    if run.state not in RETRYABLE:
        raise Conflict(
            f"task {task_id} is {run.state}; only FAILURE, DEAD or REVOKED tasks are retried"
        )
    return run, dead_letters.latest_for_task(connection, task_id)


@post(
    "/tasks/{task_id:str}/retry",
    status_code=202,
    responses=errors(401, 403, 404, 409, 503),
    tags=["tasks"],
    summary="Run a failed, dead or revoked task again",
    description="Re-publishes the task's dead letter when there is one (its original message, "
    "retry budget reset; the same cautions as re-publishing it, lifted by `force=true`); a "
    "document task without one is published afresh. Of requests retrying a task at once, one "
    "runs it; the others are a 409.",
)
async def retry_task(
    request: Request[Any, Any, Any],
    task_id: PathId,
    *,
    store: StoreDep,
    publisher: PublisherDep,
    intake: IntakeDep,
    force: FromQuery[bool] = False,
) -> Response[TaskStatus]:
    run, dead_letter_id = await store.run(_retry_plan, task_id)
    if dead_letter_id is not None:
        await republish(store, publisher, dead_letter_id, force=force)
    elif run.task_name == PROCESS_DOCUMENT and run.document_id is not None:
        # Requests retrying it at once (a double click, a client's retry) each read it
        # finished: only the first to take the run publishes.
        if not await store.write(task_runs.retried, task_id, run.updated_at):
            raise Conflict(
                f"task {task_id} changed while this request read it (another request is "
                "retrying it); read its status again"
            )
        if not await intake.publish(run.document_id, task_id, correlation_id_of(request.scope)):
            raise BrokerUnavailable("RabbitMQ did not confirm the task; it stays PENDING")
    else:
        raise Conflict(f"no dead letter holds the message of task {task_id}; nothing to re-run")
    fresh = await store.run(task_runs.get, task_id)
    assert fresh is not None
    return Response(
        status_of(fresh), status_code=202, headers={"Location": f"/tasks/{task_id}/status"}
    )


def _throughput(finished: dict[str, int]) -> Throughput:
    return Throughput(
        processed=finished.get("SUCCESS", 0),
        failed=finished.get("FAILURE", 0) + finished.get("DEAD", 0),
    )


@get(
    "/tasks/stats",
    responses=errors(503),
    tags=["tasks"],
    summary="Counts per state, queue depths and consumers, dead letters, recent throughput",
)
async def stats(store: StoreDep, management: ManagementDep) -> Stats:
    return await current_stats(store, management)


async def current_stats(store: AsyncStore, management: Management) -> Stats:
    """The figures of /tasks/stats (and of the console's overview)."""
    found = await store.run(figures.from_store)
    queues, warnings = await figures.of_queues(management)
    by_reason: dict[str, int] = {}
    by_queue: dict[str, int] = {}
    for reason, queue, count in found.dead_letters:
        by_reason[reason] = by_reason.get(reason, 0) + count
        by_queue[queue] = by_queue.get(queue, 0) + count
    return Stats(
        states=found.states,
        queues=[QueueStats(**msgspec.structs.asdict(queue)) for queue in queues],
        dead_letters=DeadLetterCounts(
            total=sum(by_reason.values()), by_reason=by_reason, by_queue=by_queue
        ),
        last_minute=_throughput(found.finished_last_minute),
        last_hour=_throughput(found.finished_last_hour),
        reconciled=found.reconciled,
        warnings=warnings,
    )

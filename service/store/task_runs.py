"""Task runs: where each task is, written by the worker at every transition, read by the API."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any, Literal

import msgspec
from sqlalchemy import (
    Boolean,
    Connection,
    Executable,
    Table,
    and_,
    bindparam,
    case,
    delete,
    func,
    insert,
    or_,
    select,
    update,
)

from service.store.database import Bulk, Fetch, Keyed, PerDialect, upsert
from service.store.schema import task_runs, utcnow

TaskState = Literal[
    "PENDING", "STARTED", "PROCESSING", "SUCCESS", "FAILURE", "RETRY", "REVOKED", "DEAD"
]
STATES: tuple[TaskState, ...] = (
    "PENDING",
    "STARTED",
    "PROCESSING",
    "SUCCESS",
    "FAILURE",
    "RETRY",
    "REVOKED",
    "DEAD",
)


# SUCCESS is final: a late dead letter, a duplicate delivery or a stale retry never moves a run
# back from it (store.outcomes settles the rest).
NOT_SUCCEEDED = task_runs.c.state != "SUCCESS"
ENDED: tuple[TaskState, ...] = ("FAILURE", "DEAD")
"""A run that ended without success: its failure recorded, its dead letter on its way or stored."""
AT_WORK: tuple[TaskState, ...] = ("STARTED", "PROCESSING")
"""A run a delivery of its message is at work on."""


class RetryRecord(msgspec.Struct, frozen=True, kw_only=True):
    at: datetime
    delay: float
    error_type: str | None
    message: str | None


class StepTime(msgspec.Struct, frozen=True, kw_only=True):
    """One step of a run: when it began and how long it took."""

    step: str
    started_at: datetime
    seconds: float


class TaskRun(msgspec.Struct, frozen=True, kw_only=True):
    task_id: str
    task_name: str
    document_id: str | None
    state: TaskState
    step: str | None
    steps_done: int
    steps_total: int
    percent: float
    retries: int
    retry_history: list[RetryRecord]
    next_retry_at: datetime | None
    error_type: str | None
    error_message: str | None
    traceback: str | None
    queue: str | None
    worker: str | None
    correlation_id: str | None
    created_at: datetime
    started_at: datetime | None
    updated_at: datetime
    finished_at: datetime | None
    step_times: list[StepTime] | None = None

    @property
    def elapsed(self) -> float | None:
        """Seconds from start to finish, or to now while it runs."""
        if self.started_at is None:
            return None
        end = self.finished_at or utcnow()
        return max(0.0, (end - self.started_at).total_seconds())


class Start(msgspec.Struct, frozen=True, kw_only=True):
    """A task's start, as the worker knows it. A task that names its steps starts PROCESSING at
    the first of them (one write instead of two)."""

    task_id: str
    task_name: str
    retries: int
    queue: str | None
    worker: str | None
    correlation_id: str | None
    document_id: str | None = None
    first_step: str | None = None
    steps_total: int = 0
    republished: bool = False
    """The message is a dead letter's, re-published (it carries its lineage): a run that ended
    starts again for it."""
    redelivered: bool = False
    """RabbitMQ delivers the message again (its ack or reject never reached it)."""
    first: bool = False
    """The task's first message (no retry of it, no wait for the store), delivered for the first
    time: it may be one of several copies (the relay's after a publish reported lost, the
    sweeper's, reconciliation's), and another may be at work on the run (`STARTED`)."""
    busy_for: float = 0.0
    """Seconds a run's last sign of life — its start or progress, a retry's due time — says a
    delivery may still be at work on it: the hard time limit, and a minute. 0: none is."""
    at: datetime = msgspec.field(default_factory=utcnow)
    """When this delivery started: a start sent again, its answer lost after it committed
    (`Store.run_alone`), finds its own start, not a copy's."""


_FRESH: dict[str, Any] = {
    "step": None,
    "steps_done": 0,
    "steps_total": 0,
    "percent": 0.0,
    "retries": 0,
    "next_retry_at": None,
    "error_type": None,
    "error_message": None,
    "traceback": None,
    "started_at": None,
    "finished_at": None,
    "retry_history": [],
}
"""What a run forgets when it starts over: its retries counted from 0 again, its history of them
too (it listed the retries of the run before beside the new count)."""


def _first_values(
    task_id: str, task_name: str, state: TaskState, now: datetime, **fields: Any
) -> dict[str, Any]:
    return {
        "task_id": task_id,
        "task_name": task_name,
        "state": state,
        "steps_done": 0,
        "steps_total": 0,
        "percent": 0.0,
        "retries": 0,
        "retry_history": [],
        "created_at": now,
        "updated_at": now,
    } | fields


_INSERT = insert(task_runs)


def record_pending(
    connection: Connection,
    task_id: str,
    task_name: str,
    *,
    document_id: str | None = None,
    queue: str | None = None,
    correlation_id: str | None = None,
    new: bool = False,
) -> None:
    """A task accepted and (about to be) published: a fresh run, whatever came before. A `new`
    task's id was never used: its record is inserted, with no earlier run to start over."""
    if new:
        record_pending_new(
            connection, task_name, [(task_id, document_id, correlation_id)], queue=queue
        )
        return
    now = utcnow()
    values = _first_values(
        task_id,
        task_name,
        "PENDING",
        now,
        document_id=document_id,
        queue=queue,
        correlation_id=correlation_id,
    )
    upsert(
        connection, task_runs, values, ["task_id"], _FRESH | {"state": "PENDING", "updated_at": now}
    )


def retried(connection: Connection, task_id: str, seen: datetime) -> bool:
    """The run of a task run again by hand (`POST /tasks/{id}/retry`), PENDING afresh — if it is
    as it was read (`seen`, its `updated_at`): of requests retrying it at once, which each read
    it finished, one publishes it. Whether this one did."""
    now = utcnow()
    result = connection.execute(
        update(task_runs)
        .where(task_runs.c.task_id == task_id, task_runs.c.updated_at == seen)
        .values(_FRESH | {"state": "PENDING", "updated_at": now})
    )
    return bool(result.rowcount)


def record_pending_new(
    connection: Connection,
    task_name: str,
    runs: Sequence[tuple[str, str | None, str | None]],
    *,
    queue: str | None = None,
) -> None:
    """`record_pending` of many `new` tasks in one statement: (task id, document id,
    correlation id) each."""
    now = utcnow()
    rows = [
        _first_values(
            task_id,
            task_name,
            "PENDING",
            now,
            document_id=document_id,
            queue=queue,
            correlation_id=correlation_id,
        )
        for task_id, document_id, correlation_id in runs
    ]
    if rows:
        connection.execute(_INSERT, rows)


def versions(connection: Connection, task_ids: set[str]) -> dict[str, datetime]:
    """When each run was last written: what `requeue` compares against."""
    if not task_ids:
        return {}
    rows = connection.execute(_VERSIONS(connection), {"task_ids": list(task_ids)})
    return {str(row.task_id): row.updated_at for row in rows}


_VERSIONS = Keyed(
    lambda one_of: select(task_runs.c.task_id, task_runs.c.updated_at).where(
        one_of(task_runs.c.task_id, "task_ids")
    )
)


class Requeue(msgspec.Struct, frozen=True):
    """A run whose message was published again, as it was (`seen`) before publishing."""

    task_id: str
    task_name: str
    queue: str | None
    seen: datetime | None


_REQUEUE = Bulk(
    lambda _: (
        update(task_runs)
        .where(
            task_runs.c.task_id == bindparam("p_task_id"),
            task_runs.c.updated_at == bindparam("p_seen"),
            # Succeeded, it is not PENDING again: the worker skips the message (its document is
            # processed). A letter stored as its task succeeded stays active until beat settles
            # it, and a re-publish of it showed the run PENDING.
            NOT_SUCCEEDED,
        )
        .values(**_FRESH, state="PENDING", queue=bindparam("p_queue"), updated_at=bindparam("p_at"))
    ),
    ["p_task_id", "p_seen", "p_queue", "p_at"],
)
_REQUEUE_UNKNOWN = PerDialect(
    lambda insert_for: insert_for(task_runs).on_conflict_do_nothing(index_elements=["task_id"])
)


def requeue(connection: Connection, *runs: Requeue) -> None:
    """Runs whose messages were published again: PENDING, a fresh attempt — unless the worker
    wrote the run since `seen` (read before publishing), for then it already has a newer story
    (the message was quick) and PENDING would be a step back. In task order, as every writer of
    many runs goes."""
    now = utcnow()
    ordered = sorted(runs, key=lambda run: run.task_id)
    unknown = [
        _first_values(run.task_id, run.task_name, "PENDING", now, queue=run.queue)
        for run in ordered
        if run.seen is None
    ]
    known = [(run.task_id, run.seen, run.queue, now) for run in ordered if run.seen is not None]
    if unknown:
        connection.execute(_REQUEUE_UNKNOWN(connection), unknown)
    _REQUEUE.execute(connection, known)


_STARTED_VALUES = (
    "task_id",
    "task_name",
    "document_id",
    "state",
    "step",
    "steps_done",
    "steps_total",
    "percent",
    "retries",
    "retry_history",
    "next_retry_at",
    "queue",
    "worker",
    "correlation_id",
    "created_at",
    "started_at",
    "updated_at",
    "finished_at",
)
"""The columns a start writes, each bound as `p_` and its name: named, so that the statement can
also be a CTE of another (which must name every value it inserts); `p_`, so that no parameter of
the statement it is part of is taken by SQLAlchemy for a column of its own to SET."""


def _build_started(insert_for: Callable[[Table], Any]) -> Executable:
    statement = insert_for(task_runs).values(
        {name: bindparam(f"p_{name}") for name in _STARTED_VALUES}
    )
    ended = task_runs.c.state.in_(ENDED)
    # A copy of the message of a run that ended — failed (its letter on its way) or dead (its
    # letter stored) — does not start it again: run again, it failed again, and its task had two
    # dead letters for one failure (copies: the relay's after a publish reported lost, the
    # sweeper's, reconciliation's). Unless the copy is a dead letter re-published, or RabbitMQ's
    # delivery again of a failed run's message whose reject it never had: its one letter comes
    # of this delivery.
    restarts = or_(
        ~ended,
        bindparam("p_republished", type_=Boolean),
        and_(bindparam("p_redelivered", type_=Boolean), task_runs.c.state == "FAILURE"),
    )
    # Nor does a copy of the task's first message start a run another delivery is at work on,
    # or whose retry is on its way: the two ran side by side, and a failure made two dead
    # letters, a transient one two retry chains. That delivery's message is still RabbitMQ's
    # (unacked, or to be delivered again, flagged so, if its worker dies), or its retry is
    # queued; a run with no sign of life for longer than an attempt may last is started.
    alive_after = bindparam("p_alive_after", type_=task_runs.c.updated_at.type)
    busy = and_(
        bindparam("p_first", type_=Boolean),
        or_(
            and_(task_runs.c.state.in_(AT_WORK), task_runs.c.updated_at > alive_after),
            and_(task_runs.c.state == "RETRY", task_runs.c.next_retry_at > alive_after),
        ),
        # Not this delivery's own start, written by a send whose answer was lost.
        task_runs.c.started_at.is_distinct_from(statement.excluded.started_at),
    )
    changed: dict[str, Any] = {name: statement.excluded[name] for name in _RESTARTED}
    # The failure of an attempt before (a retry's, kept in `retry_history`) is not this one's: a
    # run PROCESSING showed it as its error.
    changed |= {"error_type": None, "error_message": None, "traceback": None}
    changed["document_id"] = func.coalesce(statement.excluded.document_id, task_runs.c.document_id)
    built: Executable = statement.on_conflict_do_update(
        index_elements=["task_id"], set_=changed, where=and_(NOT_SUCCEEDED, restarts, ~busy)
    )
    return built


_RESTARTED = (
    "retries",
    "queue",
    "worker",
    "correlation_id",
    "started_at",
    "state",
    "step",
    "steps_done",
    "steps_total",
    "percent",
    "next_retry_at",
    "finished_at",
    "updated_at",
)
"""What a start overwrites in a run that exists (its document id only when the start knows it),
besides forgetting the failure of the attempt before."""
STARTED = PerDialect(_build_started)
"""A run's start (`started_values`), written over a run that exists but has not succeeded."""


def started_values(start: Start, now: datetime) -> dict[str, Any]:
    """`STARTED`'s parameters: each column of `_STARTED_VALUES` as `p_` and its name."""
    state: TaskState = "STARTED" if start.first_step is None else "PROCESSING"
    return {
        "p_task_id": start.task_id,
        "p_task_name": start.task_name,
        "p_document_id": start.document_id,
        "p_state": state,
        "p_step": start.first_step,
        "p_steps_done": 0,
        "p_steps_total": start.steps_total,
        "p_percent": 0.0,
        "p_retries": start.retries,
        "p_retry_history": [],
        "p_next_retry_at": None,
        "p_queue": start.queue,
        "p_worker": start.worker,
        "p_correlation_id": start.correlation_id,
        "p_created_at": start.at,
        "p_started_at": start.at,
        "p_updated_at": start.at,
        "p_finished_at": None,
        "p_republished": start.republished,
        "p_redelivered": start.redelivered,
        "p_first": start.first,
        "p_alive_after": now - timedelta(seconds=start.busy_for),
    }


def record_started(connection: Connection, start: Start) -> bool:
    """Whether the run started (see `STARTED`: not one that succeeded, nor, for a copy of its
    message, one that ended or that another delivery is at work on)."""
    result = connection.execute(STARTED(connection), started_values(start, utcnow()))
    return bool(result.rowcount)


def state_of(connection: Connection, task_id: str) -> TaskState | None:
    state: TaskState | None = connection.execute(
        select(task_runs.c.state).where(task_runs.c.task_id == task_id)
    ).scalar_one_or_none()
    return state


def record_progress(
    connection: Connection, task_id: str, *, step: str, steps_done: int, steps_total: int
) -> None:
    percent = round(100.0 * steps_done / steps_total, 1) if steps_total else 0.0
    connection.execute(
        update(task_runs)
        .where(task_runs.c.task_id == task_id, NOT_SUCCEEDED)
        .values(
            state="PROCESSING",
            step=step,
            steps_done=steps_done,
            steps_total=steps_total,
            percent=percent,
            updated_at=utcnow(),
        )
    )


def record_retry(
    connection: Connection,
    task_id: str,
    *,
    retries: int,
    delay: float,
    error_type: str | None,
    message: str | None,
) -> None:
    now = utcnow()
    history = connection.execute(
        select(task_runs.c.retry_history).where(task_runs.c.task_id == task_id)
    ).scalar_one_or_none()
    entry = RetryRecord(at=now, delay=delay, error_type=error_type, message=message)
    connection.execute(
        update(task_runs)
        .where(task_runs.c.task_id == task_id, NOT_SUCCEEDED)
        .values(
            state="RETRY",
            retries=retries,
            next_retry_at=now + timedelta(seconds=delay),
            error_type=error_type,
            error_message=message,
            retry_history=[*(history or []), msgspec.to_builtins(entry)],
            updated_at=now,
        )
    )


# A run that succeeded already keeps its outcome: a second delivery of its message (a lost ack,
# a copy the sweeper or reconciliation sent) finds its document processed and succeeds again
# without work — written over, the run lost its step times and its finish moved on, counted in
# the throughput a second time.
SUCCESS = (
    update(task_runs)
    .where(task_runs.c.task_id == bindparam("p_task_id"), NOT_SUCCEEDED)
    .values(
        state="SUCCESS",
        percent=100.0,
        steps_done=task_runs.c.steps_total,
        next_retry_at=None,
        error_type=None,
        error_message=None,
        traceback=None,
        finished_at=bindparam("p_at"),
        updated_at=bindparam("p_at"),
        step_times=bindparam("p_step_times", type_=task_runs.c.step_times.type),
    )
)


def success_values(
    task_id: str, now: datetime, step_times: Sequence[StepTime] | None = None
) -> dict[str, Any]:
    """`SUCCESS`'s parameters."""
    times = msgspec.to_builtins(step_times) if step_times else None
    return {"p_task_id": task_id, "p_at": now, "p_step_times": times}


def record_success(
    connection: Connection, task_id: str, step_times: Sequence[StepTime] | None = None
) -> None:
    """SUCCESS, with the run's steps and their durations when the task recorded them."""
    connection.execute(SUCCESS, success_values(task_id, utcnow(), step_times))


def record_failure(
    connection: Connection,
    task_id: str,
    task_name: str,
    *,
    state: Literal["FAILURE", "DEAD", "REVOKED"],
    error_type: str | None,
    message: str | None,
    traceback: str | None = None,
) -> None:
    """A run that ended without success; DEAD once its dead letter is stored. A DEAD run stays
    DEAD when the worker's failure arrives after its dead letter (a hard time-out is rejected
    before it is recorded), and a SUCCESS stays SUCCESS."""
    now = utcnow()
    fields: dict[str, Any] = {"finished_at": now, "next_retry_at": None}
    if error_type is not None:
        fields |= {"error_type": error_type, "error_message": message}
    if traceback is not None:
        fields["traceback"] = traceback
    values = _first_values(task_id, task_name, state, now, **fields)
    new_state: Any = state
    if state == "FAILURE":
        new_state = case((task_runs.c.state == "DEAD", "DEAD"), else_=state)
    changes = fields | {"state": new_state, "updated_at": now}
    upsert(connection, task_runs, values, ["task_id"], changes, where=NOT_SUCCEEDED)


_GET = Fetch(select(task_runs).where(task_runs.c.task_id == bindparam("task_id")), TaskRun)


def get(connection: Connection, task_id: str) -> TaskRun | None:
    return _GET.first(connection, task_id=task_id)


_GET_MANY = Fetch(
    Keyed(lambda one_of: select(task_runs).where(one_of(task_runs.c.task_id, "task_ids"))),
    TaskRun,
)


def get_many(connection: Connection, task_ids: Sequence[str]) -> list[TaskRun]:
    """The runs of those of `task_ids` that are known, in no particular order."""
    if not task_ids:
        return []
    return _GET_MANY.all(connection, task_ids=list(task_ids))


def by_id(connection: Connection, task_ids: list[str]) -> dict[str, TaskRun]:
    """The runs of those of `task_ids` that are known, by task id (`AsyncStore.lookup`)."""
    if len(task_ids) == 1:  # `get`'s statement: an expanding IN costs ~20 µs more to run
        run = get(connection, task_ids[0])
        return {} if run is None else {run.task_id: run}
    return {run.task_id: run for run in get_many(connection, task_ids)}


def count_by_state(connection: Connection) -> dict[str, int]:
    rows = connection.execute(
        select(task_runs.c.state, func.count()).group_by(task_runs.c.state)
    ).all()
    counts: dict[str, int] = dict.fromkeys(STATES, 0)
    counts.update(dict(rows))
    return counts


def finished_since(connection: Connection, since: datetime) -> dict[str, int]:
    """How many runs ended in each state since `since`."""
    rows = connection.execute(
        select(task_runs.c.state, func.count())
        .where(task_runs.c.finished_at >= since)
        .group_by(task_runs.c.state)
    ).all()
    return dict(rows)


def expire(
    connection: Connection, finished_before: datetime, *, failed_before: datetime, limit: int
) -> int:
    """Delete runs that finished before `finished_before`, `limit` at most (see
    `dead_letters.purge`); returns how many. A FAILURE waits for its dead letter, which takes
    the run's failure and makes it DEAD: expired first, a letter that came late (the DLQ
    consumer down for an hour) kept the earlier attempt's error its headers carried, and was
    grouped with that cause's. It goes only before `failed_before` (the dead letters'
    retention), its letter lost."""
    c = task_runs.c
    due = and_(
        c.finished_at.is_not(None),
        c.finished_at < finished_before,
        or_(c.state != "FAILURE", c.finished_at < failed_before),
    )
    chosen = select(c.task_id).where(due).limit(limit).scalar_subquery()
    # `due` again on the row deleted: PostgreSQL rechecks only that on a row another
    # transaction changed meanwhile — a run made PENDING again (a re-publish) was deleted.
    result = connection.execute(delete(task_runs).where(c.task_id.in_(chosen), due))
    return int(result.rowcount or 0)


_RUNNING = ("STARTED", "PROCESSING")


def _build_dead(insert_for: Callable[[Table], Any]) -> Executable:
    """A run's death keeps the failure the worker recorded for it — unless the run was running
    again when it died (a delivery that killed its worker, a lost connection): the error it
    holds is then an earlier attempt's, a retry's, and the death's own reason is the cause."""
    statement = insert_for(task_runs)
    kept = and_(
        task_runs.c.error_type.is_not(None), *(task_runs.c.state != state for state in _RUNNING)
    )
    built: Executable = statement.on_conflict_do_update(
        index_elements=["task_id"],
        set_={
            "state": statement.excluded.state,
            "finished_at": statement.excluded.finished_at,
            "next_retry_at": None,
            "updated_at": statement.excluded.updated_at,
            "error_type": case((kept, task_runs.c.error_type), else_=statement.excluded.error_type),
            "error_message": case(
                (kept, task_runs.c.error_message), else_=statement.excluded.error_message
            ),
        },
        where=NOT_SUCCEEDED,
    )
    return built


_DEAD = Bulk(
    _build_dead,
    [
        *("task_id", "task_name", "state", "steps_done", "steps_total", "percent", "retries"),
        *("retry_history", "created_at", "updated_at", "finished_at", "error_type"),
        "error_message",
    ],
)


def record_dead(connection: Connection, runs: Sequence[tuple[str, str, str, str]]) -> None:
    """Mark runs DEAD — (task id, task name, reason, why) each — keeping any failure the worker
    recorded, creating the runs of tasks never seen, leaving SUCCESS alone (one statement)."""
    now = utcnow()
    _DEAD.execute(
        connection,
        [
            (task_id, task_name, "DEAD", 0, 0, 0.0, 0, [], now, now, now, reason, why)
            # One row per task (a statement may not update a row twice), in one order for
            # every writer of many runs: concurrent ones cannot deadlock.
            for task_id, (task_name, reason, why) in sorted(
                {task_id: rest for task_id, *rest in runs}.items()
            )
        ],
    )


class Failure(msgspec.Struct, frozen=True, kw_only=True):
    """A run's state and the failure it holds (none, or an earlier attempt's while running)."""

    state: str
    error_type: str | None
    error_message: str | None
    traceback: str | None

    @property
    def running(self) -> bool:
        """Running again: the failure it holds, if any, is an earlier attempt's."""
        return self.state in _RUNNING

    @property
    def recorded(self) -> bool:
        """The worker recorded this failure as the end of the attempt (FAILURE, REVOKED)."""
        return self.state in ("FAILURE", "REVOKED") and self.error_type is not None


def failures(connection: Connection, task_ids: set[str]) -> dict[str, Failure]:
    """The state and failure of each of these tasks' runs that is known."""
    if not task_ids:
        return {}
    rows = connection.execute(_FAILURES(connection), {"task_ids": list(task_ids)}).all()
    return {
        row.task_id: Failure(
            state=row.state,
            error_type=row.error_type,
            error_message=row.error_message,
            traceback=row.traceback,
        )
        for row in rows
    }


_FAILURES = Keyed(
    lambda one_of: select(
        *(
            task_runs.c[name]
            for name in ("task_id", "state", "error_type", "error_message", "traceback")
        )
    ).where(one_of(task_runs.c.task_id, "task_ids"))
)


def oldest_pending(connection: Connection) -> datetime | None:
    """When the longest-waiting PENDING run was accepted (published or not), if any."""
    oldest: datetime | None = connection.execute(
        select(func.min(task_runs.c.updated_at)).where(task_runs.c.state == "PENDING")
    ).scalar()
    return oldest

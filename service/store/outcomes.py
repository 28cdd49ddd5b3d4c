"""How a task's outcome is settled when the worker, the DLQ consumer and beat each learn part of
it, in any order. The one module that writes both task runs and dead letters.

- SUCCESS is final: nothing moves a run back from it.
- A dead letter of a task that succeeded (before or after the letter arrived) is superseded:
  kept, with its lineage, but neither active nor counted as a failure.
- The worker's failure and the dead letter may arrive in either order: the run ends DEAD with the
  worker's failure, and the letter carries that failure too.
- A run that starts proves its message was published: the document is marked so, and beat's
  sweeper leaves it alone.

Every function takes its locks in one order — documents, dead letters, task runs — so that two
of them running at once on PostgreSQL wait for each other instead of deadlocking.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Literal

import msgspec
from sqlalchemy import Connection, Executable, Insert, Select, bindparam, func, select
from sqlalchemy.sql.selectable import HasCTE

from service.store import dead_letters, documents, task_runs
from service.store.database import ByDialectName
from service.store.dead_letters import NewDeadLetter
from service.store.documents import Extraction, Upload
from service.store.schema import task_runs as task_runs_table
from service.store.schema import utcnow
from service.store.task_runs import Start, StepTime
from service.task_protocol import MESSAGE_PROBLEMS


def task_started(connection: Connection, start: Start) -> bool:
    """Whether the run started (`task_runs.record_started`)."""
    if start.document_id is not None:
        documents.mark_published(connection, start.document_id)
    return task_runs.record_started(connection, start)


def task_succeeded(
    connection: Connection, task_id: str, step_times: Sequence[StepTime] | None = None
) -> None:
    dead_letters.supersede(connection, task_id)
    task_runs.record_success(connection, task_id, step_times)


# A document task's two writes are one statement each on PostgreSQL (`Store.run_alone`): every
# round trip there costs the worker ~0.2 ms of wall time. PostgreSQL runs the data-modifying
# CTEs that the query does not read after it, the last written first (seen on PostgreSQL 15):
# they are listed in the reverse of the lock order above.


def _started_and_loaded(dialect: str) -> Select[Any]:
    started = task_runs.STARTED.for_dialect(dialect)
    published = documents.MARK_PUBLISHED.for_dialect(dialect)
    assert isinstance(started, Insert)
    assert isinstance(published, HasCTE)
    # The run's state as the statement found it (the CTEs' writes are not seen by the query),
    # with whether the start was written: a copy of the message of a run that ended, or that
    # another delivery is at work on, is not started.
    started_cte = started.returning(task_runs_table.c.task_id).cte("started")
    run_state = (
        select(task_runs_table.c.state)
        .where(task_runs_table.c.task_id == bindparam("p_task_id"))
        .scalar_subquery()
    )
    wrote = select(func.count()).select_from(started_cte).scalar_subquery()
    return documents.UPLOAD.add_columns(
        run_state.label("run_state"), wrote.label("run_started")
    ).add_cte(started_cte, published.cte("published"))


def _stored_and_succeeded(dialect: str) -> Select[Any]:
    return documents.STORED.add_cte(
        task_runs.SUCCESS.cte("succeeded"), dead_letters.SUPERSEDE.cte("superseded")
    )


_STARTED_AND_LOADED = ByDialectName(_started_and_loaded)
_STORED_AND_SUCCEEDED = ByDialectName(_stored_and_succeeded)


def _together(*parameters: dict[str, Any]) -> dict[str, Any]:
    """The parameters of statements made one: a name two of them use must mean one value."""
    merged: dict[str, Any] = {}
    for given in parameters:
        for name, value in given.items():
            if name in merged and merged[name] != value:
                raise ValueError(f"parameter {name} is given two values")
            merged[name] = value
    return merged


def document_loaded(connection: Connection, document_id: str, start: Start | None) -> Upload | None:
    """A document task's start (`task_started`, when `start` is given) and its document's upload,
    None when there is none. One statement on PostgreSQL."""
    if start is None:
        return documents.get_upload(connection, document_id)
    if connection.dialect.name != "postgresql":
        started = task_started(connection, start)
        refused = None if started else task_runs.state_of(connection, start.task_id)
        return documents.upload_of(
            connection.execute(documents.UPLOAD, {"p_id": document_id}).first(), refused
        )
    values = _loaded_values(document_id, start, utcnow())
    row = connection.execute(_STARTED_AND_LOADED(connection), values).first()
    refused = None if row is None or row.run_started else row.run_state
    return documents.upload_of(row, refused)


def _loaded_values(document_id: str, start: Start, now: datetime) -> dict[str, Any]:
    published = [] if start.document_id is None else [start.document_id]  # as `task_started`
    return _together(
        {"p_id": document_id},
        documents.published_values(published, now),
        task_runs.started_values(start, now),
    )


def document_stored(
    connection: Connection,
    document_id: str,
    extraction: Extraction,
    task_id: str | None,
    step_times: Sequence[StepTime] | None = None,
) -> bool:
    """The document's text and chunks (`documents.store_extraction`) and its task's success
    (`task_succeeded`, when `task_id` is given), together. False when another delivery of the
    task had stored the text: the success is recorded all the same. One statement on PostgreSQL.
    """
    if connection.dialect.name == "postgresql":
        now = utcnow()
        if task_id is None:
            statement: Executable = documents.STORED
            values = documents.stored_values(document_id, extraction, now)
        else:
            statement = _STORED_AND_SUCCEEDED(connection)
            values = _stored_values(document_id, extraction, task_id, now, step_times)
        return bool(connection.execute(statement, values).scalar_one())
    try:
        documents.store_extraction(connection, document_id, extraction)
        stored = True
    except documents.AlreadyProcessed:
        stored = False  # it changed nothing: the success is still to be written
    if task_id is not None:
        task_succeeded(connection, task_id, step_times)
    return stored


def _stored_values(
    document_id: str,
    extraction: Extraction,
    task_id: str,
    now: datetime,
    step_times: Sequence[StepTime] | None,
) -> dict[str, Any]:
    return _together(
        documents.stored_values(document_id, extraction, now),
        dead_letters.supersede_values(task_id, now),
        task_runs.success_values(task_id, now, step_times),
    )


def task_failed(
    connection: Connection,
    task_id: str,
    task_name: str,
    *,
    state: Literal["FAILURE", "REVOKED"],
    error_type: str,
    message: str | None,
    traceback: str | None = None,
) -> None:
    dead_letters.fill_failure(
        connection, task_id, error_type=error_type, message=message, traceback=traceback
    )
    task_runs.record_failure(
        connection,
        task_id,
        task_name,
        state=state,
        error_type=error_type,
        message=message,
        traceback=traceback,
    )


def letters_arrived(connection: Connection, letters: Sequence[NewDeadLetter]) -> list[str]:
    """Store new dead letters and settle their tasks' runs; returns the records' ids."""
    task_ids = {letter.task_id for letter in letters if letter.task_id}
    runs = task_runs.failures(connection, task_ids)
    succeeded = {task_id for task_id, run in runs.items() if run.state == "SUCCESS"}
    ids = dead_letters.insert_many(
        connection, [_failure_of(letter, runs) for letter in letters], superseded=succeeded
    )
    task_runs.record_dead(
        connection,
        [
            dead_letters.death_of(letter)
            for letter in letters
            if letter.task_id and letter.task_id not in succeeded
        ],
    )
    return ids


def _failure_of(letter: NewDeadLetter, runs: dict[str, task_runs.Failure]) -> NewDeadLetter:
    """The letter with the failure that ended its attempt. Its headers carry the failure its
    message retried for (every retry writes it), an earlier attempt's: the worker's record says
    better. A run the worker failed (FAILURE, REVOKED) gives its failure; a run that was running
    again when its message died (a delivery that killed its worker, a rejected time limit whose
    failure is recorded after) has none yet — the letter says its reason until the worker's
    failure fills it (`dead_letters.fill_failure`); any other run gives its failure to a letter
    that carries none. A letter whose message could not be a task says so, whatever the run."""
    run = runs.get(letter.task_id or "")
    if run is None or letter.error_type in MESSAGE_PROBLEMS:
        return letter
    if run.running:
        return msgspec.structs.replace(letter, error_type=None, error_message=None, traceback=None)
    if run.recorded or (letter.error_type is None and run.error_type is not None):
        return msgspec.structs.replace(
            letter,
            error_type=run.error_type,
            error_message=run.error_message,
            traceback=run.traceback,
        )
    return letter

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
from typing import Literal

from sqlalchemy import Connection

from service.store import dead_letters, documents, task_runs
from service.store.dead_letters import NewDeadLetter
from service.store.task_runs import Start


def task_started(connection: Connection, start: Start) -> None:
    if start.document_id is not None:
        documents.mark_published(connection, start.document_id)
    task_runs.record_started(connection, start)


def task_succeeded(
    connection: Connection, task_id: str, step_times: Sequence[task_runs.StepTime] | None = None
) -> None:
    dead_letters.supersede(connection, task_id)
    task_runs.record_success(connection, task_id, step_times)


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
    succeeded = task_runs.succeeded(connection, task_ids)
    failures = task_runs.failures(
        connection,
        {letter.task_id for letter in letters if letter.task_id and not letter.error_type},
    )
    ids = dead_letters.insert_many(connection, letters, failures=failures, superseded=succeeded)
    task_runs.record_dead(
        connection,
        [
            dead_letters.death_of(letter)
            for letter in letters
            if letter.task_id and letter.task_id not in succeeded
        ],
    )
    return ids

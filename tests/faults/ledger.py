"""What a scenario's outcome is, read from the store alone: a fresh PostgreSQL database per
scenario, migrated, with triggers that keep a history the product does not — every time a
document's text is written, every change of a task run's state or worker — committed (or rolled
back) with the product's own writes. The counts come from those tables, never from logs."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

from tests.faults.load import Submission
from tests.support import ScratchDatabase

HISTORY = """
CREATE TABLE faults_text_writes (
    document_id varchar(36) NOT NULL,
    at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE FUNCTION faults_text_written() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO faults_text_writes (document_id) VALUES (NEW.document_id);
    RETURN NULL;
END $$;
CREATE TRIGGER faults_text_written AFTER INSERT OR UPDATE ON document_texts
    FOR EACH ROW EXECUTE FUNCTION faults_text_written();

CREATE TABLE faults_task_history (
    task_id varchar(255) NOT NULL,
    state varchar(16) NOT NULL,
    worker varchar(255),
    moved boolean NOT NULL,
    at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE FUNCTION faults_task_moved() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' OR OLD.state IS DISTINCT FROM NEW.state
            OR OLD.worker IS DISTINCT FROM NEW.worker THEN
        INSERT INTO faults_task_history (task_id, state, worker, moved)
            VALUES (NEW.task_id, NEW.state, NEW.worker,
                    TG_OP = 'INSERT' OR OLD.state IS DISTINCT FROM NEW.state);
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER faults_task_moved AFTER INSERT OR UPDATE ON task_runs
    FOR EACH ROW EXECUTE FUNCTION faults_task_moved();
"""

FINAL = ("SUCCESS", "DEAD")


class Database(ScratchDatabase):
    """One scenario's database: created, migrated and given the history triggers; dropped."""

    def __init__(self, admin: str) -> None:
        super().__init__(admin, "faults")

    def create(self) -> None:
        super().create()
        with psycopg.connect(self.url, autocommit=True) as connection:
            connection.execute(HISTORY)

    def rows(self, query: str, *params: Any) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.url, autocommit=True, connect_timeout=5) as connection:
            return connection.execute(query, params).fetchall()

    def value(self, query: str, *params: Any) -> Any:
        return self.rows(query, *params)[0][0]


@dataclass
class Outcome:
    """One scenario's counts. `lost` and `stuck` are told apart by the broker: a document not
    final at the deadline is stuck while a message remains that may still finish it, lost
    when none does."""

    submitted: int
    accepted: int
    success: int
    dead: int
    not_final: int
    duplicated: int
    wrong: int
    problems: list[str]
    lost: int = 0
    stuck: int = 0

    @property
    def settled(self) -> bool:
        return self.not_final == 0

    def judge(self, messages_left: int) -> None:
        self.lost = max(0, self.not_final - messages_left)
        self.stuck = self.not_final - self.lost


DOCUMENTS = """
SELECT d.filename, d.id, t.state, t.error_type,
       (SELECT count(*) FROM faults_text_writes w WHERE w.document_id = d.id),
       (SELECT count(*) FROM faults_task_history h
         WHERE h.task_id = d.task_id AND h.state = 'SUCCESS' AND h.moved),
       (SELECT count(*) FROM dead_letters l
         WHERE l.task_id = d.task_id AND l.superseded_at IS NULL),
       (SELECT string_agg(DISTINCT l.reason, ',') FROM dead_letters l
         WHERE l.task_id = d.task_id AND l.superseded_at IS NULL),
       x.text
FROM documents d
LEFT JOIN task_runs t ON t.task_id = d.task_id
LEFT JOIN document_texts x ON x.document_id = d.id
"""


def outcome(database: Database, scenario: str, submissions: list[Submission]) -> Outcome:
    """Count what the store holds for a scenario's `submissions` (each a file of its own name,
    `<scenario>-…`)."""
    by_name: dict[str, list[tuple[Any, ...]]] = {}
    for row in database.rows(DOCUMENTS + " WHERE d.filename LIKE %s", f"{scenario}-%"):
        by_name.setdefault(row[0], []).append(row)
    problems: list[str] = []
    accepted = success = dead = not_final = duplicated = wrong = 0
    for submission in submissions:
        rows = by_name.pop(submission.filename, [])
        if submission.receipt is None and not rows:
            continue
        accepted += 1
        if not rows:
            not_final += 1
            problems.append(f"{submission.filename}: answered 202 but no document in the store")
            continue
        if len(rows) > 1:
            duplicated += len(rows) - 1
            problems.append(f"{submission.filename}: {len(rows)} documents for one upload")
        _, document_id, state, error_type, texts, successes, letters, reasons, text = rows[0]
        for what, count in (("text writes", texts), ("SUCCESS", successes), ("letters", letters)):
            if count > 1:
                duplicated += count - 1
                problems.append(f"{submission.filename} ({document_id}): {count} {what}")
        if state not in FINAL:
            not_final += 1
            problems.append(f"{submission.filename} ({document_id}): {state}")
            continue
        success += state == "SUCCESS"
        dead += state == "DEAD"
        expected = "SUCCESS" if submission.good else "DEAD"
        why = None
        if state != expected:
            why = f"{state} ({error_type}), expected {expected}"
        elif submission.good and submission.token not in (text or ""):
            why = f"SUCCESS without its token {submission.token!r} in the text"
        elif not submission.good and (error_type != submission.error or reasons != "rejected"):
            why = f"DEAD by {reasons} ({error_type}), expected rejected ({submission.error})"
        if why is not None:
            wrong += 1
            problems.append(f"{submission.filename} ({document_id}): {why}")
    for name, rows in by_name.items():
        problems.append(f"{name}: {len(rows)} documents nobody submitted")
        duplicated += len(rows)
    return Outcome(
        submitted=len(submissions),
        accepted=accepted,
        success=success,
        dead=dead,
        not_final=not_final,
        duplicated=duplicated,
        wrong=wrong,
        problems=problems,
    )


def letters_of(database: Database, task_id: str) -> int:
    """Dead letters stored for one task id."""
    return int(database.value("SELECT count(*) FROM dead_letters WHERE task_id = %s", task_id))


def wait_for_work(database: Database, worker: str, timeout: float) -> bool:
    """Whether `worker` holds a task run in progress at some moment within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    with psycopg.connect(database.url, autocommit=True, connect_timeout=5) as connection:
        while time.monotonic() < deadline:
            found = connection.execute(
                "SELECT 1 FROM task_runs WHERE worker = %s "
                "AND state IN ('STARTED', 'PROCESSING') LIMIT 1",
                (worker,),
            ).fetchone()
            if found is not None:
                return True
            time.sleep(0.005)
    return False


def maintenance_since(database: Database, task_name: str, since: datetime) -> bool:
    """Whether a maintenance task beat sent has run since `since` (beat at work)."""
    return bool(
        database.value(
            "SELECT count(*) FROM task_runs WHERE task_name = %s AND created_at > %s",
            task_name,
            since,
        )
    )


def state_counts(database: Database) -> Counter[str]:
    return Counter(
        {
            state: int(n)
            for state, n in database.rows("SELECT state, count(*) FROM task_runs GROUP BY state")
        }
    )

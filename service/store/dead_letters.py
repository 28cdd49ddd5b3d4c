"""Dead letters: every message RabbitMQ dead-lettered, stored with why it died, what was done."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec
from sqlalchemy import (
    Connection,
    Select,
    and_,
    bindparam,
    delete,
    exists,
    func,
    literal,
    or_,
    select,
    update,
)

from service.errors import Conflict
from service.grouping import fingerprint
from service.ids import new_id
from service.store import cursors
from service.store.database import Bulk, Keyed, as_struct
from service.store.schema import dead_letters, redrive_items, redrives, task_runs, utcnow

Status = Literal["active", "republished", "discarded", "superseded", "all", "redrivable"]
STATUSES: tuple[Status, ...] = ("active", "republished", "discarded", "superseded", "all")
"""What a dead letter can be, as the list filter `status` names it (`redrivable`, active or
re-published, is what a redrive that includes re-published letters takes)."""
REASONS = ("rejected", "expired", "maxlen", "delivery_limit", "unknown")
"""Why a message died: RabbitMQ's x-death reasons, and ours for a message without them."""


class _Message(msgspec.Struct, frozen=True, kw_only=True):
    """What a dead message says about itself and why it died."""

    message_key: str
    content_type: str | None
    content_encoding: str | None
    headers: dict[str, Any]
    properties: dict[str, Any]
    reason: str
    queue: str
    exchange: str | None
    routing_keys: list[str]
    death_count: int
    first_death_at: datetime | None
    dead_at: datetime
    task_name: str | None
    task_id: str | None
    args: Any
    kwargs: Any
    retries: int | None
    root_id: str | None
    parent_id: str | None
    correlation_id: str | None
    error_type: str | None
    error_message: str | None
    traceback: str | None
    republished_from: str | None
    problems: list[str] | None = None
    """What the DLQ consumer could not read as it was (stored raw or sanitised instead)."""


class NewDeadLetter(_Message, frozen=True, kw_only=True):
    """A dead message as the DLQ consumer read it, ready to store."""

    body: bytes


class DeadLetter(_Message, frozen=True, kw_only=True):
    """A stored dead letter and what was done with it (`body` is empty unless asked for)."""

    id: str
    fingerprint: str
    republish_count: int
    republished_at: datetime | None
    discarded_at: datetime | None
    superseded_at: datetime | None
    stored_at: datetime
    updated_at: datetime
    body: bytes = b""
    body_size: int | None = None
    """The body's whole size, when only its first bytes were read."""


class Filters(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Which dead letters: the same fields for listing, grouping and redriving."""

    queue: str | None = None
    reason: str | None = None
    task: str | None = None
    error_type: str | None = None
    group: str | None = None
    task_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    status: Status = "active"
    leave_out: tuple[str, ...] = ()
    """Reasons left out (a redrive leaves out `delivery_limit` unless asked for it)."""
    leave_out_in_doubt: bool = False
    """Letters in doubt left out: taken for a re-publishing that was never recorded — they may
    have gone out (`IN_DOUBT`). A redrive leaves them out unless it takes re-published letters
    too, as a single re-publish of one asks for `force`."""


class Group(msgspec.Struct, frozen=True, kw_only=True):
    """Letters that failed for one cause (service.grouping); the API answers with these."""

    group: Annotated[str, msgspec.Meta(description="the cause's fingerprint")]
    task: str | None
    error_type: str | None
    reason: str
    queue: str
    count: int
    first_seen: datetime
    last_seen: datetime
    example_id: str
    example_message: str | None


class Page(msgspec.Struct, frozen=True, kw_only=True):
    items: list[DeadLetter]
    next_cursor: str | None


_SUMMARY = [column for column in dead_letters.c if column.name != "body"]


_EQUALS = {
    "queue": dead_letters.c.queue,
    "reason": dead_letters.c.reason,
    "task": dead_letters.c.task_name,
    "error_type": dead_letters.c.error_type,
    "group": dead_letters.c.fingerprint,
    "task_id": dead_letters.c.task_id,
}
_c = dead_letters.c
_STATUS: dict[str, list[Any]] = {
    "active": [_c.discarded_at.is_(None), _c.republish_count == 0, _c.superseded_at.is_(None)],
    "republished": [_c.discarded_at.is_(None), _c.republish_count > 0],
    "discarded": [_c.discarded_at.is_not(None)],
    "superseded": [_c.discarded_at.is_(None), _c.superseded_at.is_not(None)],
    "redrivable": [_c.discarded_at.is_(None), _c.superseded_at.is_(None)],
    "all": [],
}
IN_DOUBT = and_(_c.republished_at.is_not(None), _c.republish_count == 0)
"""Taken for a re-publishing (`claim`, `claim_for_redrive`) that was never recorded: it is going
out, or went out and its publisher stopped (or lost the confirm) before recording it. A letter
re-published before and in doubt again cannot be told from one re-published: it counts as
re-published."""


def in_doubt(letter: DeadLetter) -> bool:
    """`IN_DOUBT`, of a letter read."""
    return letter.republished_at is not None and letter.republish_count == 0


def _where(statement: Select[Any], filters: Filters) -> Select[Any]:
    conditions = [
        column == getattr(filters, name)
        for name, column in _EQUALS.items()
        if getattr(filters, name) is not None
    ]
    if filters.since is not None:
        conditions.append(_c.dead_at >= filters.since)
    if filters.until is not None:
        conditions.append(_c.dead_at < filters.until)
    conditions += _STATUS[filters.status]
    if filters.leave_out:
        conditions.append(_c.reason.not_in(filters.leave_out))
    if filters.leave_out_in_doubt:
        conditions.append(~IN_DOUBT)
    return statement.where(and_(*conditions)) if conditions else statement


_RECORD = ("id", "fingerprint", "republish_count", "superseded_at", "stored_at", "updated_at")
_INSERT = Bulk(lambda insert: insert(dead_letters), [*NewDeadLetter.__struct_fields__, *_RECORD])
"""A letter's fields as they come (`msgspec.structs.astuple`), then what storing adds."""


def insert_many(
    connection: Connection,
    letters: Sequence[NewDeadLetter],
    *,
    superseded: set[str],
) -> list[str]:
    """Store new records (one statement); returns their ids. A letter of a task that succeeded
    since (`superseded`) is history, not a failure."""
    now = utcnow()
    ids: list[str] = []
    rows: list[tuple[Any, ...]] = []
    # A batch's letters mostly share a cause: each cause is fingerprinted once.
    fingerprints: dict[tuple[str | None, ...], str] = {}
    for letter in letters:
        cause = (
            letter.task_name,
            letter.error_type or letter.reason,
            letter.error_message,
            letter.traceback,
        )
        group = fingerprints.get(cause)
        if group is None:
            group = fingerprints[cause] = fingerprint(*cause)
        record_id = new_id()
        ids.append(record_id)
        rows.append(
            (
                *msgspec.structs.astuple(letter),
                record_id,
                group,
                0,
                now if letter.task_id in superseded else None,
                now,
                now,
            )
        )
    _INSERT.execute(connection, rows)
    return ids


SUPERSEDE = (
    update(dead_letters)
    .where(dead_letters.c.task_id == bindparam("p_task_id"), dead_letters.c.superseded_at.is_(None))
    .values(superseded_at=bindparam("p_at"), updated_at=bindparam("p_at"))
)


def supersede_values(task_id: str, now: datetime) -> dict[str, Any]:
    """`SUPERSEDE`'s parameters."""
    return {"p_task_id": task_id, "p_at": now}


def supersede(connection: Connection, task_id: str) -> None:
    """The task succeeded after all: its letters are history, not failures."""
    connection.execute(SUPERSEDE, supersede_values(task_id, utcnow()))


def supersede_recent(connection: Connection, since: datetime) -> int:
    """Supersede the letters of tasks that succeeded since `since` and that are not yet (how many).

    A letter is superseded when it is stored after its task succeeded (`outcomes.letters_arrived`
    reads the run), or when the task succeeds after it was stored (`SUPERSEDE`, with the
    success). On PostgreSQL, under READ COMMITTED, the two can pass each other: the letter's
    transaction reads the run not yet succeeded, the success's statement finds no letter yet
    committed, and the letter stays active — counted as a failure, redrivable — for a task that
    succeeded. Maintenance settles such letters, driven by the runs that succeeded lately
    (`ix_task_runs_state_updated`)."""
    now = utcnow()
    succeeded = select(task_runs.c.task_id).where(
        task_runs.c.state == "SUCCESS", task_runs.c.updated_at >= since
    )
    result = connection.execute(
        update(dead_letters)
        .where(dead_letters.c.task_id.in_(succeeded), dead_letters.c.superseded_at.is_(None))
        .values(superseded_at=now, updated_at=now)
    )
    return int(result.rowcount)


def fill_failure(
    connection: Connection,
    task_id: str,
    *,
    error_type: str,
    message: str | None,
    traceback: str | None,
) -> None:
    """Give the task's letters that arrived before its failure was recorded that failure, and
    the group it makes: those that say none (`outcomes.letters_arrived`), and were not
    re-published since (a later attempt's failure is not theirs)."""
    c = dead_letters.c
    waiting = and_(c.task_id == task_id, c.error_type.is_(None), c.republish_count == 0)
    names = connection.execute(select(c.task_name).where(waiting).distinct()).scalars().all()
    for name in names:
        connection.execute(
            update(dead_letters)
            .where(waiting, c.task_name.is_(None) if name is None else c.task_name == name)
            .values(
                error_type=error_type,
                error_message=message,
                traceback=traceback,
                fingerprint=fingerprint(name, error_type, message, traceback),
            )
        )


def death_of(letter: NewDeadLetter) -> tuple[str, str, str, str]:
    """(task id, task name, reason, why) of a letter that names a task, for its run."""
    assert letter.task_id is not None
    return (letter.task_id, letter.task_name or "?", letter.reason, _death_message(letter))


def _death_message(letter: NewDeadLetter) -> str:
    if letter.reason == "delivery_limit":
        return (
            f"delivered more than the delivery limit allows from {letter.queue} without an "
            "outcome (the worker process died or lost its connection each time)"
        )
    if letter.reason == "expired":
        return f"expired in {letter.queue} before a worker took it"
    return f"{letter.reason} by {letter.queue}"


def get(
    connection: Connection,
    dead_letter_id: str,
    *,
    with_body: bool = True,
    body_limit: int | None = None,
) -> DeadLetter | None:
    """One letter; its body whole, its first `body_limit` bytes (and `body_size`), or none."""
    columns: list[Any] = list(dead_letters.c) if with_body else list(_SUMMARY)
    if with_body and body_limit is not None:
        columns = [
            *_SUMMARY,
            # SQLite's substr of an empty blob is NULL, which no letter's body is.
            func.coalesce(func.substr(_c.body, 1, body_limit), literal(b"")).label("body"),
            func.length(_c.body).label("body_size"),
        ]
    row = connection.execute(select(*columns).where(dead_letters.c.id == dead_letter_id)).first()
    return None if row is None else as_struct(row, DeadLetter)


def get_many(connection: Connection, ids: Sequence[str]) -> dict[str, DeadLetter]:
    """Several dead letters, bodies included, by id (missing ones are simply absent)."""
    rows = connection.execute(_GET_MANY(connection), {"ids": list(ids)}).all()
    letters = (as_struct(row, DeadLetter) for row in rows)
    return {letter.id: letter for letter in letters}


_GET_MANY = Keyed(lambda one_of: select(dead_letters).where(one_of(dead_letters.c.id, "ids")))


def _cursor(letter: DeadLetter) -> str:
    return cursors.encode(letter.dead_at, letter.id)


read_cursor = cursors.decode


def page(
    connection: Connection, filters: Filters, *, limit: int, cursor: str | None = None
) -> Page:
    """Newest first, `limit` at a time; `next_cursor` continues where this page ends."""
    statement = _where(select(*_SUMMARY), filters)
    if cursor is not None:
        statement = statement.where(cursors.before(_c.dead_at, _c.id, cursor))
    statement = statement.order_by(dead_letters.c.dead_at.desc(), dead_letters.c.id.desc())
    rows = connection.execute(statement.limit(limit + 1)).all()
    items = [as_struct(row, DeadLetter) for row in rows[:limit]]
    return Page(items=items, next_cursor=_cursor(items[-1]) if len(rows) > limit else None)


def matching(connection: Connection, filters: Filters) -> list[tuple[str, datetime | None]]:
    """The letters `filters` match, oldest first, each with its `republished_at` now."""
    statement = _where(select(dead_letters.c.id, dead_letters.c.republished_at), filters).order_by(
        dead_letters.c.dead_at, dead_letters.c.id
    )
    return [(str(row_id), at) for row_id, at in connection.execute(statement).all()]


def groups(connection: Connection, filters: Filters) -> list[Group]:
    c = dead_letters.c
    statement = _where(
        select(
            c.fingerprint,
            func.min(c.task_name).label("task_name"),
            func.min(c.error_type).label("error_type"),
            func.min(c.reason).label("reason"),
            func.min(c.queue).label("queue"),
            func.count().label("occurrences"),
            func.min(c.dead_at).label("first_seen"),
            func.max(c.dead_at).label("last_seen"),
            func.min(c.id).label("example_id"),
        ).group_by(c.fingerprint),
        filters,
    ).order_by(func.count().desc(), func.max(c.dead_at).desc())
    result = []
    for row in connection.execute(statement).all():
        example = connection.execute(
            select(c.error_message).where(c.id == row.example_id)
        ).scalar_one_or_none()
        result.append(
            Group(
                group=row.fingerprint,
                task=row.task_name,
                error_type=row.error_type,
                reason=row.reason,
                queue=row.queue,
                count=row.occurrences,
                first_seen=row.first_seen,
                last_seen=row.last_seen,
                example_id=row.example_id,
                example_message=example,
            )
        )
    return result


# One statement for the whole group, the ids one parameter: run as executemany, a row a
# parameter set, it cost 30 µs of CPU a letter on PostgreSQL (13 so) and 10-12 on SQLite (3-5).
# Counted once for each `p_at`: a record written again with the same stamp (its commit's answer
# lost, `AsyncStore.record`) finds it there, and changes nothing.
_REPUBLISHED = Keyed(
    lambda one_of: (
        update(dead_letters)
        .where(
            one_of(dead_letters.c.id, "p_ids"),
            dead_letters.c.republished_at.is_distinct_from(bindparam("p_at")),
        )
        .values(
            republish_count=dead_letters.c.republish_count + 1,
            republished_at=bindparam("p_at"),
            updated_at=bindparam("p_at"),
        )
    )
)


def mark_republished(
    connection: Connection, *dead_letter_ids: str, at: datetime | None = None
) -> None:
    """Each was re-published once more, `at` (now by default) — once, however often this is
    written with the same `at`: the stamp of one re-publishing, taken before the first attempt
    to record it. In id order: concurrent writers lock rows alike, and PostgreSQL looks up the
    keys of an `= ANY` array in order."""
    if dead_letter_ids:
        connection.execute(
            _REPUBLISHED(connection),
            {"p_ids": sorted(set(dead_letter_ids)), "p_at": at or utcnow()},
        )


def claim(connection: Connection, dead_letter_id: str, seen: datetime, at: datetime) -> bool:
    """Whether the letter is as it was read (`seen`: its `updated_at` then), taking it for one
    re-publishing `at`: its `updated_at` moves on, so that another request that read it at the
    same moment, and would publish it too, finds it changed; and its `republished_at` is `at`,
    so that one that reads it later is cautioned (`republish._cautions`) even if the
    re-publishing is never recorded."""
    result = connection.execute(
        update(dead_letters)
        .where(dead_letters.c.id == dead_letter_id, dead_letters.c.updated_at == seen)
        .values(updated_at=at, republished_at=at)
    )
    return bool(result.rowcount)


def claim_for_redrive(
    connection: Connection, redrive_id: str, ids: Sequence[str], at: datetime
) -> set[str]:
    """Of these letters of a redrive, those taken for one re-publishing `at`: pending in the job,
    neither discarded nor superseded, and not re-published — nor claimed — since the job read
    them: their `republished_at` still what its item saw (one store's values, whatever the clocks
    of the hosts that stamped them, and whenever their transactions committed), or none (never
    re-published, and nobody's claim: a claim the job saw, given back since). A letter re-published
    before, claimed by another as the job read it and given back since, is not taken: its stamp is
    again the one before, which the job cannot tell from a later re-publishing's; the job fails it
    saying so, and the letter stays as it was, to re-publish. One statement, so that of two
    redrives (or a redrive and a single re-publish) reading the same letters at once, one
    publishes each; `republished_at` marks the claim, as `claim` does. The ids are one parameter
    (`Keyed`), in order, as `mark_republished` takes them."""
    rows = connection.execute(
        _CLAIM_FOR_REDRIVE(connection),
        {"p_ids": sorted(set(ids)), "p_redrive_id": redrive_id, "p_at": at},
    )
    return {str(row_id) for row_id in rows.scalars()}


_CLAIM_FOR_REDRIVE = Keyed(
    lambda one_of: (
        update(dead_letters)
        .where(
            one_of(dead_letters.c.id, "p_ids"),
            dead_letters.c.discarded_at.is_(None),
            dead_letters.c.superseded_at.is_(None),
            exists().where(
                redrive_items.c.redrive_id == bindparam("p_redrive_id"),
                redrive_items.c.dead_letter_id == dead_letters.c.id,
                redrive_items.c.state == "pending",
                or_(
                    dead_letters.c.republished_at.is_(None),
                    redrive_items.c.seen_republished_at == dead_letters.c.republished_at,
                ),
            ),
        )
        .values(updated_at=bindparam("p_at"), republished_at=bindparam("p_at"))
        .returning(dead_letters.c.id)
    )
)


def release_claims(
    connection: Connection, claims: Sequence[tuple[str, datetime | None]], at: datetime
) -> None:
    """Give back the claims made `at` (`claim_for_redrive`) on letters that certainly did not go
    out: each `republished_at` as it was before, (id, that) — unless changed since."""
    if not claims:
        return
    connection.execute(
        update(dead_letters)
        .where(dead_letters.c.id == bindparam("p_id"), dead_letters.c.republished_at == at)
        .values(republished_at=bindparam("p_before")),
        [{"p_id": id_, "p_before": before} for id_, before in claims],
    )


def discard(connection: Connection, dead_letter_id: str, *, force: bool = False) -> bool:
    """Whether the letter was discarded now: not discarded before, and — unless `force` — not in
    doubt (`IN_DOUBT`: its re-publishing may be under way, and a letter both discarded and sent
    back to its queue would say it was not)."""
    now = utcnow()
    statement = update(dead_letters).where(
        dead_letters.c.id == dead_letter_id, dead_letters.c.discarded_at.is_(None)
    )
    if not force:
        statement = statement.where(~IN_DOUBT)
    result = connection.execute(statement.values(discarded_at=now, updated_at=now))
    return bool(result.rowcount)


def discard_matching(
    connection: Connection, filters: Filters, *, force: bool = False, expected: int | None = None
) -> int:
    """Discard the letters `filters` match — those in doubt only if `force` (`discard`). With
    `expected` (the count the operator confirmed), a Conflict, nothing discarded, when they are
    another number now: letters of the group died, or were handled, since it was counted."""
    now = utcnow()
    ids = select(dead_letters.c.id)
    if not force:
        filters = msgspec.structs.replace(filters, leave_out_in_doubt=True)
    result = connection.execute(
        update(dead_letters)
        .where(dead_letters.c.id.in_(_where(ids, filters).scalar_subquery()))
        .where(dead_letters.c.discarded_at.is_(None))
        .values(discarded_at=now, updated_at=now)
    )
    discarded = int(result.rowcount or 0)
    if expected is not None and discarded != expected:
        raise Conflict(not_as_counted(discarded, expected, "discarded"))
    return discarded


def not_as_counted(matched: int, expected: int, done: str) -> str:
    return (
        f"{matched} letter(s) match now, not the {expected} counted and confirmed: nothing was "
        f"{done}. Count again, and confirm what is there now"
    )


def purge(
    connection: Connection,
    *,
    dead_before: datetime,
    handled_before: datetime,
    limit: int,
) -> int:
    """Delete what retention allows, `limit` letters at most (a transaction holds SQLite's one
    writer: all at once, 200,000 letters held uploads for 3.7 s): any letter older than
    `dead_before`, and re-published or discarded ones whose handling is older than
    `handled_before` — a letter in doubt (`IN_DOUBT`) is not known to be handled, and is kept as
    an unhandled one. Never a letter a redrive still has to re-publish (pending in a job running
    or cancelling): the job failed it as an unknown letter. Returns how many; `limit` means there
    may be more."""
    c = dead_letters.c
    due = or_(
        c.dead_at < dead_before,
        and_(c.discarded_at.is_not(None), c.discarded_at < handled_before),
        and_(c.republish_count > 0, c.republished_at < handled_before),
    )
    awaited = (
        select(redrive_items.c.dead_letter_id)
        .join(redrives, redrives.c.id == redrive_items.c.redrive_id)
        .where(redrives.c.state.in_(("running", "cancelling")), redrive_items.c.state == "pending")
    )
    chosen = select(c.id).where(due, c.id.not_in(awaited)).limit(limit).scalar_subquery()
    # `due` again on the row deleted: PostgreSQL rechecks only that on a row another
    # transaction changed meanwhile.
    result = connection.execute(delete(dead_letters).where(c.id.in_(chosen), due))
    return int(result.rowcount or 0)


def probe_writable(connection: Connection) -> None:
    """Fails unless the store takes writes (an UPDATE of nothing still takes the write lock)."""
    connection.execute(update(dead_letters).where(dead_letters.c.id.is_(None)).values(id=None))


def count(connection: Connection, filters: Filters) -> int:
    """How many letters match `filters`."""
    statement = _where(select(func.count()).select_from(dead_letters), filters)
    return int(connection.execute(statement).scalar_one())


def left_out(connection: Connection, filters: Filters) -> dict[str, int]:
    """What `filters` match but leave out, by why: reasons left out (`leave_out`), letters
    re-published before (status `active`), letters in doubt (`leave_out_in_doubt`). A redrive's
    dry run tells these."""
    found: dict[str, int] = {}
    for reason in filters.leave_out:
        if filters.reason in (None, reason):
            found[reason] = count(
                connection, msgspec.structs.replace(filters, leave_out=(), reason=reason)
            )
    if filters.status == "active":
        found["republished"] = count(
            connection, msgspec.structs.replace(filters, status="republished")
        )
    if filters.leave_out_in_doubt:
        found["in_doubt"] = in_doubt_count(connection, filters)
    return {why: n for why, n in found.items() if n}


def in_doubt_count(connection: Connection, filters: Filters) -> int:
    """How many letters `filters` match but for `leave_out_in_doubt`, that are in doubt."""
    unfiltered = msgspec.structs.replace(filters, leave_out_in_doubt=False)
    statement = _where(select(func.count()).select_from(dead_letters), unfiltered)
    return int(connection.execute(statement.where(IN_DOUBT)).scalar_one())


def by_queue(connection: Connection, filters: Filters) -> dict[str, int]:
    """How many letters match `filters`, per queue they died in."""
    statement = _where(select(_c.queue, func.count()).group_by(_c.queue), filters)
    return {str(queue): int(count) for queue, count in connection.execute(statement).all()}


def counts(connection: Connection) -> list[tuple[str, str, int]]:
    """(reason, queue, how many) of the letters neither discarded nor superseded."""
    c = dead_letters.c
    rows = connection.execute(
        select(c.reason, c.queue, func.count())
        .where(c.discarded_at.is_(None), c.superseded_at.is_(None))
        .group_by(c.reason, c.queue)
    ).all()
    return [(row[0], row[1], int(row[2])) for row in rows]


def latest_for_task(connection: Connection, task_id: str) -> str | None:
    """The newest dead letter of a task that was not discarded: the message a retry re-publishes."""
    c = dead_letters.c
    found = connection.execute(
        select(c.id)
        .where(c.task_id == task_id, c.discarded_at.is_(None))
        .order_by(c.dead_at.desc(), c.stored_at.desc())
        .limit(1)
    ).scalar_one_or_none()
    return None if found is None else str(found)

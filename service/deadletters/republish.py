"""Re-publishing a dead letter: the same message, a fresh delivery on its original queue.

Headers are cleaned as RabbitMQ and Celery need (docs/architecture.md, "Platform facts"): death
headers stripped (RabbitMQ < 4 reads them, and its cycle detection drops messages that seem to
loop), the retry budget reset, a Celery `expires` in the past dropped; lineage is added. The
message goes through the default exchange to the queue named by x-death[0], so it lands exactly
where it died whatever the bindings.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import aio_pika
import msgspec
from loguru import logger
from sqlalchemy import Connection

from service import telemetry
from service.broker.publisher import FRAME_ERRORS, NAME_BYTES, TaskPublisher, Unwritable
from service.deadletters.headers import from_json
from service.deadletters.parsing import REPUBLISH_COUNT_HEADER
from service.errors import (
    BadRequest,
    Caution,
    Conflict,
    DatabaseError,
    NotFound,
    NotSent,
    Unroutable,
)
from service.store import dead_letters, task_runs
from service.store.database import RECORD_PATIENCE, AsyncStore
from service.store.dead_letters import DeadLetter
from service.store.schema import utcnow
from service.task_contract import ATTEMPT_HEADERS, DEATH_HEADERS, REPUBLISHED_FROM_HEADER
from service.topology import WORK_QUEUES

_PROPERTIES = (
    "content_type",
    "content_encoding",
    "priority",
    "correlation_id",
    "reply_to",
    "message_id",
    "timestamp",
    "type",
    "app_id",
)
"""The properties a message goes out with again. Not `user_id`: RabbitMQ checks it against the
user publishing, and one naming another closes the channel (406 PRECONDITION_FAILED) — every
publish then in flight on the API's channel, uploads' included, would fail with it. The letter's
record keeps it."""


class Republished(msgspec.Struct, frozen=True, kw_only=True):
    dead_letter_id: str
    queue: str
    task_id: str | None
    republish_count: int
    recorded: Annotated[
        bool,
        msgspec.Meta(
            description="false: the message went out, but the store had not recorded it yet "
            "(it is still tried); do not re-publish it again"
        ),
    ] = True


def _expired(value: Any, now: datetime) -> bool:
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            return False
        return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)) <= now
    return isinstance(value, datetime) and value <= now


def cleaned_headers(letter: DeadLetter, now: datetime | None = None) -> dict[str, Any]:
    """The letter's headers for a fresh delivery: no death headers (RabbitMQ < 4 reads them), no
    state of the attempts before (a failure still to record, the store's waits, the last error:
    carried, the first of them made the worker fail the task again without running it), the
    retries reset, an `expires` in the past dropped, and the lineage."""
    now = now or datetime.now(UTC)
    headers = {
        key: value
        for key, value in from_json(letter.headers).items()
        if key not in DEATH_HEADERS
        and key not in ATTEMPT_HEADERS
        and not key.startswith(("x-first-death-", "x-last-death-"))
    }
    if letter.task_name is not None:
        headers["retries"] = 0
        if _expired(headers.get("expires"), now):
            headers["expires"] = None
    headers[REPUBLISHED_FROM_HEADER] = letter.id
    headers[REPUBLISH_COUNT_HEADER] = letter.republish_count + 1
    return headers


FIELD_NAME_LIMIT = 128
"""Bytes of a header's name AMQP 0-9-1 allows. RabbitMQ passes longer ones on; pamqp, writing
the message again, cut them to this silently — two names alike in their first 128 bytes became
one, the other's value lost."""


def _long_name(table: Any) -> str | None:
    """A header name, at any depth of `table`, longer than FIELD_NAME_LIMIT bytes (looked for
    without recursion: a table nested hundreds deep is for pamqp to refuse, a 409)."""
    values = [table]
    while values:
        value = values.pop()
        if isinstance(value, dict):
            for name in value:
                if len(str(name).encode("utf-8", "surrogatepass")) > FIELD_NAME_LIMIT:
                    return str(name)
            values.extend(value.values())
        elif isinstance(value, list):
            values.extend(value)
    return None


def message_for(letter: DeadLetter) -> aio_pika.Message:
    """The letter as a message again; a Conflict when its headers cannot go out as they came."""
    properties = from_json(letter.properties)
    headers = cleaned_headers(letter)
    if (name := _long_name(headers)) is not None:
        raise Conflict(
            f"dead letter {letter.id} cannot be re-published as it came: its header "
            f"{name[:40]!r}… is longer than the {FIELD_NAME_LIMIT} bytes AMQP allows a name, "
            "and would go out cut short"
        )
    return aio_pika.Message(
        letter.body,
        headers=headers,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        **{name: properties[name] for name in _PROPERTIES if properties.get(name) is not None},
    )


def mark_handled(
    connection: Connection, letters: Sequence[DeadLetter], seen: dict[str, datetime], at: datetime
) -> None:
    """The letters were re-published `at`: count each, and its task is PENDING again — unless
    its run changed since `seen` (read before publishing): then the worker was quicker, and its
    story is the newer one. Written again with the same arguments (`AsyncStore.record`, when
    the answer to its commit was lost), it changes nothing more."""
    dead_letters.mark_republished(connection, *(letter.id for letter in letters), at=at)
    task_runs.requeue(
        connection,
        *(
            task_runs.Requeue(
                letter.task_id, letter.task_name or "?", letter.queue, seen.get(letter.task_id)
            )
            for letter in letters
            if letter.task_id is not None
        ),
    )


def run_versions(connection: Connection, letters: Iterable[DeadLetter]) -> dict[str, datetime]:
    """The letters' runs as they are before re-publishing (see `mark_handled`)."""
    task_ids = {letter.task_id for letter in letters if letter.task_id is not None}
    return task_runs.versions(connection, task_ids)


def check(letter: DeadLetter | None, dead_letter_id: str) -> DeadLetter:
    """The letter, if it exists and was not discarded; and only into docproc's own work queues:
    `x-death` is what the message says of itself, and a forged one could name any queue."""
    if letter is None:
        raise NotFound(f"no dead letter {dead_letter_id}")
    if letter.discarded_at is not None:
        raise Conflict(f"dead letter {dead_letter_id} was discarded")
    if letter.queue not in WORK_QUEUES:
        raise Conflict(
            f"dead letter {dead_letter_id} died in {letter.queue!r}, not in one of docproc's work "
            f"queues ({', '.join(WORK_QUEUES)}); re-publish it there only by naming it: "
            f"?target={letter.queue}"
        )
    return letter


def _cautions(letter: DeadLetter) -> list[str]:
    """Why re-publishing this letter may not be what the operator means."""
    found = []
    if letter.republish_count:
        when = letter.republished_at.isoformat() if letter.republished_at else "before"
        times = "once" if letter.republish_count == 1 else f"{letter.republish_count} times"
        found.append(f"it was re-published {times} already, last at {when}")
    elif letter.republished_at is not None:  # claimed, its re-publishing not (yet) recorded
        found.append(
            f"it is being re-published, or was at {letter.republished_at.isoformat()} without "
            "the store recording it"
        )
    if letter.reason == "delivery_limit":
        found.append(
            "it died at the delivery limit: its message killed or lost a worker process at each "
            "delivery, and may do it again"
        )
    if letter.superseded_at is not None:
        found.append("its task succeeded since")
    return found


async def publish(
    publisher: TaskPublisher,
    letter: DeadLetter,
    queue: str | None = None,
    *,
    message: aio_pika.Message | None = None,
) -> None:
    """To the queue it died in (or `queue`), through the default exchange, confirmed; `message`
    when it was made already (`message_for`)."""
    # The operator's request's trace, linked to the trace the letter's message carried.
    with telemetry.linked_span(lambda: from_json(letter.headers), "dead letter re-published"):
        await publisher.publish(
            message or message_for(letter), routing_key=queue or letter.queue, exchange=""
        )


async def republish(
    store: AsyncStore,
    publisher: TaskPublisher,
    dead_letter_id: str,
    *,
    force: bool = False,
    target: str | None = None,
) -> Republished:
    """Publish the dead letter to its original queue (confirmed), then mark it re-published.

    Safe by default: a letter already re-published, one that died at the delivery limit, or one
    whose task succeeded since is a Conflict saying so, unless `force`; a letter that did not die
    in a docproc work queue goes only where `target` names.
    """
    size = len(target.encode("utf-8", "surrogatepass")) if target is not None else 0
    if size > NAME_BYTES:
        raise BadRequest(
            f"target is {size} bytes in UTF-8, more than the {NAME_BYTES} a queue name holds"
        )
    letter = await store.run(dead_letters.get, dead_letter_id)
    if target is None:
        letter = check(letter, dead_letter_id)
    elif letter is None or letter.discarded_at is not None:
        check(letter, dead_letter_id)
    assert letter is not None
    cautions = _cautions(letter)
    if cautions and not force:
        raise Caution(
            f"dead letter {dead_letter_id} was not re-published: {'; '.join(cautions)}",
            "Add ?force=true to re-publish it all the same",
        )
    message = message_for(letter)
    try:
        # What cannot be written as a message again is said before anything is done.
        message.properties.marshal()
    except FRAME_ERRORS as exc:
        said = "they nest too deep" if isinstance(exc, RecursionError) else str(exc)[:200]
        raise Conflict(
            f"dead letter {dead_letter_id} cannot be re-published: its headers or properties "
            f"cannot be written as AMQP again ({type(exc).__name__}: {said})"
        ) from None
    seen = await store.run(run_versions, [letter])
    # Two requests at once (a double click, a client's retry, two operators) both read the
    # letter before either marked it: only the first to claim it publishes.
    claimed = utcnow()
    try:
        taken = await store.write(dead_letters.claim, letter.id, letter.updated_at, claimed)
    except DatabaseError:
        # The claim may be committed, its answer lost: nothing went out, so it is given back
        # (else the letter is in doubt, and the operator's next try cautioned for nothing).
        await _give_back(store, letter, claimed)
        raise
    if not taken:
        raise Conflict(
            f"dead letter {dead_letter_id} was not re-published: it changed while this request "
            "read it (another request is re-publishing or changing it); read it again"
        )
    queue = target or letter.queue
    # A publish that fails may have gone out all the same (a confirm that never came): the
    # letter stays claimed, and the next request is cautioned. One that certainly did not (no
    # connection, a nack, returned, a frame that could not be written) gives its claim back:
    # the operator's next try is not cautioned as a re-published one.
    try:
        await publish(publisher, letter, queue, message=message)
    except (NotSent, Unroutable):
        await _give_back(store, letter, claimed)
        raise
    except Unwritable as exc:
        await _give_back(store, letter, claimed)
        raise Conflict(f"dead letter {dead_letter_id} was not re-published: {exc}") from None
    # Unmarked, the letter would look untouched, and a retried request would publish it again.
    at = max(utcnow(), claimed + timedelta(microseconds=1))  # a stamp of its own (`mark_handled`)
    recorded = True
    try:
        await store.record(RECORD_PATIENCE, mark_handled, [letter], seen, at)
    except DatabaseError as exc:
        # It went out: the answer says so (a 200, which no client retries), and the record is
        # still tried, behind the answer, for LATE_RECORD_PATIENCE.
        logger.bind(dead_letter_id=letter.id).warning(
            "dead letter {} was re-published but not recorded ({}); still trying", letter.id, exc
        )
        _record_later(store, letter, seen, at)
        recorded = False
    return Republished(
        dead_letter_id=letter.id,
        queue=queue,
        task_id=letter.task_id,
        republish_count=letter.republish_count + 1,
        recorded=recorded,
    )


LATE_RECORD_PATIENCE = 300.0
"""Seconds a re-publishing not recorded within its request is still tried, behind its answer."""
_late: set[asyncio.Task[None]] = set()


def _record_later(
    store: AsyncStore, letter: DeadLetter, seen: dict[str, datetime], at: datetime
) -> None:
    async def recording() -> None:
        try:
            await store.record(LATE_RECORD_PATIENCE, mark_handled, [letter], seen, at)
        except DatabaseError as exc:
            logger.bind(dead_letter_id=letter.id).error(
                "dead letter {} was re-published and never recorded ({}): it still looks untouched",
                letter.id,
                exc,
            )
        else:
            logger.bind(dead_letter_id=letter.id).info("dead letter {} recorded late", letter.id)

    task = asyncio.get_running_loop().create_task(recording(), name="late-record")
    _late.add(task)
    task.add_done_callback(_late.discard)


async def _give_back(store: AsyncStore, letter: DeadLetter, claimed: datetime) -> None:
    """Release the claim made `claimed` on a letter that certainly did not go out, if it was
    made; a store that cannot take it leaves the letter in doubt."""
    with contextlib.suppress(DatabaseError):
        await store.record(
            RECORD_PATIENCE,
            dead_letters.release_claims,
            [(letter.id, letter.republished_at)],
            claimed,
        )

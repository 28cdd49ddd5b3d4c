"""The dead-letter workflow: list, group, inspect, re-publish one, redrive many, discard."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Annotated, Any

import msgspec
from litestar import Response, delete, get, post
from litestar.di import NamedDependency, Provide
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromQuery, JSONBody, QueryParameter

from service.api.models import (
    Count,
    DeadLetterDetail,
    DeadLetterPage,
    DeadLetterSummary,
    Discarded,
    GroupList,
    RedriveList,
    RedriveOut,
    RedrivePreview,
    RedriveRequest,
)
from service.api.params import PathId, QueryText
from service.api.responses import errors
from service.api.services import PublisherDep, RedrivesDep, StoreDep
from service.api.tracebacks import relative_paths
from service.deadletters import republish as republishing
from service.deadletters.headers import plain
from service.deadletters.republish import Republished
from service.errors import BadRequest, Caution, Conflict, NotFound
from service.store import dead_letters, redrives
from service.store.dead_letters import DeadLetter, Filters, Status
from service.store.redrives import Redrive

TAGS = ["dead letters"]


def moment(name: str, value: datetime | None) -> datetime | None:
    """A time filter the store can hold: aware, in UTC, within years 1..9999 once converted."""
    if value is None:
        return None
    try:
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).astimezone(UTC)
    except (OverflowError, ValueError):
        raise BadRequest(f"{name}={value.isoformat()} is out of range") from None


def summary_of(letter: DeadLetter) -> DeadLetterSummary:
    return DeadLetterSummary(
        id=letter.id,
        reason=letter.reason,
        queue=letter.queue,
        task=letter.task_name,
        task_id=letter.task_id,
        error_type=letter.error_type,
        error_message=letter.error_message,
        group=letter.fingerprint,
        exchange=letter.exchange,
        routing_keys=letter.routing_keys,
        death_count=letter.death_count,
        first_death_at=letter.first_death_at,
        dead_at=letter.dead_at,
        retries=letter.retries,
        correlation_id=letter.correlation_id,
        republished_from=letter.republished_from,
        republish_count=letter.republish_count,
        republished_at=letter.republished_at,
        discarded_at=letter.discarded_at,
        superseded_at=letter.superseded_at,
    )


BODY_PREVIEW = 64 * 1024
"""Bytes of a dead letter's body its detail carries; the whole body is a download of its own."""


def detail_of(letter: DeadLetter) -> DeadLetterDetail:
    size = letter.body_size if letter.body_size is not None else len(letter.body)
    truncated = size > len(letter.body)
    try:
        text: str | None = letter.body.decode("utf-8")
    except UnicodeDecodeError as exc:
        # A preview may cut a character in two: still text if that is the only fault.
        cut_short = truncated and exc.start >= len(letter.body) - 3
        text = letter.body[: exc.start].decode("utf-8") if cut_short else None
    return DeadLetterDetail(
        **msgspec.structs.asdict(summary_of(letter)),
        args=plain(letter.args),
        kwargs=plain(letter.kwargs),
        root_id=letter.root_id,
        parent_id=letter.parent_id,
        traceback=relative_paths(letter.traceback),
        headers=plain(letter.headers),
        properties=plain(letter.properties),
        content_type=letter.content_type,
        content_encoding=letter.content_encoding,
        body_size=size,
        body_truncated=truncated,
        body_base64=base64.b64encode(letter.body).decode("ascii"),
        body_text=text,
        problems=letter.problems,
    )


def reason_filter(value: str | None) -> str | None:
    if value is not None and value not in dead_letters.REASONS:
        raise BadRequest(
            f"reason={value[:80]!r} is not a reason a message dies for; one of "
            f"{', '.join(dead_letters.REASONS)}"
        )
    return value


async def filters_from_query(
    *,
    queue: QueryText = None,
    reason: QueryText = None,
    task: QueryText = None,
    error_type: QueryText = None,
    group: QueryText = None,
    task_id: QueryText = None,
    since: FromQuery[datetime | None] = None,
    until: FromQuery[datetime | None] = None,
    status: FromQuery[Status] = "active",
) -> Filters:
    """The list filters of the dead-letter endpoints, from the query string, checked."""
    return Filters(
        queue=queue,
        reason=reason_filter(reason),
        task=task,
        error_type=error_type,
        group=group,
        task_id=task_id,
        since=moment("since", since),
        until=moment("until", until),
        status=status,
    )


FILTERS = {"filters": Provide(filters_from_query)}


def redrive_of(job: Redrive) -> RedriveOut:
    return RedriveOut(
        id=job.id,
        state=job.state,
        filters=job.filters,
        rate=job.rate,
        matched=job.matched,
        published=job.published,
        failed=job.failed,
        last_error=job.last_error,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
    )


@get(
    "/dead-letters",
    dependencies=FILTERS,
    responses=errors(400, 503),
    tags=TAGS,
    summary="Dead letters, newest first",
    description="Filters combine with AND; `status` is `active` (neither re-published, "
    "discarded nor superseded: the default), `republished`, `discarded`, `superseded` (its task "
    "succeeded since), `redrivable` (active or re-published) or `all`. Pass `next_cursor` back "
    "as `cursor` for the next page.",
)
async def list_dead_letters(
    *,
    store: StoreDep,
    filters: NamedDependency[Filters],
    cursor: QueryText = None,
    limit: Annotated[int, QueryParameter(ge=1, le=500)] = 50,
) -> DeadLetterPage:
    if cursor is not None and dead_letters.read_cursor(cursor) is None:
        raise BadRequest(f"cursor {cursor[:80]!r} is not a next_cursor this API gave out")
    found = await store.run(dead_letters.page, filters, limit=limit, cursor=cursor)
    return DeadLetterPage(
        items=[summary_of(letter) for letter in found.items], next_cursor=found.next_cursor
    )


@get(
    "/dead-letters/groups",
    dependencies=FILTERS,
    responses=errors(400, 503),
    tags=TAGS,
    summary="Failures grouped by task, error type and fingerprint",
    description="A fingerprint folds numbers, ids, paths and quoted values out of the error "
    "message and keeps the innermost stack frames, so one cause is one group. Redrive a group "
    'with `POST /dead-letters/redrive {"group": ...}`, discard it with '
    "`DELETE /dead-letters/groups/{group}`.",
)
async def list_groups(*, store: StoreDep, filters: NamedDependency[Filters]) -> GroupList:
    found = await store.run(dead_letters.groups, filters)
    return GroupList(items=found)


@delete(
    "/dead-letters/groups/{group:str}",
    status_code=200,
    responses=errors(400, 401, 403, 409, 503),
    tags=TAGS,
    summary="Discard every active dead letter of a group",
    description="Letters in doubt — taken for a re-publishing that was never recorded: it may be "
    "under way, or it went out and its publisher stopped — are left as they are and counted in "
    "`in_doubt`, unless `force=true`: a letter both discarded and back in its queue would say it "
    "was not. With `expected` (the count the operator confirmed), 409 and nothing discarded when "
    "the group holds another number of such letters now.",
)
async def discard_group(
    group: PathId,
    store: StoreDep,
    force: FromQuery[bool] = False,
    expected: Annotated[int | None, QueryParameter(ge=0)] = None,
) -> Discarded:
    filters = Filters(group=group)
    count = await store.write(
        dead_letters.discard_matching, filters, force=force, expected=expected
    )
    in_doubt = await store.run(dead_letters.in_doubt_count, filters)
    return Discarded(discarded=count, in_doubt=in_doubt)


@get(
    "/dead-letters/{dead_letter_id:str}",
    responses=errors(404, 503),
    tags=TAGS,
    summary="One dead letter: raw body, headers, properties, why it died, the failure",
)
async def dead_letter(dead_letter_id: PathId, store: StoreDep) -> DeadLetterDetail:
    letter = await store.run(dead_letters.get, dead_letter_id, body_limit=BODY_PREVIEW)
    if letter is None:
        raise NotFound(f"no dead letter {dead_letter_id}")
    return detail_of(letter)


@get(
    "/dead-letters/{dead_letter_id:str}/body",
    responses=errors(404, 503),
    tags=TAGS,
    summary="A dead letter's body, whole, byte for byte (a download)",
    media_type="application/octet-stream",
)
async def dead_letter_body(dead_letter_id: PathId, store: StoreDep) -> Response[bytes]:
    letter = await store.run(dead_letters.get, dead_letter_id)
    if letter is None:
        raise NotFound(f"no dead letter {dead_letter_id}")
    return Response(
        letter.body,
        media_type="application/octet-stream",  # never rendered: it came from anyone
        headers={
            "Content-Disposition": f'attachment; filename="dead-letter-{letter.id}.bin"',
            "X-Content-Type-Options": "nosniff",
            "X-Docproc-Content-Type": (letter.content_type or "")
            if (letter.content_type or "").isprintable()
            else "",
        },
    )


@post(
    "/dead-letters/{dead_letter_id:str}/republish",
    status_code=200,
    responses=errors(400, 401, 403, 404, 409, 502, 503),
    tags=TAGS,
    summary="Re-publish one dead letter to its original queue",
    description="Published with a confirm; death headers stripped, retries reset, a stale "
    "`expires` dropped, lineage added. The record stays, marked re-published. 409 when the "
    "letter was re-published already, died at the delivery limit (it killed workers) or its "
    "task succeeded since — unless `force=true`; and when it did not die in a docproc work "
    "queue — unless `target` names the queue; and when its headers cannot be written as AMQP "
    "again. 400 when `target` is longer than a queue name (255 bytes of UTF-8). 502 when "
    "RabbitMQ returns the message.",
)
async def republish_one(
    dead_letter_id: PathId,
    store: StoreDep,
    publisher: PublisherDep,
    force: FromQuery[bool] = False,
    target: QueryText = None,
) -> Republished:
    return await republishing.republish(
        store, publisher, dead_letter_id, force=force, target=target
    )


@delete(
    "/dead-letters/{dead_letter_id:str}",
    status_code=204,
    responses=errors(401, 403, 404, 409, 503),
    tags=TAGS,
    summary="Discard a dead letter (409 if it was discarded already, or is in doubt)",
    description="409 when the letter was discarded already; and when it is in doubt — taken for "
    "a re-publishing that was never recorded: it may be under way, or it went out and its "
    "publisher stopped — unless `force=true`.",
)
async def discard(dead_letter_id: PathId, store: StoreDep, force: FromQuery[bool] = False) -> None:
    for _ in range(3):  # a letter in doubt whose claim is given back meanwhile: try again
        if await store.write(dead_letters.discard, dead_letter_id, force=force):
            return
        letter = await store.run(dead_letters.get, dead_letter_id, with_body=False)
        if letter is None:
            raise NotFound(f"no dead letter {dead_letter_id}")
        if letter.discarded_at is not None:
            when = letter.discarded_at.isoformat()
            raise Conflict(f"dead letter {dead_letter_id} was discarded already, at {when}")
        if letter.republished_at is not None and dead_letters.in_doubt(letter):
            raise Caution(
                f"dead letter {dead_letter_id} was taken for re-publishing at "
                f"{letter.republished_at.isoformat()}, which was never recorded: it may be going "
                "out now, or it went out and its publisher stopped",
                "force=true discards it all the same",
            )
    raise Conflict(f"dead letter {dead_letter_id} kept changing; try again")


REDRIVE_FILTERS = ("queue", "reason", "task", "error_type", "group", "since", "until")
LAST_DELIVERY = ("delivery_limit",)


@post(
    "/dead-letters/redrive",
    status_code=202,
    responses={
        200: ResponseSpec(
            data_container=RedrivePreview,
            description="a dry run: what would be re-published",
            generate_examples=False,
        ),
        **errors(400, 401, 403, 409, 503),
    },
    tags=TAGS,
    summary="Re-publish many dead letters, by filter, at a chosen rate",
    description="Needs at least one filter, or `all: true`. Matches active dead letters now (and "
    "re-published ones with `include_republished`), then re-publishes them in the background "
    "at `rate` per second; progress is at the `Location`, and DELETE there cancels. With "
    "`dry_run: true` it answers 200 with what would be re-published, per group and queue, and "
    "publishes nothing.",
)
async def start_redrive(
    data: JSONBody[RedriveRequest], store: StoreDep, redrives_runner: RedrivesDep
) -> Response[RedriveOut | RedrivePreview]:
    if not data.all and all(getattr(data, name) is None for name in REDRIVE_FILTERS):
        raise BadRequest(
            f"a redrive needs at least one filter — {', '.join(REDRIVE_FILTERS)} — or "
            '"all": true to re-publish every active dead letter'
        )
    filters = Filters(
        queue=data.queue,
        reason=reason_filter(data.reason),
        task=data.task,
        error_type=data.error_type,
        group=data.group,
        since=moment("since", data.since),
        until=moment("until", data.until),
        status="redrivable" if data.include_republished else "active",
        # Nor one in doubt — taken for a re-publishing never recorded: it may have gone out —
        # unless re-published letters are taken too (a single re-publish asks for force).
        leave_out_in_doubt=not data.include_republished,
        # Safe by default, as a single re-publish is: a message that killed or lost a worker
        # process at each delivery would do it again, DOCPROC_DELIVERY_LIMIT times.
        leave_out=(
            () if data.include_delivery_limit or data.reason == "delivery_limit" else LAST_DELIVERY
        ),
    )
    if data.dry_run:
        found = await store.run(dead_letters.groups, filters)
        queues = await store.run(dead_letters.by_queue, filters)
        preview = RedrivePreview(
            matched=sum(group.count for group in found),
            groups=found,
            queues=[Count(name=name, count=count) for name, count in sorted(queues.items())],
            left_out=[
                Count(name=name, count=count)
                for name, count in (await store.run(dead_letters.left_out, filters)).items()
            ],
        )
        return Response(preview, status_code=200)
    job = await store.write(redrives.create, filters, data.rate, expected=data.expected)
    redrives_runner.wake.set()
    return Response(
        redrive_of(job),
        status_code=202,
        headers={"Location": f"/dead-letters/redrives/{job.id}"},
    )


@get("/dead-letters/redrives", responses=errors(503), tags=TAGS, summary="Redrive jobs")
async def list_redrives(store: StoreDep) -> RedriveList:
    return RedriveList(items=[redrive_of(job) for job in await store.run(redrives.listing)])


@get(
    "/dead-letters/redrives/{redrive_id:str}",
    responses=errors(404, 503),
    tags=TAGS,
    summary="A redrive's progress",
)
async def redrive(redrive_id: PathId, store: StoreDep) -> RedriveOut:
    job = await store.run(redrives.get, redrive_id)
    if job is None:
        raise NotFound(f"no redrive {redrive_id}")
    return redrive_of(job)


@delete(
    "/dead-letters/redrives/{redrive_id:str}",
    status_code=200,
    responses=errors(401, 403, 404, 503),
    tags=TAGS,
    summary="Cancel a redrive; what it did not re-publish yet stays untouched",
)
async def cancel_redrive(redrive_id: PathId, store: StoreDep) -> RedriveOut:
    job = await store.write(redrives.cancel, redrive_id)
    if job is None:
        raise NotFound(f"no redrive {redrive_id}")
    return redrive_of(job)


ROUTES: list[Any] = [
    list_dead_letters,
    list_groups,
    discard_group,
    list_redrives,
    redrive,
    cancel_redrive,
    start_redrive,
    dead_letter,
    dead_letter_body,
    republish_one,
    discard,
]

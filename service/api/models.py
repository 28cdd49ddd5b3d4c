"""Request and response models of the HTTP API (README.md, "Using it"), kept apart from the store's
rows. Inputs are closed: unknown fields are an error."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec

from service.store.dead_letters import Group
from service.store.search import SearchHit
from service.store.task_runs import RetryRecord, StepTime, TaskState

TASK_ID = "3f0c9a4e-6a57-4c1e-9d1e-2c2b6f1f7a10"
DOCUMENT_ID = "b1f4c2de-0d4a-4b8e-8f5e-5a9e3c7d2b11"
DEAD_LETTER_ID = "9d2e1f30-7b6c-4a5d-8e9f-0a1b2c3d4e5f"

Rate = Annotated[
    float,
    msgspec.Meta(
        ge=0.1,
        le=10_000,
        description="messages per second: from 0.1 (one every ten seconds) to 10,000",
        examples=[100.0],
    ),
]
"""A redrive's rate. At least 0.1: a job runs to its end before its API process takes the next
(oldest first), and a rate of 1e-300 — accepted once — held every later job for ever."""


class Problem(msgspec.Struct, kw_only=True):
    """An error, as RFC 9457 problem details (`application/problem+json`)."""

    status: int
    title: str
    detail: str | None = None
    type: str = "about:blank"


class Accepted(msgspec.Struct, kw_only=True):
    document_id: Annotated[str, msgspec.Meta(examples=[DOCUMENT_ID])]
    task_id: Annotated[str, msgspec.Meta(examples=[TASK_ID])]
    status: Annotated[TaskState, msgspec.Meta(examples=["PENDING"])]
    queued: Annotated[
        bool,
        msgspec.Meta(
            description="whether RabbitMQ confirmed the task message already; if not (the "
            "broker away, blocked past 5 s, or the message returned), the document is accepted "
            "all the same and published as soon as the broker takes it again"
        ),
    ]
    duplicate_of: Annotated[
        str | None,
        msgspec.Meta(
            description="an earlier document with the same content (SHA-256), if any: this one "
            "is processed too, and search shows their hits once"
        ),
    ] = None


class Progress(msgspec.Struct, kw_only=True):
    step: Annotated[str | None, msgspec.Meta(examples=["extract"])]
    steps_done: int
    steps_total: int
    percent: Annotated[float, msgspec.Meta(examples=[50.0])]
    step_times: Annotated[
        list[StepTime] | None,
        msgspec.Meta(
            description="each step of a finished document task: when it began and its seconds"
        ),
    ] = None


class TaskError(msgspec.Struct, kw_only=True):
    type: Annotated[str | None, msgspec.Meta(examples=["CorruptFile"])]
    message: str | None
    traceback: str | None = None


class Timings(msgspec.Struct, kw_only=True):
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    elapsed: Annotated[float | None, msgspec.Meta(description="seconds since start, or of the run")]
    next_retry_at: datetime | None


class TaskStatus(msgspec.Struct, kw_only=True):
    task_id: Annotated[str, msgspec.Meta(examples=[TASK_ID])]
    task: Annotated[str, msgspec.Meta(examples=["docproc.document.process"])]
    state: Annotated[TaskState, msgspec.Meta(examples=["PROCESSING"])]
    progress: Progress
    retries: int
    retry_history: list[RetryRecord]
    error: TaskError | None
    timings: Timings
    document_id: str | None
    queue: str | None
    worker: str | None
    correlation_id: str | None


class TaskStatuses(msgspec.Struct, kw_only=True):
    """Many tasks' statuses at once, in the order asked; `unknown`: ids with no record."""

    statuses: list[TaskStatus]
    unknown: list[str]


class DocumentOut(msgspec.Struct, kw_only=True):
    id: Annotated[str, msgspec.Meta(examples=[DOCUMENT_ID])]
    filename: Annotated[str, msgspec.Meta(examples=["report.pdf"])]
    content_type: str | None
    detected_type: Annotated[str | None, msgspec.Meta(examples=["pdf"])]
    size: int
    sha256: str
    title: str | None
    author: Annotated[
        str | None, msgspec.Meta(description="as the document names it", examples=["Ann Lee"])
    ]
    authored_at: Annotated[
        datetime | None,
        msgspec.Meta(description="when the document says it was created (not `created_at`)"),
    ]
    modified_at: Annotated[
        datetime | None, msgspec.Meta(description="when the document says it was last modified")
    ]
    language: Annotated[
        str | None,
        msgspec.Meta(
            description="ISO 639-1 code of the text's language; null when the text is too short "
            "or its language unclear",
            examples=["en"],
        ),
    ]
    encoding: str | None
    page_count: int | None
    char_count: int | None
    chunk_count: int | None
    task_id: str
    state: TaskState | None
    correlation_id: str | None
    created_at: Annotated[datetime, msgspec.Meta(description="when docproc accepted it")]
    processed_at: datetime | None


class DocumentText(msgspec.Struct, kw_only=True):
    document_id: str
    text: str


class SearchResults(msgspec.Struct, kw_only=True):
    items: list[SearchHit]
    complete: Annotated[
        bool,
        msgspec.Meta(
            description="false when more chunks matched than a search ranks (`window`): the "
            "hits are the best of the newest `window` matches; more words, a phrase or a filter "
            "rank every match"
        ),
    ] = True
    window: Annotated[
        int,
        msgspec.Meta(description="matches a search ranks at most (DOCPROC_SEARCH_WINDOW)"),
    ]
    next_cursor: None = None


class QueueStats(msgspec.Struct, kw_only=True):
    name: str
    messages: int
    ready: int
    unacknowledged: int
    consumers: int


class Throughput(msgspec.Struct, kw_only=True):
    processed: int
    failed: int


class DeadLetterCounts(msgspec.Struct, kw_only=True):
    total: int
    by_reason: dict[str, int]
    by_queue: dict[str, int]


class Stats(msgspec.Struct, kw_only=True):
    states: dict[str, int]
    queues: list[QueueStats]
    dead_letters: DeadLetterCounts
    last_minute: Throughput
    last_hour: Throughput
    reconciled: Annotated[
        int,
        msgspec.Meta(
            description="times beat re-published a document whose confirmed task message "
            "was lost (a purged queue, a foreign consumer)"
        ),
    ]
    warnings: list[str]


class DeadLetterSummary(msgspec.Struct, kw_only=True):
    id: Annotated[str, msgspec.Meta(examples=[DEAD_LETTER_ID])]
    reason: Annotated[str, msgspec.Meta(examples=["rejected"])]
    queue: Annotated[str, msgspec.Meta(examples=["document_processing"])]
    task: Annotated[str | None, msgspec.Meta(examples=["docproc.document.process"])]
    task_id: str | None
    error_type: Annotated[str | None, msgspec.Meta(examples=["CorruptFile"])]
    error_message: str | None
    group: Annotated[str, msgspec.Meta(description="fingerprint of the failure")]
    exchange: str | None
    routing_keys: list[str]
    death_count: int
    first_death_at: datetime | None
    dead_at: datetime
    retries: int | None
    correlation_id: str | None
    republished_from: str | None
    republish_count: int
    republished_at: datetime | None
    discarded_at: datetime | None
    superseded_at: Annotated[
        datetime | None,
        msgspec.Meta(description="when its task succeeded after all: history, not a failure"),
    ] = None


class DeadLetterDetail(DeadLetterSummary, kw_only=True):
    args: Any
    kwargs: Any
    root_id: str | None
    parent_id: str | None
    traceback: str | None
    headers: dict[str, Any]
    properties: dict[str, Any]
    content_type: str | None
    content_encoding: str | None
    body_size: Annotated[int, msgspec.Meta(description="the body's size in bytes")]
    body_truncated: Annotated[
        bool,
        msgspec.Meta(
            description="the body is longer than the preview below: download it whole from "
            "GET /dead-letters/{id}/body"
        ),
    ]
    body_base64: Annotated[
        str, msgspec.Meta(description="the body (its first 64 KiB), byte for byte")
    ]
    body_text: Annotated[
        str | None, msgspec.Meta(description="the same, as text, when it is UTF-8")
    ]
    problems: Annotated[
        list[str] | None,
        msgspec.Meta(description="what could not be stored as it came (raw or sanitised)"),
    ]


class DeadLetterPage(msgspec.Struct, kw_only=True):
    items: list[DeadLetterSummary]
    next_cursor: str | None


class GroupList(msgspec.Struct, kw_only=True):
    items: list[Group]
    next_cursor: None = None


FilterText = Annotated[str, msgspec.Meta(max_length=255, pattern=r"^[^\x00-\x1f\x7f]+$")]


class RedriveRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Which dead letters to re-publish — at least one filter (combined with AND), or `all` —
    and how fast. Active letters only, unless `include_republished`; not those that died at the
    delivery limit, unless `include_delivery_limit` or `reason` names it; `dry_run` only
    counts."""

    queue: FilterText | None = None
    reason: Annotated[FilterText | None, msgspec.Meta(examples=["rejected"])] = None
    task: FilterText | None = None
    error_type: FilterText | None = None
    group: FilterText | None = None
    since: datetime | None = None
    until: datetime | None = None
    all: Annotated[
        bool, msgspec.Meta(description="every active dead letter, when no filter is given")
    ] = False
    dry_run: Annotated[
        bool, msgspec.Meta(description="count what would be re-published; publish nothing")
    ] = False
    include_republished: Annotated[
        bool,
        msgspec.Meta(
            description="letters re-published before are taken too, and letters in doubt (taken "
            "for a re-publishing that was never recorded: they may have gone out)"
        ),
    ] = False
    include_delivery_limit: Annotated[
        bool,
        msgspec.Meta(
            description="letters that died at the delivery limit — their message killed or lost "
            "a worker process at each delivery — are taken too (they are when `reason` names "
            "`delivery_limit`)"
        ),
    ] = False
    rate: Rate = 10.0
    expected: (
        Annotated[
            int,
            msgspec.Meta(
                ge=0,
                description="the number of letters a dry run counted and the operator confirmed: "
                "when the filters match another number now (letters died or were handled since), "
                "409, and nothing starts",
            ),
        ]
        | None
    ) = None


class Count(msgspec.Struct, kw_only=True):
    name: str
    count: int


class RedrivePreview(msgspec.Struct, kw_only=True):
    """What a redrive with these filters would re-publish (a dry run): nothing was published."""

    matched: int
    groups: list[Group]
    queues: list[Count]
    left_out: Annotated[
        list[Count],
        msgspec.Meta(
            description="letters the filters match that the redrive leaves out, by why: "
            "`delivery_limit` (add `include_delivery_limit`), `republished` (add "
            "`include_republished`), `in_doubt` — taken for a re-publishing that was never "
            "recorded, so it may have gone out (add `include_republished`)"
        ),
    ]


class RedriveOut(msgspec.Struct, kw_only=True):
    id: str
    state: Annotated[
        Literal["running", "cancelling", "cancelled", "finished"],
        msgspec.Meta(examples=["running"]),
    ]
    filters: dict[str, Any]
    rate: float
    matched: int
    published: int
    failed: int
    last_error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class RedriveList(msgspec.Struct, kw_only=True):
    items: list[RedriveOut]
    next_cursor: None = None


class Discarded(msgspec.Struct, kw_only=True):
    discarded: int
    in_doubt: int = 0
    """Letters of the group left as they were: their re-publishing may be under way, or was never
    recorded (`?force=true` discards them too)."""


class Health(msgspec.Struct, kw_only=True):
    status: Literal["ok"] = "ok"


class Readiness(msgspec.Struct, kw_only=True):
    status: Literal["ready", "not ready"]
    broker: str
    store: str

"""Indexing: one stored document made searchable — load, extract, chunk, index. The worker's
document task runs this; it knows nothing of Celery, so it can be called (and benchmarked)
directly. The pipeline (bytes in, text out) is service.pipeline."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import msgspec
from loguru import logger

from service import pipeline, tessdata
from service.errors import DocumentNotFound, TooLarge
from service.settings import ENVIRONMENT, Settings
from service.store import outcomes, task_runs
from service.store.database import Store
from service.store.documents import Extraction
from service.store.schema import utcnow
from service.store.task_runs import Start, StepTime

STEPS = ("load", "extract", "chunk", "index")
_LIMITS = (
    "max_inflated_bytes",
    "max_chars",
    "max_pages",
    "max_pixels",
    "max_chunks",
    "max_cpu_seconds",
)


def pipeline_limits(settings: Settings) -> pipeline.Limits:
    """The pipeline's limits as configured, each named by its environment variable."""
    return pipeline.Limits(
        **{name: getattr(settings, name) for name in _LIMITS},
        names={name: ENVIRONMENT[name] for name in _LIMITS},
    )


def _nothing(step: str) -> None:
    """No progress to record."""


def _no_times() -> list[StepTime]:
    return []


def index_document(
    store: Store,
    document_id: str,
    settings: Settings,
    begin: Callable[[str], None] = _nothing,
    *,
    start: Start | None = None,
    step_times: Callable[[], Sequence[StepTime]] = _no_times,
) -> dict[str, Any]:
    """Make one document searchable; `begin(step)` is told as each step starts. A task's run
    (`start`) is recorded as started with the load and as succeeded, with `step_times()`, with
    the outcome — or alone, when the document had been processed already: two writes, each one
    statement on PostgreSQL (`Store.run_alone`).

    Raises the pipeline's permanent errors (unsupported, corrupt, too large, empty, not found)
    and the store's transient ones; a document already processed is left as it is.
    """
    begin("load")
    if start is not None:  # started as its load begins, the step its start is written in
        start = msgspec.structs.replace(start, at=utcnow())
    upload = store.run_alone(outcomes.document_loaded, document_id, start)
    if upload is None:
        raise DocumentNotFound(f"no document {document_id} in the store")
    if upload.processed:
        # A second delivery of a task whose outcome is committed (a publish whose confirm
        # was lost, then swept): at-least-once delivery, processed once.
        logger.info("document {} is already processed; duplicate delivery skipped", document_id)
        if start is not None:
            store.run(outcomes.task_succeeded, start.task_id, step_times())
        return {"document_id": document_id, "skipped": "already processed"}
    if upload.refused is not None:
        # A copy of the task's message (`task_runs.STARTED`): of a run that ended — its failure
        # is recorded, its dead letter stored or on its way; run again, it made a second — or
        # of a run another delivery is at work on, which ran side by side with it.
        skipped = (
            f"its task is {upload.refused}"
            if upload.refused in task_runs.ENDED
            else "another delivery of its task is at work on it"
        )
        logger.warning("document {}: {}; a copy of its message skipped", document_id, skipped)
        return {"document_id": document_id, "skipped": skipped}
    if len(upload.content) > settings.max_upload_bytes:
        raise TooLarge(
            f"{len(upload.content)} bytes, more than DOCPROC_MAX_UPLOAD_BYTES="
            f"{settings.max_upload_bytes}"
        )

    limits = pipeline_limits(settings)
    begin("extract")
    extracted = pipeline.extract(
        upload.content, upload.filename, limits, tessdata.configured(settings)
    )

    begin("chunk")
    chunks = pipeline.chunk_text(
        extracted.text, size=settings.chunk_size, overlap=settings.chunk_overlap, limits=limits
    )

    begin("index")
    extraction = Extraction(
        detected_type=extracted.detected_type,
        title=extracted.title,
        encoding=extracted.encoding,
        page_count=extracted.page_count,
        text=extracted.text,
        chunks=chunks,
        author=extracted.author,
        authored_at=extracted.created,
        modified_at=extracted.modified,
        language=extracted.language,
    )
    task_id = None if start is None else start.task_id
    stored = store.run_alone(
        outcomes.document_stored, document_id, extraction, task_id, step_times()
    )
    if not stored:
        logger.info("document {} was processed meanwhile; duplicate delivery skipped", document_id)
        return {"document_id": document_id, "skipped": "already processed"}
    return {
        "document_id": document_id,
        "chunks": len(chunks),
        "document_type": extracted.detected_type,
        "bytes": len(upload.content),
    }

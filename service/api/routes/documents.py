"""Documents in, text and search hits out."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from dataclasses import dataclass
from typing import Annotated, Any

from litestar import Request, Response, get, post
from litestar.datastructures import UploadFile
from litestar.openapi.spec import Example
from litestar.params import FromPath, MultipartBody, QueryParameter
from loguru import logger
from sqlalchemy import Connection

from service import pipeline
from service.api.correlation import correlation_id_of
from service.api.models import Accepted, DocumentOut, DocumentText, SearchHit, SearchResults
from service.api.responses import errors
from service.api.security import require_api_key
from service.api.services import PublisherDep, StoreDep
from service.broker.publisher import Publisher, task_message
from service.errors import BrokerUnavailable, EmptyDocument, NotFound, TooLarge
from service.settings import Settings
from service.store import documents, search, task_runs
from service.store.database import AsyncStore
from service.tasks import PROCESS_DOCUMENT
from service.topology import DOCUMENT_QUEUE

MULTIPART_OVERHEAD = 64 * 1024
"""Room for the multipart framing around the file when the body size is checked while it streams."""


@dataclass
class Upload:
    file: UploadFile


def accept(
    connection: Connection,
    *,
    document_id: str,
    task_id: str,
    filename: str,
    content_type: str | None,
    content: bytes,
    sha256: str,
    correlation_id: str,
) -> None:
    """The document and its PENDING task run, in one transaction: durable before the 202."""
    documents.insert_document(
        connection,
        document_id=document_id,
        filename=filename,
        content_type=content_type,
        content=content,
        sha256=sha256,
        task_id=task_id,
        correlation_id=correlation_id,
    )
    task_runs.record_pending(
        connection,
        task_id,
        PROCESS_DOCUMENT,
        document_id=document_id,
        queue=DOCUMENT_QUEUE,
        correlation_id=correlation_id,
    )


def _inspect(content: bytes, filename: str) -> str:
    """Hash the upload and refuse what the pipeline could never read (415) — off the event loop."""
    if not content:
        raise EmptyDocument("the uploaded file is empty")
    pipeline.detect_type(content, filename)
    return hashlib.sha256(content).hexdigest()


async def publish_document_task(
    publisher: Publisher, store: AsyncStore, document_id: str, task_id: str, correlation_id: str
) -> bool:
    """Publish the document's task; True once confirmed and recorded. A failure leaves the
    document for beat's sweeper, which publishes what was accepted but never confirmed."""
    try:
        await publisher.publish(
            task_message(
                PROCESS_DOCUMENT,
                task_id,
                kwargs={"document_id": document_id},
                correlation_id=correlation_id,
            ),
            routing_key=DOCUMENT_QUEUE,
        )
    except BrokerUnavailable as exc:
        logger.warning("document {} accepted but not queued yet: {}", document_id, exc)
        return False
    await store.write(documents.mark_published, document_id)
    return True


def upload_handler(settings: Settings) -> Any:
    """POST /documents, with the body limit taken from the settings."""

    @post(
        "/documents",
        status_code=202,
        guards=[require_api_key],
        request_max_body_size=settings.max_upload_bytes + MULTIPART_OVERHEAD,
        summary="Upload a document",
        description="Multipart upload of one file in the field `file`. The document and its task "
        "are stored before the 202 goes out; the task status is at the `Location`.",
        responses=errors(400, 401, 403, 413, 415, 422, 503),
        tags=["documents"],
    )
    async def upload(
        request: Request[Any, Any, Any],
        data: MultipartBody[Upload],
        store: StoreDep,
        publisher: PublisherDep,
    ) -> Response[Accepted]:
        upload = data.file
        content = await upload.read()
        if len(content) > settings.max_upload_bytes:
            raise TooLarge(
                f"{len(content)} bytes, more than the {settings.max_upload_bytes} allowed "
                "(DOCPROC_MAX_UPLOAD_BYTES)"
            )
        filename = upload.filename or "upload"
        sha256 = await asyncio.to_thread(_inspect, content, filename)
        document_id, task_id = str(uuid.uuid4()), str(uuid.uuid4())
        correlation_id = correlation_id_of(request.scope)
        await store.write(
            accept,
            document_id=document_id,
            task_id=task_id,
            filename=filename,
            content_type=upload.content_type or None,
            content=content,
            sha256=sha256,
            correlation_id=correlation_id,
        )
        queued = await publish_document_task(publisher, store, document_id, task_id, correlation_id)
        logger.bind(document_id=document_id, task_id=task_id, size=len(content)).info(
            "document accepted"
        )
        return Response(
            Accepted(document_id=document_id, task_id=task_id, status="PENDING", queued=queued),
            status_code=202,
            headers={"Location": f"/tasks/{task_id}/status"},
        )

    return upload


def _document_with_state(connection: Connection, document_id: str) -> DocumentOut | None:
    document = documents.get(connection, document_id)
    if document is None:
        return None
    run = task_runs.get(connection, document.task_id)
    return DocumentOut(
        id=document.id,
        filename=document.filename,
        content_type=document.content_type,
        detected_type=document.detected_type,
        size=document.size,
        sha256=document.sha256,
        title=document.title,
        encoding=document.encoding,
        page_count=document.page_count,
        char_count=document.char_count,
        chunk_count=document.chunk_count,
        task_id=document.task_id,
        state=run.state if run else None,
        correlation_id=document.correlation_id,
        created_at=document.created_at,
        processed_at=document.processed_at,
    )


@get(
    "/documents/{document_id:str}",
    responses=errors(404, 503),
    tags=["documents"],
    summary="A document's metadata and state",
)
async def document(document_id: FromPath[str], store: StoreDep) -> DocumentOut:
    found = await store.run(_document_with_state, document_id)
    if found is None:
        raise NotFound(f"no document {document_id}")
    return found


@get(
    "/documents/{document_id:str}/text",
    responses=errors(404, 503),
    tags=["documents"],
    summary="A document's extracted text",
)
async def document_text(document_id: FromPath[str], store: StoreDep) -> DocumentText:
    text = await store.run(documents.get_text, document_id)
    if text is None:
        exists = await store.run(documents.get, document_id)
        raise NotFound(
            f"document {document_id} has no text yet" if exists else f"no document {document_id}"
        )
    return DocumentText(document_id=document_id, text=text)


@get(
    "/search",
    responses=errors(400, 503),
    tags=["search"],
    summary="Full-text search",
    description="Chunks holding every word of `q`, best first (bm25 on SQLite, ts_rank on "
    "PostgreSQL), each with a snippet where matches are [bracketed].",
)
async def search_documents(
    store: StoreDep,
    q: Annotated[
        str,
        QueryParameter(min_length=1, max_length=500, examples=[Example(value="lighthouse keeper")]),
    ],
    limit: Annotated[int, QueryParameter(ge=1, le=100)] = 10,
) -> SearchResults:
    hits = await store.run(search.search, q, limit)
    return SearchResults(
        items=[
            SearchHit(
                document_id=hit.document_id,
                filename=hit.filename,
                title=hit.title,
                position=hit.position,
                score=hit.score,
                snippet=hit.snippet,
            )
            for hit in hits
        ]
    )

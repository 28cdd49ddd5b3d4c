"""Documents in, text and search hits out."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Annotated, Any

from litestar import Request, Response, get, post
from litestar.datastructures import UploadFile
from litestar.openapi.spec import Example
from litestar.params import FromPath, MultipartBody, QueryParameter
from loguru import logger
from sqlalchemy import Connection

from service.api.correlation import correlation_id_of
from service.api.models import Accepted, DocumentOut, DocumentText, SearchHit, SearchResults
from service.api.responses import errors
from service.api.security import require_api_key
from service.api.services import IntakeDep, StoreDep
from service.errors import BadRequest, NotFound, TooLarge
from service.intake import Upload, inspect
from service.settings import Settings
from service.store import documents, search, task_runs

MULTIPART_OVERHEAD = 64 * 1024
"""Room for the multipart framing around the file when the body size is checked while it streams."""


@dataclass
class UploadForm:
    file: UploadFile


IDEMPOTENCY_KEY = "Idempotency-Key"


def _idempotency_key(request: Request[Any, Any, Any]) -> str | None:
    key = request.headers.get(IDEMPOTENCY_KEY)
    if key is None:
        return None
    if not 1 <= len(key) <= 255 or not key.isprintable():
        raise BadRequest(f"{IDEMPOTENCY_KEY} must be 1 to 255 printable characters")
    return key


def upload_handler(settings: Settings) -> Any:
    """POST /documents, with the body limit taken from the settings."""

    @post(
        "/documents",
        status_code=202,
        guards=[require_api_key],
        request_max_body_size=settings.max_upload_bytes + MULTIPART_OVERHEAD,
        summary="Upload a document",
        description="Multipart upload of one file in the field `file`. The document and its task "
        "are stored before the 202 goes out; the task status is at the `Location`. With an "
        "`Idempotency-Key` header, the same key within 24 h answers with the same document and "
        "task (header `Idempotent-Replayed: true`), and 409 for other content.",
        responses=errors(400, 401, 403, 409, 413, 415, 422, 503),
        tags=["documents"],
    )
    async def upload(
        request: Request[Any, Any, Any],
        data: MultipartBody[UploadForm],
        intake: IntakeDep,
    ) -> Response[Accepted]:
        key = _idempotency_key(request)
        upload = data.file
        content = await upload.read()
        if len(content) > settings.max_upload_bytes:
            raise TooLarge(
                f"{len(content)} bytes, more than the {settings.max_upload_bytes} allowed "
                "(DOCPROC_MAX_UPLOAD_BYTES)"
            )
        filename = upload.filename or "upload"
        sha256 = await asyncio.to_thread(inspect, content, filename)
        receipt = await intake.submit(
            Upload(
                filename=filename,
                content_type=upload.content_type or None,
                content=content,
                sha256=sha256,
                correlation_id=correlation_id_of(request.scope),
                idempotency_key=key,
            )
        )
        logger.bind(
            document_id=receipt.document_id,
            task_id=receipt.task_id,
            size=len(content),
            replayed=receipt.replayed,
        ).info("document accepted")
        headers = {"Location": f"/tasks/{receipt.task_id}/status"}
        if receipt.replayed:
            headers["Idempotent-Replayed"] = "true"
        return Response(
            Accepted(
                document_id=receipt.document_id,
                task_id=receipt.task_id,
                status="PENDING",
                queued=receipt.queued,
            ),
            status_code=202,
            headers=headers,
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

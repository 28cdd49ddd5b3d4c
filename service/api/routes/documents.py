"""Documents in, text and search hits out."""

from __future__ import annotations

import asyncio
import contextlib
import re
import unicodedata
from datetime import UTC, datetime
from typing import Annotated, Any, get_args

from litestar import Request, Response, get, post
from litestar.di import NamedDependency, Provide
from litestar.openapi.spec import Example
from litestar.params import QueryParameter
from loguru import logger
from sqlalchemy import Connection

from service.api.correlation import correlation_id_of
from service.api.models import Accepted, DocumentOut, DocumentText, SearchResults
from service.api.params import MAX_LENGTH, SEARCH_LENGTH, PathId
from service.api.problems import UPLOAD
from service.api.responses import errors
from service.api.services import IntakeDep, SettingsDep, StoreDep
from service.api.uploads import UploadOperation, file_of
from service.errors import BadRequest, DocprocError, NotFound, TooLarge
from service.indexing import pipeline_limits
from service.intake import Upload, inspect_upload
from service.pipeline import DocumentType
from service.search_syntax import parse
from service.settings import Settings
from service.store import documents, search, task_runs
from service.store.database import LONG_READERS
from service.store.documents import Document
from service.store.task_runs import TaskRun

MULTIPART_OVERHEAD = 64 * 1024
"""Room for the multipart framing around the file when the body size is checked while it streams."""


IDEMPOTENCY_KEY = "Idempotency-Key"
MAX_FILENAME = 1024
MAX_CONTENT_TYPE = 255


_UNSAFE_CATEGORIES = frozenset({"Cc", "Cs", "Zl", "Zp"})
"""Controls (NUL, newline, DEL…), lone surrogates and line or paragraph separators."""
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
"""Embeddings, overrides and isolates: a name that shows as something else ("a\u202etxt.exe"
reads "aexe.txt")."""


def _filename(given: str | None) -> str:
    """The upload's file name as the store keeps it (a label, never a path). Spaces of every
    kind and joiners are a name's own — a Mac writes U+202F before "AM" in a time, Persian names
    hold U+200C — where `str.isprintable` refused them as control characters."""
    name = given or "upload"
    if any(ch in _BIDI_CONTROLS or unicodedata.category(ch) in _UNSAFE_CATEGORIES for ch in name):
        raise BadRequest(
            "the file name holds control characters (NUL, newline, bidirectional overrides…)"
        )
    if len(name) > MAX_FILENAME:
        raise BadRequest(f"the file name is {len(name)} characters, at most {MAX_FILENAME}")
    return name


def _idempotency_key(request: Request[Any, Any, Any]) -> str | None:
    key = request.headers.get(IDEMPOTENCY_KEY)
    if key is None:
        return None
    # A field value's surrounding whitespace is not part of it (RFC 9110 5.5): servers strip
    # what leads, and "K1 " was a key other than "K1" — a second document, not a 409.
    key = key.strip(" \t")
    if not 1 <= len(key) <= 255 or not key.isprintable():
        raise BadRequest(f"{IDEMPOTENCY_KEY} must be 1 to 255 printable characters")
    return key


def upload_handler(settings: Settings) -> Any:
    """POST /documents, with the body limit taken from the settings."""
    limits = pipeline_limits(settings)

    @post(
        "/documents",
        status_code=202,
        request_max_body_size=settings.max_upload_bytes + MULTIPART_OVERHEAD,
        summary="Upload a document",
        description="Multipart upload of one file in the field `file`. The document and its task "
        "are stored before the 202 goes out; the task status is at the `Location`. With an "
        "`Idempotency-Key` header, the same key within 24 h answers with the same document and "
        "task (header `Idempotent-Replayed: true`), and 409 for other content.",
        responses=errors(400, 401, 403, 409, 413, 415, 422, 503),
        tags=["documents"],
        operation_class=UploadOperation,
        opt={UPLOAD: True},
    )
    async def upload(request: Request[Any, Any, Any], intake: IntakeDep) -> Response[Accepted]:
        key = _idempotency_key(request)
        upload = await file_of(request)
        content = upload.content
        if len(content) > settings.max_upload_bytes:
            raise TooLarge(
                f"{len(content)} bytes, more than the {settings.max_upload_bytes} allowed "
                "(DOCPROC_MAX_UPLOAD_BYTES)"
            )
        filename = _filename(upload.filename)
        if upload.content_type and (
            len(upload.content_type) > MAX_CONTENT_TYPE or not upload.content_type.isprintable()
        ):
            raise BadRequest(
                f"the file's content type must be printable and at most {MAX_CONTENT_TYPE} "
                "characters"
            )
        sha256 = await inspect_upload(content, filename, limits)
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
                duplicate_of=receipt.duplicate_of,
            ),
            status_code=202,
            headers=headers,
        )

    return upload


def document_with_state(connection: Connection, document_id: str) -> DocumentOut | None:
    document = documents.get(connection, document_id)
    if document is None:
        return None
    return document_out(document, task_runs.get(connection, document.task_id))


def document_out(document: Document, run: TaskRun | None) -> DocumentOut:
    """The document as the API shows it, in the state of `run` (its task's run, read with it)."""
    return DocumentOut(
        id=document.id,
        filename=document.filename,
        content_type=document.content_type,
        detected_type=document.detected_type,
        size=document.size,
        sha256=document.sha256,
        title=document.title,
        author=document.author,
        authored_at=document.authored_at,
        modified_at=document.modified_at,
        language=document.language,
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
async def document(document_id: PathId, store: StoreDep) -> DocumentOut:
    found = await store.read(document_with_state, document_id)
    if found is None:
        raise NotFound(f"no document {document_id}")
    return found


@get(
    "/documents/{document_id:str}/text",
    responses=errors(404, 503),
    tags=["documents"],
    summary="A document's extracted text",
)
async def document_text(document_id: PathId, store: StoreDep) -> DocumentText:
    text = await store.run(documents.get_text, document_id)
    if text is None:
        exists = await store.run(documents.get, document_id)
        raise NotFound(
            f"document {document_id} has no text yet" if exists else f"no document {document_id}"
        )
    return DocumentText(document_id=document_id, text=text)


MAX_CONCURRENT_SEARCHES = LONG_READERS
"""Searches one API process runs at once, each on a thread of the store's long reads; more wait
their turn. No other request waits for them: they have no thread of theirs to take."""
_searches = asyncio.Semaphore(MAX_CONCURRENT_SEARCHES)


async def _disconnected(request: Request[Any, Any, Any]) -> None:
    """Returns when the client goes away (ASGI's http.disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


DOCUMENT_TYPES: tuple[str, ...] = get_args(DocumentType)
_ISO_639_1 = re.compile(r"[a-z]{2}")


async def search_filters(
    *,
    document_type: Annotated[
        str | None,
        QueryParameter(
            name="type",
            max_length=MAX_LENGTH,
            description="only documents of this detected type: " + ", ".join(DOCUMENT_TYPES),
            examples=[Example(value="pdf")],
        ),
    ] = None,
    language: Annotated[
        str | None,
        QueryParameter(
            max_length=MAX_LENGTH,
            description="only documents whose text is in this language (ISO 639-1)",
            examples=[Example(value="en")],
        ),
    ] = None,
    since: Annotated[
        str | None,
        QueryParameter(
            max_length=MAX_LENGTH,
            description="only documents dated at or after this ISO 8601 date or date and time "
            "(UTC when it names no zone): their own modification time, else their own creation "
            "time, else when docproc accepted them",
            examples=[Example(value="2024-05-01"), Example(value="2024-05-01T12:00:00Z")],
        ),
    ] = None,
) -> search.Filters:
    """The search filters from the query string, each bad value a 400 that says what is allowed."""
    if document_type is not None and document_type not in DOCUMENT_TYPES:
        raise BadRequest(
            f"type={document_type[:40]!r} is not a document type; one of "
            f"{', '.join(DOCUMENT_TYPES)}"
        )
    if language is not None:
        language = language.lower()
        if not _ISO_639_1.fullmatch(language):
            raise BadRequest(
                f"language={language[:40]!r} is not an ISO 639-1 code (two letters: en, de, ja)"
            )
    return search.Filters(
        detected_type=document_type, language=language, since=_moment("since", since)
    )


def _moment(name: str, value: str | None) -> datetime | None:
    """An ISO 8601 date (midnight UTC) or date and time (UTC when it names no zone)."""
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
        return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).astimezone(UTC)
    except ValueError:
        raise BadRequest(
            f"{name}={value[:40]!r} is not an ISO 8601 date or date and time; write it as "
            "2024-05-01, 2024-05-01T12:00:00Z or 2024-05-01T14:00:00+02:00"
        ) from None
    except OverflowError:
        raise BadRequest(f"{name}={value[:40]!r} is out of range once in UTC") from None


@get(
    "/search",
    responses=errors(400, 503),
    tags=["search"],
    summary="Full-text search",
    dependencies={"filters": Provide(search_filters)},
    description="Chunks that match `q`, best first (bm25 on SQLite, ts_rank on PostgreSQL), "
    "each with a snippet where matches are [bracketed]. Syntax: words (all of them), "
    '`"a phrase"`, `storm OR gale`, `-excluded`, `prefix*`; at most 16 terms. A search is '
    "stopped after 5 s, or as soon as its client goes away. A query that matches more chunks "
    "than `window` (DOCPROC_SEARCH_WINDOW, 10,000) ranks the newest `window` of them and says "
    "`complete: false`. Filters, combined with AND: "
    "`type` (the detected type), `language` (ISO 639-1, as `GET /documents/{id}` shows it) and "
    "`since`, which keeps documents dated at or after it: a document's date is its own "
    "`modified_at`, else its own `authored_at`, else when docproc accepted it (`created_at`).",
)
async def search_documents(
    *,
    request: Request[Any, Any, Any],
    store: StoreDep,
    settings: SettingsDep,
    filters: NamedDependency[search.Filters],
    q: Annotated[
        str,
        QueryParameter(
            min_length=1, max_length=SEARCH_LENGTH, examples=[Example(value="lighthouse keeper")]
        ),
    ],
    limit: Annotated[int, QueryParameter(ge=1, le=100)] = 10,
) -> SearchResults:
    query = parse(q)
    cancel = search.Cancel()
    async with _searches:
        searching = asyncio.ensure_future(
            store.long_read(
                search.search_collapsed,
                query,
                limit,
                filters=filters,
                cancel=cancel,
                window=settings.search_window,
            )
        )
        leaving = asyncio.ensure_future(_disconnected(request))
        try:
            await asyncio.wait({searching, leaving}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            leaving.cancel()
        if not searching.done():
            cancel.set()
            if cancel.backend_pid is not None:
                with contextlib.suppress(DocprocError):
                    await store.run(search.cancel_backend, cancel.backend_pid)
            with contextlib.suppress(DocprocError):
                await searching
            logger.info("search cancelled: its client went away")
        found = searching.result()
    return SearchResults(
        items=found.hits,
        complete=found.complete,
        window=settings.search_window,
    )

"""The console's pages: server-rendered HTML over the same store functions and conversions the
JSON API answers with. A page's live part is the same template rendered alone (`?part=live`),
which the page's script fetches again every few seconds."""

from __future__ import annotations

import base64
from typing import Annotated, Any
from urllib.parse import urlsplit

from litestar import Request, Response, get, post
from litestar.di import NamedDependency
from litestar.enums import RequestEncodingType
from litestar.exceptions import HTTPException
from litestar.params import Body, QueryParameter
from litestar.response import Redirect, Template
from sqlalchemy import Connection

from service.api.console import session
from service.api.params import MAX_LENGTH, PRINTABLE, SEARCH_LENGTH, PathId, QueryText
from service.api.problems import on_docproc_error, on_http_exception, on_unexpected
from service.api.routes.dead_letters import (
    BODY_PREVIEW,
    FILTERS,
    detail_of,
    redrive_of,
    summary_of,
)
from service.api.routes.documents import DOCUMENT_TYPES, document_out
from service.api.routes.tasks import current_stats, status_of
from service.api.security import valid_key
from service.api.services import ManagementDep, StoreDep
from service.errors import BadRequest, DocprocError, NotFound
from service.store import dead_letters, documents, redrives, task_runs
from service.store.dead_letters import REASONS, STATUSES, Filters
from service.store.documents import Document
from service.store.task_runs import STATES, TaskRun, TaskState
from service.topology import DEAD_LETTER_QUEUE, WORK_QUEUES

PAGE_SIZE = 50
FINAL = frozenset({"SUCCESS", "DEAD", "REVOKED"})
SECURITY_HEADERS = {
    # Every asset comes from this server: nothing loads from anywhere else, nothing runs inline.
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
    "frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
Part = Annotated[str | None, QueryParameter(pattern="^live$")]
StateQuery = Annotated[TaskState | None, QueryParameter(name="state")]
"""A task state to list (`state` itself is a name Litestar keeps for the app's state)."""
NextPath = Annotated[str | None, QueryParameter(name="next", max_length=2048)]


def render(
    request: Request[Any, Any, Any],
    template: str,
    *,
    status_code: int = 200,
    **context: Any,
) -> Template:
    """A page (or its live part) with what every page needs: the CSRF token, the sign-out."""
    token, new_cookie = session.csrf_of(request)
    settings = session.settings_of(request)
    return Template(
        template_name=template,
        context={
            "csrf_token": token,
            "signed_in": bool(settings.api_keys) and not session.needs_sign_in(request),
            "keys_set": bool(settings.api_keys),
            "management_url": request.app.state.services.management.url,
            "path": request.url.path,
            **context,
        },
        status_code=status_code,
        headers=SECURITY_HEADERS,
        cookies=[new_cookie] if new_cookie else [],
    )


def page_or_part(name: str, part: str | None) -> str:
    return f"_{name}.html" if part else f"{name}.html"


async def sign_in_first(request: Request[Any, Any, Any]) -> Response[Any] | None:
    """Pages need a session when keys are set: to the login page, and back here after."""
    if session.needs_sign_in(request):
        if request.query_params.get("part"):
            raise HTTPException(status_code=401, detail="sign in to the console first")
        return Redirect(session.sign_in_path(request), status_code=303)
    return None


async def keep_html(response: Response[Any]) -> Response[Any]:
    """The console's error pages stay HTML (the app turns other HTML 404s into problems)."""
    return response


def error_page(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    """An error as a page: the sentence the API's problem would carry, and where to go next."""
    if isinstance(exc, HTTPException):
        problem = on_http_exception(request, exc)
    elif isinstance(exc, DocprocError):
        problem = on_docproc_error(request, exc)
    else:
        problem = on_unexpected(request, exc)
    body: dict[str, Any] = problem.content
    status = problem.status_code or 500
    return render(
        request,
        "error.html",
        status_code=status,
        status=status,
        detail=body.get("detail") or body["title"],
    )


# Every kind the app maps to a problem: the most specific handler of any layer wins.
ERROR_PAGES: dict[int | type[Exception], Any] = dict.fromkeys(
    (DocprocError, HTTPException, Exception), error_page
)


@get("/", include_in_schema=False)
async def root() -> Redirect:
    """`GET /` is the console."""
    return Redirect("/ui/", status_code=302)


@get("/", name="console:overview")
async def overview(
    request: Request[Any, Any, Any], store: StoreDep, management: ManagementDep, part: Part = None
) -> Template:
    figures = await current_stats(store, management)
    queues = {queue.name: queue for queue in figures.queues}
    return render(
        request,
        page_or_part("overview", part),
        stats=figures,
        queue_names=[*WORK_QUEUES, DEAD_LETTER_QUEUE],
        queues=queues,
        states=STATES,
    )


@get("/documents", name="console:documents")
async def document_list(
    request: Request[Any, Any, Any],
    store: StoreDep,
    run_state: StateQuery = None,
    cursor: QueryText = None,
    part: Part = None,
) -> Template:
    if cursor is not None and dead_letters.read_cursor(cursor) is None:
        raise BadRequest(f"cursor {cursor[:80]!r} is not a next_cursor this console gave out")
    found = await store.run(documents.page, state=run_state, limit=PAGE_SIZE, cursor=cursor)
    settings = session.settings_of(request)
    return render(
        request,
        page_or_part("documents", part),
        listing=found,
        state=run_state,
        states=STATES,
        cursor=cursor,
        live=any(item.state not in FINAL for item in found.items),
        max_upload_bytes=settings.max_upload_bytes,
    )


def _document_view(
    connection: Connection, document_id: str
) -> tuple[Document, TaskRun | None, str | None, str | None] | None:
    """What a document's page shows — the document, its run, its text, its latest dead letter —
    in one read: the state shown and whether the page keeps refreshing come from one run (read
    apart, a run that died between them showed FAILURE on a page that had stopped refreshing)."""
    found = documents.get(connection, document_id)
    if found is None:
        return None
    run = task_runs.get(connection, found.task_id)
    text = documents.get_text(connection, document_id) if found.processed_at else None
    return found, run, text, dead_letters.latest_for_task(connection, found.task_id)


@get("/documents/{document_id:str}", name="console:document")
async def document_page(
    request: Request[Any, Any, Any], document_id: PathId, store: StoreDep, part: Part = None
) -> Template:
    view = await store.run(_document_view, document_id)
    if view is None:
        raise NotFound(f"no document {document_id}: it may have been mistyped, or never accepted")
    found, run, text, letter_id = view
    return render(
        request,
        page_or_part("document", part),
        document=document_out(found, run),
        task=status_of(run, with_traceback=True) if run else None,
        text=text,
        dead_letter_id=letter_id,
        retryable=run is not None and run.state in {"FAILURE", "DEAD", "REVOKED"},
        live=run is not None and run.state not in FINAL,
    )


@get("/search", name="console:search")
async def search_page(
    request: Request[Any, Any, Any],
    q: Annotated[str | None, QueryParameter(max_length=SEARCH_LENGTH)] = None,
    document_type: Annotated[
        str | None, QueryParameter(name="type", max_length=MAX_LENGTH, pattern=PRINTABLE)
    ] = None,
    language: QueryText = None,
    since: QueryText = None,
) -> Template:
    """The form; the page's script asks the API's /search (which checks the filters) and shows
    the hits."""
    filters = {"type": document_type or "", "language": language or "", "since": since or ""}
    return render(request, "search.html", q=q or "", filters=filters, types=DOCUMENT_TYPES)


@get("/dead-letters", name="console:dead-letters", dependencies=FILTERS)
async def dead_letter_list(
    request: Request[Any, Any, Any],
    store: StoreDep,
    filters: NamedDependency[Filters],
    cursor: QueryText = None,
) -> Template:
    if cursor is not None and dead_letters.read_cursor(cursor) is None:
        raise BadRequest(f"cursor {cursor[:80]!r} is not a next_cursor this console gave out")
    found = await store.run(dead_letters.page, filters, limit=PAGE_SIZE, cursor=cursor)
    return render(
        request,
        "dead_letters.html",
        items=[summary_of(letter) for letter in found.items],
        next_cursor=found.next_cursor,
        cursor=cursor,
        filters=filters,
        redrive_filters=redrive_filters(filters),
        reasons=REASONS,
        statuses=(*STATUSES, "redrivable"),
        queues=[*WORK_QUEUES, DEAD_LETTER_QUEUE],
    )


def redrive_filters(filters: Filters) -> dict[str, str] | None:
    """The list's filters as a redrive takes them, or None when they cannot make one (no filter,
    or a status a redrive does not take)."""
    chosen = {
        name: value.isoformat() if hasattr(value, "isoformat") else value
        for name in ("queue", "reason", "task", "error_type", "group", "since", "until")
        if (value := getattr(filters, name)) is not None
    }
    return chosen if chosen and filters.status == "active" and not filters.task_id else None


@get("/dead-letters/groups", name="console:groups", dependencies=FILTERS)
async def group_list(
    request: Request[Any, Any, Any], store: StoreDep, filters: NamedDependency[Filters]
) -> Template:
    found = await store.run(dead_letters.groups, filters)
    return render(request, "groups.html", groups=found, filters=filters)


@get("/dead-letters/groups/{group:str}", name="console:group")
async def group_page(
    request: Request[Any, Any, Any], group: PathId, store: StoreDep, cursor: QueryText = None
) -> Template:
    if cursor is not None and dead_letters.read_cursor(cursor) is None:
        raise BadRequest(f"cursor {cursor[:80]!r} is not a next_cursor this console gave out")
    # The group as the groups list shows it (its active letters); once all are handled, in all.
    everything = Filters(group=group, status="all")
    active = await store.run(dead_letters.groups, Filters(group=group))
    summaries = active or await store.run(dead_letters.groups, everything)
    if not summaries:
        raise NotFound(f"no dead letters in group {group}: it was purged, or never existed")
    found = await store.run(dead_letters.page, everything, limit=PAGE_SIZE, cursor=cursor)
    return render(
        request,
        "group.html",
        group=summaries[0],
        active=active[0].count if active else 0,
        handled=not active,
        items=[summary_of(letter) for letter in found.items],
        next_cursor=found.next_cursor,
        cursor=cursor,
    )


@get("/dead-letters/{dead_letter_id:str}", name="console:dead-letter")
async def dead_letter_page(
    request: Request[Any, Any, Any], dead_letter_id: PathId, store: StoreDep
) -> Template:
    letter = await store.run(dead_letters.get, dead_letter_id, body_limit=BODY_PREVIEW)
    if letter is None:
        raise NotFound(f"no dead letter {dead_letter_id}: it was purged by retention, or mistyped")
    detail = detail_of(letter)
    copies = await store.run(
        dead_letters.page, Filters(task_id=letter.task_id, status="all"), limit=20
    )
    return render(
        request,
        "dead_letter.html",
        letter=detail,
        body=base64.b64decode(detail.body_base64),
        siblings=[summary_of(other) for other in copies.items if other.id != letter.id]
        if letter.task_id
        else [],
    )


@get("/redrives/{redrive_id:str}", name="console:redrive")
async def redrive_page(
    request: Request[Any, Any, Any], redrive_id: PathId, store: StoreDep, part: Part = None
) -> Template:
    job = await store.run(redrives.get, redrive_id)
    if job is None:
        raise NotFound(f"no redrive {redrive_id}")
    return render(request, page_or_part("redrive", part), job=redrive_of(job))


@get("/redrives", name="console:redrives")
async def redrive_list(request: Request[Any, Any, Any], store: StoreDep) -> Template:
    jobs = await store.run(redrives.listing)
    return render(request, "redrives.html", jobs=[redrive_of(job) for job in jobs])


# Signing in and out: outside the pages' sign-in hook.


def _safe_next(target: str | None) -> str:
    """Only a path of this console: never another site (an open redirect)."""
    if not target:
        return "/ui/"
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/ui") or "\\" in target:
        return "/ui/"
    return target


@get("/login", name="console:login")
async def login_page(request: Request[Any, Any, Any], next_: NextPath = None) -> Response[Any]:
    if not session.settings_of(request).api_keys:
        return Redirect(_safe_next(next_), status_code=303)
    return render(request, "login.html", next=_safe_next(next_), error=None)


@post("/login", name="console:sign-in", status_code=303)
async def sign_in(
    request: Request[Any, Any, Any],
    data: Annotated[dict[str, str], Body(media_type=RequestEncodingType.URL_ENCODED)],
) -> Response[Any]:
    keys = session.settings_of(request).api_keys
    target = _safe_next(data.get("next"))
    if not session.csrf_matches(request, data.get(session.CSRF_FIELD)):
        return render(request, "login.html", status_code=403, next=target, error=session.STALE_FORM)
    if not keys:
        return Redirect(target, status_code=303)
    if not valid_key(data.get("key", ""), keys):
        return render(
            request, "login.html", status_code=403, next=target, error="the API key is not valid"
        )
    return Redirect(
        target,
        status_code=303,
        cookies=[session.cookie(session.SESSION_COOKIE, session.new_session(keys))],
    )


@post("/logout", name="console:sign-out", status_code=303)
async def sign_out(
    request: Request[Any, Any, Any],
    data: Annotated[dict[str, str], Body(media_type=RequestEncodingType.URL_ENCODED)],
) -> Response[Any]:
    if not session.csrf_matches(request, data.get(session.CSRF_FIELD)):
        raise HTTPException(status_code=403, detail=session.STALE_FORM)
    return Redirect(
        "/ui/login",
        status_code=303,
        cookies=[session.cookie(session.SESSION_COOKIE, "", max_age=0)],
    )


PAGES: list[Any] = [
    overview,
    document_list,
    document_page,
    search_page,
    group_list,
    group_page,
    dead_letter_list,
    dead_letter_page,
    redrive_list,
    redrive_page,
]
SIGN_IN: list[Any] = [login_page, sign_in, sign_out]

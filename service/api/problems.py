"""Every error leaves as `application/problem+json` (RFC 9457); docproc's errors map here, at the
HTTP edge, and nowhere else."""

from __future__ import annotations

from typing import Any

from litestar import Request, Response
from litestar.exceptions import HTTPException
from litestar.handlers import HTTPRouteHandler
from loguru import logger

from service.api.correlation import HEADER, correlation_id_of, given_or_new
from service.api.http_metrics import count_unrouted
from service.errors import (
    BadRequest,
    BrokerUnavailable,
    Caution,
    Conflict,
    CorruptFile,
    DatabaseError,
    DocprocError,
    EmptyDocument,
    NotFound,
    SearchError,
    StoreRejected,
    TooLarge,
    Unroutable,
    UnsupportedType,
)

MEDIA_TYPE = "application/problem+json"

_STATUS: list[tuple[type[DocprocError], int, str]] = [
    (BadRequest, 400, "Bad request"),
    (NotFound, 404, "Not found"),
    (Conflict, 409, "Conflict"),
    (TooLarge, 413, "Upload too large"),
    (UnsupportedType, 415, "Unsupported document type"),
    (EmptyDocument, 422, "Empty document"),
    (CorruptFile, 422, "Corrupt document"),
    (StoreRejected, 400, "The store refused a value"),
    (DatabaseError, 503, "The store is unavailable"),
    (SearchError, 503, "The search could not be run"),
    (BrokerUnavailable, 503, "The broker is unavailable"),
    (Unroutable, 502, "The broker could not route the message"),
]


def problem(status: int, title: str, detail: str | None = None, **extra: Any) -> Response[Any]:
    body: dict[str, Any] = {"type": "about:blank", "status": status, "title": title}
    if detail:
        body["detail"] = detail
    body.update(extra)
    headers = {"Retry-After": "5"} if status == 503 else None
    return Response(body, status_code=status, media_type=MEDIA_TYPE, headers=headers)


def on_docproc_error(request: Request[Any, Any, Any], exc: DocprocError) -> Response[Any]:
    for kind, status, title in _STATUS:
        if isinstance(exc, kind):
            if status >= 500:
                logger.warning("{} {}: {}", request.method, request.url.path, exc)
            if isinstance(exc, Caution):  # what `force=true` would overrule, said alone
                return problem(status, title, str(exc), caution=exc.caution)
            return problem(status, title, str(exc))
    return on_unexpected(request, exc)


def on_unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    logger.opt(exception=exc).error("{} {} failed", request.method, request.url.path)
    cid = correlation_id_of(request.scope)
    return problem(
        500,
        "Internal error",
        f"the error was logged with correlation id {cid}; quote it when you report this",
        correlation_id=cid,
    )


def on_http_exception(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    if exc.status_code == 413:
        return too_large(request)
    extra: dict[str, Any] = {}
    if isinstance(exc.extra, dict):
        extra = exc.extra
    elif exc.extra:
        extra = {"errors": exc.extra}
    response = problem(exc.status_code, _title(exc.status_code), exc.detail, **extra)
    if exc.headers:
        response.headers.update(exc.headers)
    if not correlation_id_of(request.scope):
        # No route matched (the router's 404 or 405): the middlewares, which run around routes,
        # did not see it. Its correlation id and its count are given here.
        response.headers[HEADER] = given_or_new(request.scope["headers"])
        count_unrouted(request.method, exc.status_code)
    return response


def too_large(request: Request[Any, Any, Any]) -> Response[Any]:
    """The body-size limit's 413 (Litestar refuses the body before any handler, or as it
    streams in): for an upload, the sentence an upload over the limit always gets; for another
    body, the limit of its endpoint."""
    size = request.headers.get("content-length", "")
    handler = request.scope.get("route_handler")
    upload = handler is not None and bool(handler.opt.get(UPLOAD))
    subject = "the upload is" if upload else "the request's body is"
    said = f"{size} bytes, more" if size.isdigit() else f"{subject} more"
    if upload:
        limit = request.app.state.services.settings.max_upload_bytes
        return problem(
            413,
            "Upload too large",
            f"{said} than the {limit} allowed (DOCPROC_MAX_UPLOAD_BYTES)",
        )
    most = (
        handler.resolve_request_max_body_size() if isinstance(handler, HTTPRouteHandler) else None
    )
    takes = f"the {most} bytes this endpoint takes" if most else "this endpoint takes"
    return problem(413, "Request body too large", f"{said} than {takes}")


UPLOAD = "docproc_upload"
"""The `opt` key that marks the upload route, whose body limit is DOCPROC_MAX_UPLOAD_BYTES."""


def on_too_deep(request: Request[Any, Any, Any], exc: RecursionError) -> Response[Any]:
    """A body nested deeper than its decoder goes (`[[[[…]]]]`): the client's, unless the
    request sent none — then it is ours."""
    headers = request.headers
    if headers.get("content-length", "0") == "0" and "transfer-encoding" not in headers:
        return on_unexpected(request, exc)
    return problem(400, "Bad request", "the request's body nests too deep to be read")


def _title(status: int) -> str:
    from http import HTTPStatus

    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


EXCEPTION_HANDLERS: dict[int | type[Exception], Any] = {
    DocprocError: on_docproc_error,
    HTTPException: on_http_exception,
    RecursionError: on_too_deep,
    Exception: on_unexpected,
}

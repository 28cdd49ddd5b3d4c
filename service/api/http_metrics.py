"""HTTP metrics for /metrics: requests, errors, durations and requests in progress, per method,
route template and status — the names and labels Litestar's Prometheus plugin uses
(`docproc_requests_total`, `docproc_request_duration_seconds`, `docproc_requests_in_progress`,
`docproc_requests_error_total`), so dashboards built on them keep working.

Our own middleware rather than the plugin's: the plugin builds a Request, two label dicts and a
wrapped `send` (with `functools.wraps`) for every request, and looks each labelled child up by
value four times — more CPU than a status read's own work. Here the children of one (method,
route, status) are looked up once and kept.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from litestar.enums import ScopeType
from litestar.exceptions import HTTPException
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from prometheus_client import Counter, Gauge, Histogram

APP_NAME = "docproc"
LABELS = ("method", "path", "status_code", "app_name")

REQUESTS = Counter("docproc_requests_total", "Total requests", LABELS)
ERRORS = Counter("docproc_requests_error_total", "Total errors in requests", LABELS)
DURATION = Histogram("docproc_request_duration_seconds", "Request duration, in seconds", LABELS)
IN_PROGRESS = Gauge(
    "docproc_requests_in_progress",
    "Total requests currently in progress",
    LABELS,
    multiprocess_mode="livesum",
)

_Finish = Callable[[float], None]


class _Children:
    """The labelled children of each (method, route, status) seen so far."""

    def __init__(self) -> None:
        self._finished: dict[tuple[str, str, int], _Finish] = {}
        self._running: dict[tuple[str, str], Gauge] = {}

    def running(self, method: str, path: str) -> Gauge:
        key = (method, path)
        gauge = self._running.get(key)
        if gauge is None:
            # Litestar's plugin labels the in-progress gauge with status 200, always.
            gauge = self._running[key] = IN_PROGRESS.labels(method, path, 200, APP_NAME)
        return gauge

    def finish(self, method: str, path: str, status: int) -> _Finish:
        key = (method, path, status)
        finish = self._finished.get(key)
        if finish is None:
            finish = self._finished[key] = _finisher(method, path, status)
        return finish


def _finisher(method: str, path: str, status: int) -> _Finish:
    count = REQUESTS.labels(method, path, status, APP_NAME).inc
    observe = DURATION.labels(method, path, status, APP_NAME).observe
    if status < 500:

        def finish(seconds: float) -> None:
            count()
            observe(seconds)

        return finish
    error = ERRORS.labels(method, path, status, APP_NAME).inc

    def finish_error(seconds: float) -> None:
        error()
        count()
        observe(seconds)

    return finish_error


_CHILDREN = _Children()


def http_metrics_middleware(app: ASGIApp) -> ASGIApp:
    """Counts and times each HTTP request under its route template (never the raw path: ids
    would make a series per document)."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await app(scope, receive, send)
            return
        method, path = scope["method"], scope.get("path_template") or scope["path"]
        started = time.perf_counter()
        status = 500  # what is recorded if the app raises anything else before it answers
        answered = False

        async def send_recording(message: Message) -> None:
            nonlocal status, answered
            if message["type"] == "http.response.start":
                status, answered = message["status"], True
            await send(message)

        running = _CHILDREN.running(method, path)
        running.inc()
        try:
            await app(scope, receive, send_recording)
        except HTTPException as exc:
            # Raised by a middleware inside this one (a 401 or 403 of the key check): Litestar's
            # outermost exception handler answers it with its own status, once it has left here.
            if not answered:
                status = exc.status_code
            raise
        finally:
            running.dec()
            _CHILDREN.finish(method, path, status)(time.perf_counter() - started)

    return middleware


UNROUTED = "(unrouted)"
"""The path a request that matched no route is counted under: never its own, which would make a
series of each path a scanner tries."""


def count_unrouted(method: str, status: int) -> None:
    """A request that matched no route — the 404 or 405 of Litestar's router, which answers
    outside this middleware (it runs around matched routes only)."""
    _CHILDREN.finish(method, UNROUTED, status)(0.0)

"""API keys: when DOCPROC_API_KEYS is set, every endpoint needs `Authorization: Bearer <key>` —
reads too, since they return document text, dead-letter bodies and task errors — except
/health, /ready, /metrics and the OpenAPI document. DOCPROC_PUBLIC_READS=true opens the reads
again (GET and HEAD); writes always need a key.

Keys or none, the API takes no write from another site's page (`cross_site_middleware`): with
no keys set (the default), any page an operator had open could otherwise POST a redrive of
every dead letter to it."""

from __future__ import annotations

import hmac
from typing import Any
from urllib.parse import urlsplit

from litestar import Request
from litestar.enums import ScopeType
from litestar.exceptions import HTTPException, NotAuthorizedException, PermissionDeniedException
from litestar.openapi.spec import SecurityRequirement, SecurityScheme
from litestar.types import ASGIApp, Receive, Scope, Send
from litestar.types.composite_types import Middleware

from service.api.problems import on_http_exception

SCHEME = "bearer"
SECURITY_SCHEME = SecurityScheme(
    type="http",
    scheme="bearer",
    description="One of DOCPROC_API_KEYS, when the server sets them (then every operation that "
    "lists this scheme needs it; with DOCPROC_PUBLIC_READS=true, reads do not).",
)
REQUIRED: list[SecurityRequirement] = [{SCHEME: []}]
READS = frozenset({"GET", "HEAD"})
WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_OWN_SITE = frozenset({b"same-origin", b"none"})
"""`Sec-Fetch-Site` of a request the page's own origin made, or the user (typed, bookmarked)."""


def api_key_middleware(keys: tuple[str, ...], *, public_reads: bool) -> Middleware:
    """The key check for the routes it wraps: 401 without a bearer key, 403 with a wrong one;
    keys compared in constant time, never logged (nor echoed in the problem). A middleware on the
    keyed router, not a guard: Litestar copies the handler for every guard call, which cost more
    than the check; and with no keys set there is nothing to wrap at all."""
    encoded = tuple(key.encode() for key in keys)

    def wrap(app: ASGIApp) -> ASGIApp:
        async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] == ScopeType.HTTP and not (public_reads and scope["method"] in READS):
                refusal = _check(_authorization(scope), encoded)
                if refusal is not None:
                    await _answer(refusal, scope, receive, send)
                    return
            await app(scope, receive, send)

        return middleware

    return wrap


def _authorization(scope: Scope) -> bytes:
    for name, value in scope["headers"]:
        if name == b"authorization":
            return bytes(value)
    return b""


def _check(authorization: bytes, keys: tuple[bytes, ...]) -> HTTPException | None:
    scheme, _space, given = authorization.partition(b" ")
    if scheme.lower() != b"bearer" or not given:
        return NotAuthorizedException(
            detail="this endpoint needs an API key: Authorization: Bearer <key>",
            headers={"WWW-Authenticate": 'Bearer realm="docproc"'},
        )
    if not valid_key(given, keys):
        return PermissionDeniedException(detail="the API key is not valid")
    return None


async def _answer(refusal: HTTPException, scope: Scope, receive: Receive, send: Send) -> None:
    """The refusal's problem, sent from here rather than raised: raised, it passed out through
    the app's middlewares to Litestar's own handler, and left counted as a 500 in the metrics,
    without its X-Correlation-ID."""
    request: Request[Any, Any, Any] = Request(scope, receive, send)
    response = on_http_exception(request, refusal)
    await response.to_asgi_response(app=None, request=request)(scope, receive, send)


def valid_key(given: str | bytes, keys: tuple[str, ...] | tuple[bytes, ...]) -> bool:
    """Whether `given` is one of `keys`, compared in constant time (bytes or str alike)."""
    given = given.encode() if isinstance(given, str) else given
    matched = False
    for key in keys:  # no early exit: the time taken says nothing about which key matched
        matched |= hmac.compare_digest(given, key.encode() if isinstance(key, str) else key)
    return matched


def cross_site_middleware(app: ASGIApp) -> ASGIApp:
    """403 for a write a browser sent from another site's page. Browsers say where a request
    comes from (`Sec-Fetch-Site`; older ones `Origin` alone), and a form or a `no-cors` fetch
    needs no CORS permission to be sent: the API has none to give, and served it. Programs (the
    CLI, curl, a service) send neither header and are not concerned; nor are reads."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == ScopeType.HTTP and scope["method"] in WRITES:
            refusal = _cross_site(scope)
            if refusal is not None:
                await _answer(refusal, scope, receive, send)
                return
        await app(scope, receive, send)

    return middleware


def _cross_site(scope: Scope) -> HTTPException | None:
    fetch_site = origin = None
    hosts: set[str] = set()
    for name, value in scope["headers"]:
        if name == b"sec-fetch-site":
            fetch_site = bytes(value).lower()
        elif name == b"origin":
            origin = bytes(value).decode("latin-1")
        elif name in (b"host", b"x-forwarded-host"):
            # A proxy's X-Forwarded-Host is the host the browser saw: a page cannot send one
            # without CORS's leave, which the API gives no one.
            hosts.add(bytes(value).decode("latin-1").split(",")[0].strip().lower())
    if fetch_site is not None:
        if fetch_site in _OWN_SITE:
            return None
        came_from = f"Sec-Fetch-Site: {fetch_site.decode('latin-1')}"
    elif origin is None:
        return None
    else:
        # Browsers send Sec-Fetch-Site to https:// and localhost only: over plain HTTP
        # elsewhere, the Origin against the host the request was sent to is all there is.
        if _same_host(origin, hosts):
            return None
        came_from = f"Origin: {origin[:100]}"
    return PermissionDeniedException(
        detail=f"a write sent by another site's page is refused ({came_from}): docproc's API "
        "serves no other site. Call it from a program (the CLI, curl, your service), or use "
        "the console at /ui"
    )


def _same_host(origin: str, hosts: set[str]) -> bool:
    """Whether `origin` names one of `hosts`; an origin that is no URL (`http://[abc`) names
    none."""
    try:
        parts = urlsplit(origin)
    except ValueError:
        return False
    own = {_without_default_port(host, parts.scheme) for host in hosts}
    return bool(parts.netloc) and _without_default_port(parts.netloc.lower(), parts.scheme) in own


def _without_default_port(netloc: str, scheme: str) -> str:
    """`host:80` of an http:// origin as `host`, which is how a browser writes it."""
    default = {"http": ":80", "https": ":443"}.get(scheme)
    return netloc.removesuffix(default) if default else netloc

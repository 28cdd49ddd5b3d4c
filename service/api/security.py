"""API keys: when DOCPROC_API_KEYS is set, every endpoint needs `Authorization: Bearer <key>` —
reads too, since they return document text, dead-letter bodies and task errors — except
/health, /ready, /metrics and the OpenAPI document. DOCPROC_PUBLIC_READS=true opens the reads
again (GET and HEAD); writes always need a key."""

from __future__ import annotations

import hmac

from litestar.enums import ScopeType
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.openapi.spec import SecurityRequirement, SecurityScheme
from litestar.types import ASGIApp, Receive, Scope, Send
from litestar.types.composite_types import Middleware

SCHEME = "bearer"
SECURITY_SCHEME = SecurityScheme(
    type="http",
    scheme="bearer",
    description="One of DOCPROC_API_KEYS, when the server sets them (then every operation that "
    "lists this scheme needs it; with DOCPROC_PUBLIC_READS=true, reads do not).",
)
REQUIRED: list[SecurityRequirement] = [{SCHEME: []}]
READS = frozenset({"GET", "HEAD"})


def api_key_middleware(keys: tuple[str, ...], *, public_reads: bool) -> Middleware:
    """The key check for the routes it wraps: 401 without a bearer key, 403 with a wrong one;
    keys compared in constant time, never logged (nor echoed in the problem). A middleware on the
    keyed router, not a guard: Litestar copies the handler for every guard call, which cost more
    than the check; and with no keys set there is nothing to wrap at all."""
    encoded = tuple(key.encode() for key in keys)

    def wrap(app: ASGIApp) -> ASGIApp:
        async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] == ScopeType.HTTP and not (public_reads and scope["method"] in READS):
                _check(_authorization(scope), encoded)
            await app(scope, receive, send)

        return middleware

    return wrap


def _authorization(scope: Scope) -> bytes:
    for name, value in scope["headers"]:
        if name == b"authorization":
            return bytes(value)
    return b""


def _check(authorization: bytes, keys: tuple[bytes, ...]) -> None:
    scheme, _space, given = authorization.partition(b" ")
    if scheme.lower() != b"bearer" or not given:
        raise NotAuthorizedException(
            detail="this endpoint needs an API key: Authorization: Bearer <key>",
            headers={"WWW-Authenticate": 'Bearer realm="docproc"'},
        )
    if not valid_key(given, keys):
        raise PermissionDeniedException(detail="the API key is not valid")


def valid_key(given: str | bytes, keys: tuple[str, ...] | tuple[bytes, ...]) -> bool:
    """Whether `given` is one of `keys`, compared in constant time (bytes or str alike)."""
    given = given.encode() if isinstance(given, str) else given
    matched = False
    for key in keys:  # no early exit: the time taken says nothing about which key matched
        matched |= hmac.compare_digest(given, key.encode() if isinstance(key, str) else key)
    return matched

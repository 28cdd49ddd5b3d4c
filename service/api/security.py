"""API keys: when DOCPROC_API_KEYS is set, every endpoint needs `Authorization: Bearer <key>` —
reads too, since they return document text, dead-letter bodies and task errors — except
/health, /ready, /metrics and the OpenAPI document. DOCPROC_PUBLIC_READS=true opens the reads
again (GET and HEAD); writes always need a key."""

from __future__ import annotations

import hmac
from typing import Any

from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.handlers.base import BaseRouteHandler
from litestar.openapi.spec import SecurityRequirement, SecurityScheme

SCHEME = "bearer"
SECURITY_SCHEME = SecurityScheme(
    type="http",
    scheme="bearer",
    description="One of DOCPROC_API_KEYS, when the server sets them (then every operation that "
    "lists this scheme needs it; with DOCPROC_PUBLIC_READS=true, reads do not).",
)
REQUIRED: list[SecurityRequirement] = [{SCHEME: []}]
READS = frozenset({"GET", "HEAD"})


async def require_api_key(
    connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler
) -> None:
    """401 without a bearer key, 403 with a wrong one; keys compared in constant time, never
    logged (nor echoed in the problem). Async, though it never waits: Litestar would run a
    plain function in a thread, a hop that cost more than the check."""
    settings = connection.app.state.services.settings
    keys: tuple[str, ...] = settings.api_keys
    if not keys or (settings.public_reads and connection.scope.get("method") in READS):
        return
    scheme, _space, given = connection.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not given:
        raise NotAuthorizedException(
            detail="this endpoint needs an API key: Authorization: Bearer <key>",
            headers={"WWW-Authenticate": 'Bearer realm="docproc"'},
        )
    if not valid_key(given, keys):
        raise PermissionDeniedException(detail="the API key is not valid")


def valid_key(given: str, keys: tuple[str, ...]) -> bool:
    """Whether `given` is one of `keys`, compared in constant time."""
    matched = False
    for key in keys:  # no early exit: the time taken says nothing about which key matched
        matched |= hmac.compare_digest(given.encode(), key.encode())
    return matched

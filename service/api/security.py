"""API keys: when DOCPROC_API_KEYS is set, every mutating endpoint needs `Authorization: Bearer`."""

from __future__ import annotations

import hmac
from typing import Any

from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.handlers.base import BaseRouteHandler


def require_api_key(
    connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler
) -> None:
    """401 without a bearer key, 403 with a wrong one; keys compared in constant time, never
    logged (nor echoed in the problem)."""
    keys: tuple[str, ...] = connection.app.state.services.settings.api_keys
    if not keys:
        return
    scheme, _space, given = connection.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not given:
        raise NotAuthorizedException(
            detail="this endpoint needs an API key: Authorization: Bearer <key>",
            headers={"WWW-Authenticate": 'Bearer realm="docproc"'},
        )
    matched = False
    for key in keys:  # no early exit: the time taken says nothing about which key matched
        matched |= hmac.compare_digest(given.encode(), key.encode())
    if not matched:
        raise PermissionDeniedException(detail="the API key is not valid")

"""The correlation id of a request: taken from X-Correlation-ID (or made), bound to every log
line written while the request runs, returned in the response, and passed on to the task."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from service.logs import correlated, is_correlation_id

HEADER = "x-correlation-id"


def correlation_id_of(scope: Scope) -> str:
    return str(scope.get("state", {}).get("correlation_id") or "")


def given_or_new(headers: Iterable[tuple[bytes, bytes]]) -> str:
    """The request's X-Correlation-ID when it is an acceptable one, else a new id."""
    given = next((value.decode("latin-1") for name, value in headers if name == _HEADER), "")
    return given if is_correlation_id(given) else uuid.uuid4().hex


_HEADER = HEADER.encode()


def correlation_middleware(app: ASGIApp) -> ASGIApp:
    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await app(scope, receive, send)
            return
        cid = given_or_new(scope["headers"])
        state: dict[str, Any] = scope.setdefault("state", {})
        state["correlation_id"] = cid

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.append((HEADER.encode(), cid.encode()))
                message["headers"] = headers
            await send(message)

        with correlated(cid):
            await app(scope, receive, send_with_id)

    return middleware

"""The correlation id of a request: taken from X-Correlation-ID (or made), bound to every log
line written while the request runs, returned in the response, and passed on to the task."""

from __future__ import annotations

import re
import uuid
from typing import Any

from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from service.logs import correlated

HEADER = "x-correlation-id"
_ACCEPTABLE = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


def correlation_id_of(scope: Scope) -> str:
    return str(scope.get("state", {}).get("correlation_id") or "")


def correlation_middleware(app: ASGIApp) -> ASGIApp:
    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await app(scope, receive, send)
            return
        given = next(
            (
                value.decode("latin-1")
                for name, value in scope["headers"]
                if name == HEADER.encode()
            ),
            "",
        )
        cid = given if _ACCEPTABLE.match(given) else uuid.uuid4().hex
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

"""Uvicorn's HTTP protocol with the timeouts it lacks: a client must send its request headers
within HEADER_TIMEOUT, or its connection is closed. Uvicorn only times out idle keep-alive
connections; a thousand clients that connect and never finish their headers would otherwise hold
a thousand connections (slowloris). Slow bodies get a 408 from `slow_body_middleware`."""

from __future__ import annotations

import asyncio

from litestar.enums import ScopeType
from litestar.exceptions import HTTPException
from litestar.types import ASGIApp, Receive, ReceiveMessage, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

HEADER_TIMEOUT = 10.0
"""Seconds a client has, from connecting or from the first byte of a request, to send its
headers whole."""


BODY_CHUNK_TIMEOUT = 30.0
"""Seconds a client may take between two pieces of a request body it is sending."""


def slow_body_middleware(app: ASGIApp) -> ASGIApp:
    """A 408 problem for a request whose body stops arriving (until the body is whole; after
    that, waiting on `receive` is waiting for a disconnect, which may take any time)."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await app(scope, receive, send)
            return
        whole = False

        async def guarded() -> ReceiveMessage:
            nonlocal whole
            if whole:
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), BODY_CHUNK_TIMEOUT)
            except TimeoutError:
                raise HTTPException(
                    status_code=408,
                    detail=f"the request body stopped arriving for {BODY_CHUNK_TIMEOUT:g} s",
                ) from None
            whole = message["type"] != "http.request" or not message.get("more_body", False)
            return message

        await app(scope, guarded, send)

    return middleware


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    _header_timer: asyncio.TimerHandle | None = None

    def _arm(self) -> None:
        self._disarm()
        self._header_timer = self.loop.call_later(HEADER_TIMEOUT, self._headers_too_slow)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        if not self.transport.is_closing():
            self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

"""Uvicorn's HTTP protocol with the timeouts it lacks, and a response in one send.

A client must send its request headers within HEADER_TIMEOUT, or its connection is closed.
Uvicorn only times out idle keep-alive connections; a thousand clients that connect and never
finish their headers would otherwise hold a thousand connections (slowloris). Slow bodies get a
408 from `slow_body_middleware`.

Uvicorn writes a response's head and its body to the socket separately: two sends, each of which
wakes the client. `CoalescingTransport` makes them one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

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


COALESCE_LIMIT = 64 * 1024
"""Bytes a connection holds back at most: a write that would make more goes out at once, with
what waited before it."""


class CoalescingTransport(asyncio.Transport):
    """A connection's transport on which the writes made in one turn of the event loop go out
    as one send, at the end of the turn.

    The kernel's work for a send on a small machine — the segment through the loopback or the
    network stack, and waking the client — is charged to the sender, and for a small response
    it outweighs the bytes: two sends a status read cost the API 10 to 70 µs of CPU more than
    one (`python -m bench status`, 2 cores: 201 to 233 → 161 to 195 µs a request). A long
    response goes out in COALESCE_LIMIT pieces or larger, as it is written, so it meets the
    transport's flow control as before; `close` sends what is held first, `abort` drops it as
    the transport drops its buffer. The transport also closes itself when the client
    half-closes (`eof_received`): the protocol sends what is held before it does."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._transport = transport
        self._loop = loop
        self._held: list[bytes] = []
        self._held_size = 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self._held:
            self._loop.call_soon(self.flush)
        piece = data if isinstance(data, bytes) else bytes(data)
        self._held.append(piece)
        self._held_size += len(piece)
        if self._held_size >= COALESCE_LIMIT:
            self.flush()

    def writelines(self, list_of_data: Iterable[bytes | bytearray | memoryview]) -> None:
        for data in list_of_data:
            self.write(data)

    def flush(self) -> None:
        """Send what is held now."""
        if not self._held:
            return
        held = self._held
        self._held = []
        self._held_size = 0
        if self._transport.is_closing():  # as the transport itself drops a late write
            return
        if len(held) == 1:
            self._transport.write(held[0])
        else:  # one send; uvloop writes the pieces as they are, without joining them
            self._transport.writelines(held)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self._held.clear()
        self._held_size = 0
        self._transport.abort()

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def can_write_eof(self) -> bool:
        return self._transport.can_write_eof()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._transport.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._transport.get_protocol()

    def is_reading(self) -> bool:
        return self._transport.is_reading()

    def pause_reading(self) -> None:
        self._transport.pause_reading()

    def resume_reading(self) -> None:
        self._transport.resume_reading()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + self._held_size

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._transport.get_write_buffer_limits()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._transport.set_write_buffer_limits(high, low)


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    _header_timer: asyncio.TimerHandle | None = None
    _coalescing: CoalescingTransport

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
        self._coalescing = CoalescingTransport(transport, self.loop)
        super().connection_made(self._coalescing)
        self._arm()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def eof_received(self) -> None:
        # The client has sent all it will (a half-close): the transport closes itself once this
        # returns, past `CoalescingTransport.close`, so a response written this turn goes now.
        self._coalescing.flush()
        super().eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

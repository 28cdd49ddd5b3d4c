"""Uvicorn's HTTP protocol with the timeouts it lacks, and a response in one send.

A client must send its request headers within HEADER_TIMEOUT, or its connection is closed.
Uvicorn only times out idle keep-alive connections; a thousand clients that connect and never
finish their headers would otherwise hold a thousand connections (slowloris). Slow bodies get a
408 from `slow_body_middleware` — and a body the app never reads, a closed connection after
BODY_CHUNK_TIMEOUT of silence. A response its client does not read for WRITE_TIMEOUT is dropped,
with the memory it held. A client that half-closes still gets its answers.

Uvicorn writes a response's head and its body to the socket separately: two sends, each of which
wakes the client. `CoalescingTransport` makes them one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

import msgspec
from litestar.enums import ScopeType
from litestar.exceptions import HTTPException
from litestar.types import ASGIApp, Receive, ReceiveMessage, Scope, Send
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

HEADER_TIMEOUT = 10.0
"""Seconds a client has, from connecting or from the first byte of a request, to send its
headers whole."""


BODY_CHUNK_TIMEOUT = 30.0
"""Seconds a client may take between two pieces of a request body it is sending."""

WRITE_TIMEOUT = 60.0
"""Seconds a response may wait for its client to read, its buffer full, before the connection is
dropped."""


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
    """Uvicorn's protocol with a deadline for each thing a client owes: its request's headers
    (HEADER_TIMEOUT), each piece of a body it announced (BODY_CHUNK_TIMEOUT, also when the app
    answered without reading it, where uvicorn waits for the rest with no deadline at all),
    and reading a response that fills the buffer (WRITE_TIMEOUT); a client that half-closes
    after its request still gets the answer; and a request it cannot parse, pipelined behind
    others, is answered after them, in order (`send_400_response`)."""

    _header_timer: asyncio.TimerHandle | None = None
    _body_timer: asyncio.TimerHandle | None = None
    _write_timer: asyncio.TimerHandle | None = None
    _in_body = False
    _client_done = False
    _deaf = False
    """A request could not be parsed: nothing after it is read."""
    _refusal: bytes | None = None
    """The 400 owed to a request that could not be parsed, sent once the requests before it
    are answered."""
    _coalescing: CoalescingTransport

    def _arm(self) -> None:
        self._disarm()
        self._header_timer = self.loop.call_later(HEADER_TIMEOUT, self._headers_too_slow)

    def _disarm(self) -> None:
        _cancel(self._header_timer)
        self._header_timer = None

    def _headers_too_slow(self) -> None:
        if self._owed():  # the wait is ours: a request before these headers is not answered yet
            self._arm()
        elif not self.transport.is_closing():
            self.transport.close()

    def _owed(self) -> bool:
        """Whether a request read whole is not answered yet."""
        cycle = self.cycle
        return bool(self.pipeline) or (
            cycle is not None and not cycle.more_body and not cycle.response_complete
        )

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
        self._in_body = True

    def on_message_complete(self) -> None:
        self._in_body = False
        _cancel(self._body_timer)
        self._body_timer = None
        super().on_message_complete()

    def data_received(self, data: bytes) -> None:
        if self._deaf:
            return
        super().data_received(data)
        if self._in_body:  # more of a body is owed: from now, within BODY_CHUNK_TIMEOUT
            _cancel(self._body_timer)
            self._body_timer = self.loop.call_later(BODY_CHUNK_TIMEOUT, self._body_too_slow)

    def _body_too_slow(self) -> None:
        self._body_timer = None
        if self.flow.read_paused:  # the app is not reading: the wait is ours, not the client's
            self._body_timer = self.loop.call_later(BODY_CHUNK_TIMEOUT, self._body_too_slow)
        elif not self.transport.is_closing():
            self.transport.close()

    def pause_writing(self) -> None:
        super().pause_writing()
        _cancel(self._write_timer)
        self._write_timer = self.loop.call_later(WRITE_TIMEOUT, self._not_reading)

    def resume_writing(self) -> None:
        _cancel(self._write_timer)
        self._write_timer = None
        super().resume_writing()

    def _not_reading(self) -> None:
        self._write_timer = None
        self.transport.abort()  # what it holds will never be read: not flushed first

    def send_400_response(self, msg: str) -> None:
        """What uvicorn answers a request it cannot parse (a bad Content-Length or chunk size, a
        byte that has no place in a request line): a problem, as every other error — not its
        text/plain line — and then the connection closes.

        Uvicorn wrote it at once, closing the connection under the requests pipelined before
        the bad one: a client that sent an upload, then something unparseable, read the 400 as
        the upload's answer while the upload was stored and queued — and sent it again. Here
        nothing after the bad request is read, and its 400 goes out after the answers owed
        before it: queued behind them when the bad request is one whose body was being read
        (`_unparseable`, as uvicorn's own 503 replaces a request's app), or written once the
        last of them is answered (`on_response_complete`)."""
        self._deaf = True
        answer = _problem_400(self.server_state.default_headers, msg)
        queued = next((i for i, (c, _) in enumerate(self.pipeline) if c is self.cycle), None)
        if self._in_body and queued is not None:
            self.pipeline[queued] = (self.pipeline[queued][0], _unparseable(msg))
        elif not self._in_body and self._owed():
            self._refusal = answer
        else:  # nothing before it is owed; or the request whose body is being read is bad
            self.transport.write(answer)
            self.transport.close()

    def eof_received(self) -> bool | None:  # type: ignore[override]  # asyncio.Protocol's own
        """The client has sent all it will (a half-close). A request it sent whole still gets its
        answer (and those pipelined after it, theirs): the connection closes after the last. With
        nothing to answer, it closes now — past `CoalescingTransport.close`, so what was written
        this turn is sent first."""
        cycle = self.cycle
        owed = cycle is not None and not cycle.more_body and not cycle.response_complete
        if owed or self.pipeline:
            self._client_done = True
            return True
        self._coalescing.flush()
        return None

    def on_response_complete(self) -> None:
        super().on_response_complete()
        cycle = self.cycle
        answered = not self.pipeline and (cycle is None or cycle.response_complete)
        if self._refusal is not None and answered and not self.transport.is_closing():
            self.transport.write(self._refusal)
            self.transport.close()
        elif self._client_done and answered and not self.transport.is_closing():
            self._unset_keepalive_if_required()
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        _cancel(self._body_timer)
        _cancel(self._write_timer)
        super().connection_lost(exc)


def _problem_body(msg: str) -> bytes:
    return msgspec.json.encode(
        {"type": "about:blank", "status": 400, "title": "Bad request", "detail": msg}
    )


def _problem_400(default_headers: list[tuple[bytes, bytes]], msg: str) -> bytes:
    """A 400 problem that closes the connection, as bytes to write."""
    body = _problem_body(msg)
    head = [STATUS_LINE[400]]
    for name, value in default_headers:
        head.append(b"%s: %s\r\n" % (name, value))
    head.append(
        b"content-type: application/problem+json\r\ncontent-length: %d\r\n"
        b"connection: close\r\n\r\n" % len(body)
    )
    return b"".join([*head, body])


def _unparseable(msg: str) -> Any:
    """The app of a pipelined request whose body could not be parsed: its 400, in its turn, and
    the connection closes after it."""
    body = _problem_body(msg)

    async def answer(scope: Any, receive: Any, send: Any) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 400,
                "headers": [
                    (b"content-type", b"application/problem+json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    return answer


def _cancel(timer: asyncio.TimerHandle | None) -> None:
    """Cancel `timer`, if there is one."""
    if timer is not None:
        timer.cancel()

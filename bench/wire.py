"""The load generator's HTTP client: HTTP/1.1 keep-alive connections that send prepared bytes and
read `Content-Length` answers, nothing else.

A measure must time the server, not its client. httpx spent ~3.2 ms of CPU per upload, more than
the API it drove, so the rates were the client's; this client spends tens of µs per request (each
measure reports the figure beside its rate). It knows only what the measures send and docproc
answers: no TLS, no redirects, no chunked bodies (an answer without Content-Length is an error).
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from urllib.parse import urlsplit


class WireError(Exception):
    """An answer this client cannot read, or a connection that closed under a request."""


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    body: bytes


class _Connection(asyncio.Protocol):
    """One keep-alive connection; one request in flight at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future[Answer] | None = None
        self.closed: Exception | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        waiter = self.waiter
        if waiter is None or waiter.done():
            return
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self.buffer[:end]).lower()
        mark = head.find(b"\r\ncontent-length:")
        if mark < 0:
            waiter.set_exception(WireError(f"an answer without Content-Length: {head[:200]!r}"))
            return
        start = mark + len(b"\r\ncontent-length:")
        stop = head.find(b"\r\n", start)
        length = int(head[start : stop if stop >= 0 else len(head)])
        if len(self.buffer) < end + 4 + length:
            return
        answer = Answer(int(head[9:12]), bytes(self.buffer[end + 4 : end + 4 + length]))
        del self.buffer[: end + 4 + length]
        waiter.set_result(answer)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = exc or WireError("the server closed the connection")
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(self.closed)

    async def send(self, request: bytes) -> Answer:
        if self.closed is not None or self.transport is None:
            raise WireError(f"connection closed: {self.closed}")
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return await self.waiter


class Client:
    """`size` connections to one server; a request takes a free one and gives it back."""

    def __init__(self, url: str, size: int) -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.size = size
        self._free: asyncio.Queue[_Connection] = asyncio.Queue()
        self._all: list[_Connection] = []

    async def __aenter__(self) -> Client:
        loop = asyncio.get_running_loop()
        for _ in range(self.size):
            _, connection = await loop.create_connection(_Connection, self.host, self.port)
            self._all.append(connection)
            self._free.put_nowait(connection)
        return self

    async def __aexit__(self, *_: object) -> None:
        for connection in self._all:
            if connection.transport is not None:
                connection.transport.close()

    def prepare(
        self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> bytes:
        """The bytes of a request, to send as many times as wanted."""
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.host}:{self.port}"]
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        if body or method in ("POST", "PUT", "PATCH"):
            lines.append(f"Content-Length: {len(body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body

    async def send(self, request: bytes) -> Answer:
        connection = await self._free.get()
        try:
            return await connection.send(request)
        finally:
            if connection.closed is None:
                self._free.put_nowait(connection)

    async def get(self, path: str, headers: dict[str, str] | None = None) -> Answer:
        return await self.send(self.prepare("GET", path, headers=headers))


def multipart(field: str, filename: str, content: bytes, content_type: str) -> tuple[str, bytes]:
    """A multipart/form-data body with one file: (the Content-Type header, the body)."""
    boundary = uuid.uuid4().hex
    head = (
        f"--{boundary}\r\n"
        f'Content-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'
        f"Content-Type: {content_type}\r\n\r\n"
    ).encode()
    return f"multipart/form-data; boundary={boundary}", head + content + (
        f"\r\n--{boundary}--\r\n".encode()
    )

"""The API's connections send a response in one piece (`service.api.server`): writes made in one
turn of the event loop go out together at its end; large ones at once; `close` sends what is held
first and `abort` drops it. Then the same through uvicorn on a real socket: small and large
responses, one after another on a kept-alive connection, arrive whole and in order."""

from __future__ import annotations

import array
import asyncio
import hashlib
import http.client
import socket
from collections.abc import Iterator
from typing import ClassVar

import pytest
from litestar import Litestar, get
from litestar.response import Stream

from service.api.server import COALESCE_LIMIT, CoalescingTransport, GuardedHttpToolsProtocol
from tests.support import served_by_uvicorn


class Recording(asyncio.Transport):
    """What reaches the socket: each send, and whether the transport was closed or aborted."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[bytes] = []
        self.closed = False
        self.aborted = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.sent.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def get_write_buffer_size(self) -> int:
        return 0


async def next_turn() -> None:
    """Return once the callbacks already scheduled on the loop have run."""
    loop = asyncio.get_running_loop()
    turned: asyncio.Future[None] = loop.create_future()
    loop.call_soon(turned.set_result, None)
    await turned


def coalescing() -> tuple[CoalescingTransport, Recording]:
    inner = Recording()
    return CoalescingTransport(inner, asyncio.get_running_loop()), inner


async def test_the_writes_of_one_turn_go_out_as_one_send_at_its_end() -> None:
    transport, inner = coalescing()
    head = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n"
    transport.write(head)
    transport.write(bytearray(b"{}"))
    assert inner.sent == []
    assert transport.get_write_buffer_size() == len(head) + 2
    await next_turn()
    assert inner.sent == [head + b"{}"]
    assert transport.get_write_buffer_size() == 0

    transport.writelines([b"a", b"b"])
    await next_turn()
    assert inner.sent[1:] == [b"ab"], "the next turn's writes are a send of their own"


async def test_what_is_held_is_counted_in_bytes() -> None:
    transport, inner = coalescing()
    transport.write(memoryview(array.array("I", [1, 2])))  # two items, eight bytes
    assert transport.get_write_buffer_size() == 8
    await next_turn()
    assert [len(sent) for sent in inner.sent] == [8]


async def test_a_large_write_goes_out_at_once_after_what_waited() -> None:
    transport, inner = coalescing()
    transport.write(b"head")
    large = b"x" * COALESCE_LIMIT
    transport.write(large)
    assert inner.sent == [b"head" + large], "held no longer: the transport's flow control sees it"
    await next_turn()
    assert len(inner.sent) == 1


async def test_close_sends_what_is_held_first_and_abort_drops_it() -> None:
    transport, inner = coalescing()
    transport.write(b"last words")
    transport.close()
    assert (inner.sent, inner.closed) == ([b"last words"], True)

    transport, inner = coalescing()
    transport.write(b"never sent")
    transport.abort()
    await next_turn()
    assert (inner.sent, inner.aborted) == ([], True)


async def test_what_is_held_when_the_connection_closes_underneath_is_dropped() -> None:
    transport, inner = coalescing()
    transport.write(b"too late")
    inner.closed = True  # the peer went away within the turn
    await next_turn()
    assert inner.sent == []


LARGE = 3 * COALESCE_LIMIT + 12_345


@get("/small")
async def small() -> dict[str, str]:
    return {"answer": "42"}


def large_pieces() -> Iterator[bytes]:
    """A streamed response's pieces, 1,000 bytes each but the last."""
    for n in range(LARGE // 1000):
        yield f"{n:0999d}\n".encode()
    yield b"z" * (LARGE % 1000)


@get("/large")
async def large() -> Stream:
    return Stream(large_pieces(), media_type="application/octet-stream")


class Watched(GuardedHttpToolsProtocol):
    """docproc's protocol, noting the transport each connection writes to."""

    transports: ClassVar[list[type[asyncio.BaseTransport]]] = []

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        Watched.transports.append(type(self.transport))


@pytest.fixture(scope="module")
def served() -> Iterator[int]:
    with served_by_uvicorn(Litestar([small, large]), http=Watched) as port:
        yield port


def test_a_client_that_half_closes_gets_its_whole_response(served: int) -> None:
    """It sends its request, then shuts its side (as `nc -N` does): the server's transport closes
    itself at that end of stream, and what is held must go out before."""
    for _ in range(10):
        with socket.create_connection(("127.0.0.1", served), timeout=10) as client:
            client.sendall(b"GET /small HTTP/1.1\r\nHost: x\r\n\r\n")
            client.shutdown(socket.SHUT_WR)
            received = b""
            while piece := client.recv(65536):
                received += piece
        assert received.startswith(b"HTTP/1.1 200 OK\r\n")
        assert received.endswith(b'\r\n\r\n{"answer":"42"}')


def test_responses_small_and_large_arrive_whole_on_one_connection(served: int) -> None:
    expected_large = hashlib.sha256(b"".join(large_pieces())).digest()
    connection = http.client.HTTPConnection("127.0.0.1", served, timeout=10)
    try:
        for path in ("/small", "/large", "/small", "/large", "/small"):
            connection.request("GET", path)
            response = connection.getresponse()
            body = response.read()
            assert response.status == 200
            if path == "/small":
                assert body == b'{"answer":"42"}'
            else:
                assert len(body) == LARGE
                assert hashlib.sha256(body).digest() == expected_large
    finally:
        connection.close()
    assert Watched.transports, "no connection was made"
    assert set(Watched.transports) == {CoalescingTransport}

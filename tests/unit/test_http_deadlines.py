"""What the API's connections owe each other (`service.api.server.GuardedHttpToolsProtocol`),
through uvicorn on real sockets: a client that half-closes after its requests gets every answer,
also one that comes in a later turn of the loop; a body announced and never sent does not hold
the connection for ever, nor does a client that never reads a large response."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Iterator
from typing import ClassVar

import pytest
from litestar import Litestar, get
from litestar.response import Stream

from service.api import server
from service.api.server import GuardedHttpToolsProtocol
from tests.support import served_by_uvicorn

PIECE = b"x" * (1 << 20)
HUGE = 256  # pieces: far more than the kernel's and the transport's buffers hold


@get("/small")
async def small() -> dict[str, str]:
    return {"answer": "42"}


@get("/later")
async def later() -> dict[str, str]:
    # Answered in a later turn of the loop, as a store read is.
    return {"answer": await asyncio.to_thread(lambda: "later")}


@get("/huge")
async def huge() -> Stream:
    return Stream(PIECE for _ in range(HUGE))


class Noted(GuardedHttpToolsProtocol):
    """docproc's protocol, noting each connection it loses."""

    lost: ClassVar[list[float]] = []

    def connection_lost(self, exc: Exception | None) -> None:
        Noted.lost.append(time.monotonic())
        super().connection_lost(exc)


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    monkeypatch.setattr(server, "BODY_CHUNK_TIMEOUT", 0.5)
    monkeypatch.setattr(server, "WRITE_TIMEOUT", 0.5)
    Noted.lost.clear()
    with served_by_uvicorn(Litestar([small, later, huge]), http=Noted) as port:
        yield port


def received_until_closed(client: socket.socket) -> bytes:
    client.settimeout(10)
    received = b""
    while piece := client.recv(65536):
        received += piece
    return received


def test_a_client_that_half_closes_gets_every_answer_also_a_later_one(served: int) -> None:
    """It sends its requests, pipelined, then shuts its side (as `nc -N` does). Each is answered
    in order — the first in a later turn of the loop — and then the server closes."""
    for _ in range(5):
        with socket.create_connection(("127.0.0.1", served), timeout=10) as client:
            client.sendall(
                b"GET /later HTTP/1.1\r\nHost: x\r\n\r\nGET /small HTTP/1.1\r\nHost: x\r\n\r\n"
            )
            client.shutdown(socket.SHUT_WR)
            received = received_until_closed(client)
        first, _, second = received.partition(b'{"answer":"later"}')
        assert first.startswith(b"HTTP/1.1 200 OK\r\n"), received
        assert second.startswith(b"HTTP/1.1 200 OK\r\n"), received
        assert second.endswith(b'\r\n\r\n{"answer":"42"}'), received


def test_a_body_announced_and_never_sent_does_not_hold_the_connection(served: int) -> None:
    """The app answered without reading the body; uvicorn waits for the rest of it to read the
    next request, with no deadline of its own. Silent for BODY_CHUNK_TIMEOUT, it is let go."""
    with socket.create_connection(("127.0.0.1", served), timeout=10) as client:
        client.sendall(b"GET /small HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n")
        answer = b""
        while not answer.endswith(b'{"answer":"42"}'):
            answer += client.recv(65536)
        client.sendall(b"x")  # a byte of the body (which once stopped uvicorn's keep-alive clock)
        assert received_until_closed(client) == b""  # and nothing more: the server closes
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n")


def test_a_client_that_never_reads_a_large_response_is_dropped(served: int) -> None:
    """Its response fills the buffers and waits: after WRITE_TIMEOUT the connection is dropped,
    and what it held with it (while it is read, however slowly, it is not)."""
    with socket.create_connection(("127.0.0.1", served), timeout=10) as client:
        client.sendall(b"GET /huge HTTP/1.1\r\nHost: x\r\n\r\n")
        deadline = time.monotonic() + 10
        while not Noted.lost:  # the client reads nothing meanwhile
            assert time.monotonic() < deadline, "the connection was not dropped within 10 s"
            time.sleep(0.05)


def test_a_request_that_cannot_be_parsed_is_answered_with_a_problem(served: int) -> None:
    """uvicorn's own answer was a text/plain line; every other error is a problem."""
    for request in (
        b"GET /small HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
        b"GET /sm\xffall HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST /small HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ):
        with socket.create_connection(("127.0.0.1", served), timeout=10) as client:
            client.sendall(request)
            received = received_until_closed(client)
        head, _, body = received.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 400 Bad Request\r\n"), received
        assert b"content-type: application/problem+json" in head
        problem = json.loads(body)
        assert (problem["status"], problem["title"]) == (400, "Bad request")
        assert problem["detail"]

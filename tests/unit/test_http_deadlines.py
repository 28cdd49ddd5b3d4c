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
from litestar import Litestar, get, post
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
    """docproc's protocol, noting each connection it loses, each request it cannot parse and
    each header deadline it puts off (`noticed`, set in the server's loop, for both)."""

    lost: ClassVar[list[float]] = []
    refused: ClassVar[list[str]] = []
    put_off: ClassVar[list[float]] = []
    noticed: ClassVar[asyncio.Event]

    def connection_lost(self, exc: Exception | None) -> None:
        Noted.lost.append(time.monotonic())
        super().connection_lost(exc)

    def send_400_response(self, msg: str) -> None:
        Noted.refused.append(msg)
        Noted.noticed.set()
        super().send_400_response(msg)

    def _headers_too_slow(self) -> None:
        if self._owed():
            Noted.put_off.append(time.monotonic())
            Noted.noticed.set()
        super()._headers_too_slow()


@post("/held", status_code=202)
async def held() -> dict[str, str]:
    """Answered once the connection has refused a request, or put off a header deadline, after
    this one: an upload still on its way meanwhile."""
    async with asyncio.timeout(10):
        await Noted.noticed.wait()
    return {"answer": "accepted"}


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    monkeypatch.setattr(server, "BODY_CHUNK_TIMEOUT", 0.5)
    monkeypatch.setattr(server, "WRITE_TIMEOUT", 0.5)
    monkeypatch.setattr(server, "HEADER_TIMEOUT", 0.3)
    Noted.lost.clear()
    Noted.refused.clear()
    Noted.put_off.clear()
    Noted.noticed = asyncio.Event()
    with served_by_uvicorn(Litestar([small, later, huge, held]), http=Noted) as port:
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


def answers(received: bytes) -> list[tuple[bytes, bytes]]:
    """The responses in `received`, in order: (status line, body), each body by its length."""
    found = []
    while received:
        head, _, rest = received.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        length = next(
            int(line.split(b":", 1)[1])
            for line in lines
            if line.lower().startswith(b"content-length")
        )
        found.append((lines[0], rest[:length]))
        received = rest[length:]
    return found


@pytest.mark.parametrize(
    "bad",
    [
        b"GET /sm\xffall HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST /small HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ],
    ids=["request line", "body"],
)
def test_a_request_that_cannot_be_parsed_is_answered_after_those_before_it(
    served: int, bad: bytes
) -> None:
    """A client pipelines an upload, then something unparseable. uvicorn wrote the 400 at once
    and closed the connection under the upload: the client read the 400 as the upload's answer,
    though the upload was stored and queued — and would send it again. Now the upload is
    answered first, then the 400, then the connection closes."""
    with socket.create_connection(("127.0.0.1", served), timeout=10) as client:
        client.sendall(b"POST /held HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
        client.sendall(bad)
        received = received_until_closed(client)

    [(first, body), (second, problem)] = answers(received)
    assert (first, body) == (b"HTTP/1.1 202 Accepted", b'{"answer":"accepted"}')
    assert second == b"HTTP/1.1 400 Bad Request"
    assert json.loads(problem)["status"] == 400


def test_a_header_deadline_waits_for_the_answer_owed_before_it(
    served: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Headers of a pipelined request were late (HEADER_TIMEOUT) while the request before them
    was still being answered: the connection was closed under that answer. The deadline is put
    off until it is sent (then the rest of the headers have HEADER_TIMEOUT again)."""
    monkeypatch.setattr(server, "HEADER_TIMEOUT", 1.0)
    with socket.create_connection(("127.0.0.1", served), timeout=10) as client:
        client.sendall(
            b"POST /held HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\nGET /small HTTP/1.1\r\nHo"
        )
        answer = b""
        while not answer.endswith(b'{"answer":"accepted"}'):
            piece = client.recv(65536)
            assert piece, f"closed under the answer owed: {answer!r}"
            answer += piece
        client.sendall(b"st: x\r\nConnection: close\r\n\r\n")
        received = received_until_closed(client)

    assert answer.startswith(b"HTTP/1.1 202 Accepted\r\n")
    assert Noted.put_off, "the deadline came while the answer was owed"
    assert received.startswith(b"HTTP/1.1 200 OK\r\n")
    assert received.endswith(b'{"answer":"42"}')

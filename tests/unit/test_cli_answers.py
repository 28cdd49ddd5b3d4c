"""The client commands against an API that answers what docproc does not: a proxy's error page,
JSON of another shape, a byte at a time. Each ends in one line naming the request and what came
back, never a traceback (the commands run with catch_exceptions=False: one would fail the test)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from service.cli import cli, client


class _Answers(BaseHTTPRequestHandler):
    """Answers every request with the server's `status`, `content_type` and `body`; a body
    longer than the server's `limit` with a proxy's 413 page."""

    server: _FakeApi

    def _answer(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        self.rfile.read(length)
        if self.server.limit is not None and length > self.server.limit:
            self.send_response(413)
            self.send_header("content-type", "text/html")
            self.send_header("content-length", str(len(TOO_LARGE)))
            self.end_headers()
            self.wfile.write(TOO_LARGE)
            return
        self.send_response(self.server.status)
        self.send_header("content-type", self.server.content_type)
        self.send_header("content-length", str(len(self.server.body)))
        self.end_headers()
        self.wfile.write(self.server.body)

    def do_GET(self) -> None:
        self._answer()

    def do_POST(self) -> None:
        self._answer()

    def do_DELETE(self) -> None:
        self._answer()

    def log_message(self, *_: object) -> None:
        pass


class _FakeApi(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, status: int, content_type: str, body: bytes) -> None:
        super().__init__(("127.0.0.1", 0), _Answers)
        self.status, self.content_type, self.body = status, content_type, body
        self.limit: int | None = None
        self.url = f"http://127.0.0.1:{self.server_address[1]}"


@pytest.fixture
def answering() -> Iterator[list[_FakeApi]]:
    """Starts a fake API for each `answer(...)` of a test; stops them at its end."""
    started: list[_FakeApi] = []
    yield started
    for server in started:
        server.shutdown()
        server.server_close()


def answer(started: list[_FakeApi], status: int, content_type: str, body: bytes) -> str:
    server = _FakeApi(status, content_type, body)
    threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True).start()
    started.append(server)
    return server.url


def run(url: str, *args: str) -> Result:
    return CliRunner().invoke(
        cli, [*args, "--api", url], env={"DOCPROC_API_KEY": "k"}, catch_exceptions=False
    )


BAD_GATEWAY = b"<html><body><h1>502 Bad Gateway</h1></body></html>"
TOO_LARGE = b"<html><body><h1>413 Request Entity Too Large</h1></body></html>"


def test_submit_through_a_proxy_answering_an_html_page_says_so_in_one_line(
    answering: list[_FakeApi], tmp_path: Path
) -> None:
    (tmp_path / "a.txt").write_text("hello world")
    url = answer(answering, 502, "text/html", BAD_GATEWAY)

    result = run(url, "submit", str(tmp_path / "a.txt"))

    assert result.exit_code == 1, result.output
    [said] = result.stderr.splitlines()[-1:]
    assert said == (
        f"docproc: POST {url}/documents: the API answered 502 with text/html, not JSON: "
        "is --api pointing at docproc?"
    )
    accepted = answer(answering, 202, "text/html", b"<html>login page</html>")
    assert "answered 202 with text/html, not JSON" in run(accepted, "submit", str(tmp_path)).stderr


def test_a_file_a_proxy_finds_too_large_is_refused_and_the_others_go_on(
    answering: list[_FakeApi], tmp_path: Path
) -> None:
    (tmp_path / "a-small.txt").write_text("hello world")
    (tmp_path / "b-large.txt").write_text("lighthouse " * 1_000)
    (tmp_path / "c-small.txt").write_text("harbour")
    accepted = b'{"status": "PENDING", "document_id": "d-1", "task_id": "t-1"}'
    url = answer(answering, 202, "application/json", accepted)
    answering[-1].limit = 2_000  # a proxy's client_max_body_size, below the API's

    result = run(url, "submit", str(tmp_path))

    assert result.exit_code == 1, result.output  # a file was refused
    assert "docproc:" not in result.stderr
    rows = {line.split()[0]: line for line in result.stdout.splitlines() if "txt" in line}
    assert [name for name, row in rows.items() if "PENDING" in row] == [
        str(tmp_path / "a-small.txt"),
        str(tmp_path / "c-small.txt"),
    ]
    refused = rows[str(tmp_path / "b-large.txt")]
    assert "REFUSED 413" in refused
    assert "too large for what is in front of the API (it answered text/html)" in refused


@pytest.mark.parametrize(
    "command",
    [
        ("status", "t-1"),
        ("text", "d-1"),
        ("search", "lighthouse"),
        ("dead-letters", "list"),
        ("dead-letters", "groups"),
        ("dead-letters", "republish", "l-1"),
        ("dead-letters", "redrive", "--all"),
        ("dead-letters", "redrive", "--all", "--dry-run"),
        ("dead-letters", "redrives"),
        ("dead-letters", "cancel", "r-1"),
        ("dead-letters", "discard", "--group", "g-1"),
    ],
)
@pytest.mark.parametrize("body", [b"[1, 2, 3]", b'{"items": [{"id": 1}]}', b"<html>"])
def test_a_command_answered_json_of_another_shape_or_none_says_so_in_one_line(
    answering: list[_FakeApi], command: tuple[str, ...], body: bytes
) -> None:
    url = answer(answering, 200, "application/json", body)

    result = run(url, *command)

    assert result.exit_code == 1, result.output
    said = result.stderr.splitlines()[-1]
    assert said.startswith(f"docproc: {'DELETE' if 'cancel' in command else ''}"), said
    assert f" {url}/" in said
    kind = "with application/json, not JSON" if body == b"<html>" else "with JSON of another"
    assert f": the API answered 200 {kind}" in said, said
    assert said.endswith("is --api pointing at docproc?"), said


def test_a_refusal_that_is_not_json_says_so_in_one_line(answering: list[_FakeApi]) -> None:
    url = answer(answering, 502, "text/html", BAD_GATEWAY)

    result = run(url, "status", "t-1")

    assert result.exit_code == 1, result.output
    assert result.stderr.splitlines() == [
        f"docproc: GET {url}/tasks/t-1/status: the API answered 502 with text/html, not JSON: "
        "is --api pointing at docproc?"
    ]


HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
CLOSING = HEAD.replace(b"HTTP/1.1", b"HTTP/1.0")  # http.client lets go of such a connection
TRICKLE_FOR = 2.0
"""Seconds the trickling API goes on with one connection before it closes it."""


@pytest.fixture
def trickling() -> Iterator[Callable[[bytes, int], str]]:
    """Starts an API answering each request `head` and a body, a byte every 0.1 s from byte `at`
    on (before it, at once), for TRICKLE_FOR seconds; stops it at the test's end."""
    stop = threading.Event()
    listeners: list[socket.socket] = []

    def trickle(connection: socket.socket, head: bytes, at: int) -> None:
        answer = head + b" " * 100
        ends = time.monotonic() + TRICKLE_FOR
        with connection:
            connection.recv(65536)
            connection.sendall(answer[:at])
            for n in range(at, len(answer)):
                if stop.wait(0.1) or time.monotonic() > ends:
                    return
                try:
                    connection.sendall(answer[n : n + 1])
                except OSError:  # the client went away
                    return

    def accept(listener: socket.socket, head: bytes, at: int) -> None:
        while True:
            try:
                connection, _ = listener.accept()
            except OSError:  # closed
                return
            threading.Thread(target=trickle, args=(connection, head, at), daemon=True).start()

    def start(head: bytes, at: int) -> str:
        listener = socket.create_server(("127.0.0.1", 0))
        listeners.append(listener)
        threading.Thread(target=accept, args=(listener, head, at), daemon=True).start()
        return f"http://127.0.0.1:{listener.getsockname()[1]}"

    yield start
    stop.set()
    for listener in listeners:
        listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        listener.close()


@pytest.mark.parametrize(
    ("head", "at"),
    [(HEAD, 0), (HEAD, len(HEAD)), (CLOSING, len(CLOSING))],
    ids=["head", "body", "body-closing"],
)
def test_an_api_answering_a_byte_at_a_time_ends_at_the_request_deadline(
    trickling: Callable[[bytes, int], str], monkeypatch: pytest.MonkeyPatch, head: bytes, at: int
) -> None:
    monkeypatch.setattr(client, "REQUEST_DEADLINE", 0.5)  # 30 s in use
    url = trickling(head, at)

    began = time.monotonic()
    result = run(url, "status", "t-1")
    took = time.monotonic() - began

    assert result.exit_code == 69, result.output
    assert result.stderr.splitlines() == [
        f"docproc: the docproc API at {url} does not answer (no whole answer to GET "
        "/tasks/t-1/status within 0.5 s); start it with `docproc up`, or pass --api"
    ]
    assert took < TRICKLE_FOR, "each byte began a new read: 30 s each, for ever"

"""The client commands against answers docproc's API never gives — numbers no int holds, endless
or packed bodies, bodies cut short, text that would work a terminal — and the edges of `docproc
submit`: a bad --api, Ctrl-C, a file named like a glob, a folder that cannot be read. Each ends
in a row or one line, never a traceback (in-process commands run with catch_exceptions=False:
one would fail the test)."""

from __future__ import annotations

import contextlib
import gzip
import itertools
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from service.cli import cli, client
from tests.support import ROOT
from tests.unit.test_cli_client import _Server


class HostileApi(_Server):
    """An HTTP server on 127.0.0.1 that reads each request, keeps it, and answers it with
    `respond(server, connection, request)` — bytes as they go on the wire — then closes."""

    def __init__(self, respond: Callable[[HostileApi, socket.socket, bytes], None]) -> None:
        self.respond = respond
        self.requests: list[bytes] = []
        self.received = threading.Event()
        self.closing = threading.Event()
        self.open: list[socket.socket] = []
        super().__init__()

    def _handle(self, connection: socket.socket) -> None:
        self.open.append(connection)
        with connection, contextlib.suppress(OSError):  # the client went away
            request = _read_request(connection)
            if request:
                self.requests.append(request)
                self.received.set()
                self.respond(self, connection, request)

    def close(self) -> None:
        self.closing.set()
        for connection in self.open:  # a respond() that waits for the end is let go
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        super().close()


def _read_request(connection: socket.socket) -> bytes:
    """A request's head and its body (as long as its Content-Length says)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = connection.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        (
            int(line.split(b":")[1])
            for line in head.lower().split(b"\r\n")
            if b"content-length:" in line
        ),
        0,
    )
    while len(body) < length and (chunk := connection.recv(65536)):
        body += chunk
    return head + b"\r\n\r\n" + body


def answer(body: bytes, status: str = "200 OK", headers: bytes = b"") -> Callable[..., None]:
    """A respond that answers `body` as JSON, with `headers` (lines ending in CRLF) too."""

    def respond(_: HostileApi, connection: socket.socket, __: bytes) -> None:
        connection.sendall(
            f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n".encode()
            + (headers or f"Content-Length: {len(body)}\r\n".encode())
            + b"Connection: close\r\n\r\n"
            + body
        )

    return respond


@pytest.fixture
def hostile() -> Iterator[Callable[[Callable[..., None]], HostileApi]]:
    """Starts a HostileApi for each call of a test; stops them at its end."""
    started: list[HostileApi] = []

    def start(respond: Callable[..., None]) -> HostileApi:
        started.append(HostileApi(respond))
        return started[-1]

    yield start
    for server in started:
        server.close()


Start = Callable[[Callable[..., None]], HostileApi]


def run(url: str, *args: str) -> Result:
    return CliRunner().invoke(
        cli, [*args, "--api", url], env={"DOCPROC_API_KEY": "k"}, catch_exceptions=False
    )


def one_line(result: Result) -> str:
    [said] = result.stderr.splitlines()
    return said


INFINITE = (
    b'{"id": "r-1", "state": "running", "matched": 1e400, "published": 0, "failed": 0, '
    b'"rate": 1, "discarded": 1e400, "groups": [], "left_out": []}'
)
"""A redrive, a discard and a dry run whose counts JSON holds (1e400 is infinity) and no int."""


@pytest.mark.parametrize(
    "command",
    [
        ("dead-letters", "cancel", "r-1"),
        ("dead-letters", "redrive", "--all"),
        ("dead-letters", "redrive", "--all", "--dry-run"),
        ("dead-letters", "discard", "--group", "g-1"),
    ],
)
def test_a_count_no_int_holds_is_json_of_another_shape(
    hostile: Start, command: tuple[str, ...]
) -> None:
    url = hostile(answer(INFINITE)).url

    result = run(url, *command)

    assert result.exit_code == 1, result.output
    said = one_line(result)
    assert "the API answered 200 with JSON of another shape (OverflowError: " in said, said
    assert said.endswith("is --api pointing at docproc?"), said


def test_an_answer_longer_than_the_limit_ends_in_one_line(
    hostile: Start, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(client, "ANSWER_LIMIT", 1024 * 1024)  # 256 MiB in use
    # No Content-Length: the body goes on until the connection closes, 3 MiB on.
    spaces = b" " * (3 * 1024 * 1024)
    endless = hostile(answer(b"{}" + spaces, headers=b"X-Body: until it closes\r\n"))
    declared = hostile(answer(b"{", headers=b"Content-Length: 10737418240\r\n"))

    read_on = run(endless.url, "status", "t-1")
    said_so = run(declared.url, "status", "t-1")

    for result, url in ((read_on, endless.url), (said_so, declared.url)):
        assert result.exit_code == 1, result.output
        said = one_line(result)
        assert said.startswith(f"docproc: GET {url}/tasks/t-1/status: the API answered 200 "), said
        assert "more than the 1 MiB the API's answers take at most" in said, said
        assert said.endswith("is --api pointing at docproc?"), said


def test_an_answer_packed_in_an_encoding_not_asked_for_is_not_unpacked(hostile: Start) -> None:
    status = b'{"state": "SUCCESS", "task": "t", "document_id": "d", "retries": 0, "error": null,'
    packed = gzip.compress(status + b' "progress": {"step": null, "percent": 100}}')
    server = hostile(
        answer(
            packed, headers=f"Content-Length: {len(packed)}\r\nContent-Encoding: gzip\r\n".encode()
        )
    )

    result = run(server.url, "status", "t-1")

    assert result.exit_code == 1, result.output
    assert "the API answered 200 in Content-Encoding gzip, not asked for" in one_line(result)
    assert b"\r\naccept-encoding: identity\r\n" in server.requests[0].lower()


def test_an_answer_cut_short_says_so_not_that_the_api_does_not_answer(hostile: Start) -> None:
    server = hostile(answer(b'{"items": [', headers=b"Content-Length: 100\r\n"))

    result = run(server.url, "status", "t-1")

    assert result.exit_code == 69, result.output
    assert one_line(result) == (
        f"docproc: the docproc API at {server.url} answered, but its answer to GET "
        "/tasks/t-1/status (200) was cut short after 11 bytes of its body (IncompleteRead(11 "
        "bytes read, 89 more expected)): try again; if it recurs, look at what is between here "
        "and the API"
    )
    assert len(server.requests) == 1 + len(client.RETRY_PAUSES)  # a read: tried again


def test_a_change_whose_answer_was_cut_short_is_not_to_be_sent_again_blindly(
    hostile: Start,
) -> None:
    """A redrive's 202 cut short said "try again": the job existed, and a second one started."""
    server = hostile(answer(b'{"id": "r-1", ', "202 Accepted", b"Content-Length: 90\r\n"))

    result = run(server.url, "dead-letters", "redrive", "--all")

    assert result.exit_code == 69, result.output
    assert "(202) was cut short" in one_line(result)
    assert "it was done, most likely: look (docproc status, dead-letters redrives)" in one_line(
        result
    )
    assert len(server.requests) == 1, "a change is not sent again"


def test_an_api_address_that_is_not_one_is_a_usage_error_or_a_setting_error() -> None:
    given = CliRunner().invoke(
        cli, ["status", "t-1", "--api", "http://127.0.0.1:abc"], catch_exceptions=False
    )
    made = CliRunner().invoke(
        cli, ["status", "t-1"], env={"DOCPROC_API_PORT": "80000"}, catch_exceptions=False
    )

    assert given.exit_code == 2, given.output  # as click's other usage errors
    assert (
        "Error: Invalid value for '--api': http://127.0.0.1:abc is not a valid address (its "
        "host or port); give one such as http://127.0.0.1:8000"
    ) in given.stderr
    assert made.exit_code == 78, made.output  # as `docproc up` says a bad setting
    assert one_line(made).startswith("docproc: DOCPROC_API_PORT='80000' is not allowed: ")
    assert one_line(made).endswith("a port from 1 to 65535 (or pass --api)")


TEXT = rb'{"text": "line 1\n\tline 2 \u001b]0;pwned\u0007 a\ud800b \u00e9"}'
JOB = (
    rb'{"id": "r\ud800", "state": "\u001b]0;pwned\u0007", "matched": 1, "published": 0,'
    rb' "failed": 0, "rate": 1}'
)
DRY_RUN = rb'{"matched": 1, "groups": [], "left_out": [{"name": "x\u001b[2J", "count": 2}]}'
REPUBLISHED = rb'{"queue": "q", "republish_count": "\u001b[2J", "recorded": true}'


@pytest.mark.parametrize(
    ("command", "body", "printed"),
    [
        (("text", "d-1"), TEXT, "line 1\n\tline 2 \\x1b]0;pwned\\x07 a\\ud800b é\n"),
        (("dead-letters", "redrive", "--all"), JOB, "redrive r\\ud800: 1 matched, at 1/s\n"),
        (
            ("dead-letters", "redrive", "--all", "--follow"),
            JOB,
            "redrive r\\ud800 \\x1b]0;pwned\\x07: 0 published, 0 failed of 1\n",
        ),
        (("dead-letters", "cancel", "r-1"), JOB, "redrive r-1 \\x1b]0;pwned\\x07: 0 published\n"),
        (("dead-letters", "redrive", "--all", "--dry-run"), DRY_RUN, "left out: 2 x\\x1b[2J\n"),
        (("dead-letters", "republish", "l-1"), REPUBLISHED, "(time \\x1b[2J)\n"),
    ],
    ids=["text", "redrive", "redrive-follow", "cancel", "dry-run", "republish"],
)
def test_what_the_api_says_is_printed_escaped(
    hostile: Start, command: tuple[str, ...], body: bytes, printed: str
) -> None:
    url = hostile(answer(body)).url

    result = run(url, *command)

    assert result.exit_code == 0, result.output
    assert "\x1b" not in result.stdout
    assert result.stdout.endswith(printed), result.stdout


# Python starts with SIGINT ignored when it was (a test run in the background): the handler a
# terminal's Ctrl-C meets, set again.
INTERRUPTIBLE = (
    "import signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "from service.cli import main; main()"
)


def test_ctrl_c_stops_submit_at_once_while_an_upload_waits_for_its_answer(
    hostile: Start, tmp_path: Path
) -> None:
    (tmp_path / "a.txt").write_text("hello")
    server = hostile(lambda server, *_: server.closing.wait())  # reads, never answers
    submit = subprocess.Popen(
        [
            sys.executable,
            "-c",
            INTERRUPTIBLE,
            "submit",
            str(tmp_path / "a.txt"),
            "--api",
            server.url,
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.received.wait(30), "the upload was not sent within 30 s"
        submit.send_signal(signal.SIGINT)
        _, stderr = submit.communicate(timeout=5)  # was 30 s: the upload's deadline
    finally:
        if submit.poll() is None:
            submit.kill()
            submit.communicate()

    assert submit.returncode == 130, stderr
    assert stderr.splitlines()[-1].startswith("docproc: submit interrupted; "), stderr
    assert "Traceback" not in stderr


def accepting() -> Callable[..., None]:
    """A respond that accepts every upload, as the API does."""
    ids = itertools.count(1)

    def respond(server: HostileApi, connection: socket.socket, request: bytes) -> None:
        n = next(ids)
        body = f'{{"status": "PENDING", "document_id": "d-{n}", "task_id": "t-{n}"}}'.encode()
        answer(body, status="202 Accepted")(server, connection, request)

    return respond


def test_a_file_named_like_a_glob_is_that_file_and_a_name_of_none_is_a_glob(
    hostile: Start, tmp_path: Path
) -> None:
    (tmp_path / "a[1].txt").write_text("the file named a[1].txt")
    (tmp_path / "a1.txt").write_text("the file named a1.txt")
    server = hostile(accepting())

    literal = run(server.url, "submit", str(tmp_path / "a[1].txt"))
    pattern = run(server.url, "submit", str(tmp_path / "a?.txt"))

    assert literal.exit_code == 0, literal.output
    assert pattern.exit_code == 0, pattern.output
    assert [line.split()[0] for line in literal.stdout.splitlines()[2:]] == [
        str(tmp_path / "a[1].txt")
    ]
    assert [line.split()[0] for line in pattern.stdout.splitlines()[2:]] == [
        str(tmp_path / "a1.txt")
    ]
    assert [
        request.rsplit(b"\r\n\r\n", 1)[1].count(b"the file named") for request in server.requests
    ] == [1, 1]
    assert b"the file named a[1].txt" in server.requests[0]
    assert b"the file named a1.txt" in server.requests[1]


@pytest.mark.parametrize("named", ["docs", "docs/**/*.txt"], ids=["folder", "double-star"])
def test_a_folder_that_cannot_be_read_is_said_in_its_row_and_the_rest_are_uploaded(
    named: str, hostile: Start, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    private = tmp_path / "docs" / "private"
    private.mkdir(parents=True)
    (tmp_path / "docs" / "a.txt").write_text("readable")
    (private / "s.txt").write_text("not ours to read")
    scanning = os.scandir

    def scandir(path: str) -> object:  # as if private/ were not ours (tests run as root)
        if Path(path) == private:
            raise PermissionError(13, "Permission denied", path)
        return scanning(path)

    monkeypatch.setattr(os, "scandir", scandir)
    server = hostile(accepting())

    result = run(server.url, "submit", str(tmp_path / named))

    assert result.exit_code == 1, result.output
    rows = [line.split() for line in result.stdout.splitlines()[2:]]
    assert [row[:2] for row in rows] == [
        [str(tmp_path / "docs" / "a.txt"), "PENDING"],
        [str(private), "UNREADABLE"],
    ]
    assert rows[1][2:] == ["Permission", "denied"]
    assert len(server.requests) == 1

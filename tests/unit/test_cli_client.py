"""The CLI's HTTP client against the API's own settings."""

from __future__ import annotations

import socket
import struct
import threading

import pytest

from service.cli.client import CLIENT_KEEP_ALIVE, RETRY_PAUSES, Api
from service.cli.serve import SERVER_KEEP_ALIVE


def test_the_client_drops_idle_connections_before_the_api_closes_them() -> None:
    # Equal, a request sent on a connection as the server closed it failed (CI, 2026-12-04).
    assert CLIENT_KEEP_ALIVE < SERVER_KEEP_ALIVE


def test_a_connection_idle_longer_than_the_client_keeps_one_is_made_again() -> None:
    server = _KeepAliveServer()
    try:
        with Api(server.url, None) as api:
            assert api.get("/health") == {"ok": True}
            assert api.get("/health") == {"ok": True}
            assert server.connections == 1  # kept between two requests
            [idle] = [c for c in api.http.pool.queue if c is not None]  # type: ignore[union-attr]
            idle.docproc_idle_since -= CLIENT_KEEP_ALIVE + 0.1  # as if it had sat that long
            assert api.get("/health") == {"ok": True}
        assert server.connections == 2
    finally:
        server.close()


ANSWER = (
    b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 12\r\n\r\n{"ok": true}'
)


class _Server:
    """An HTTP server on 127.0.0.1 handing each connection to `_handle`, in a thread of its
    own, and counting them."""

    def __init__(self) -> None:
        self.connections = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:  # closed
                return
            self.connections += 1
            thread = threading.Thread(target=self._handle, args=(connection,), daemon=True)
            self.threads.append(thread)
            thread.start()

    def _handle(self, connection: socket.socket) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self.listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept(), as close() does not
        self.listener.close()
        for thread in self.threads:
            thread.join(5)
            assert not thread.is_alive()


class _KeepAliveServer(_Server):
    """Answers `{"ok": true}` to every request (no body) on a connection until the client
    closes it."""

    def _handle(self, connection: socket.socket) -> None:
        with connection:
            pending = b""
            while chunk := connection.recv(65536):
                pending += chunk
                while b"\r\n\r\n" in pending:
                    _, pending = pending.split(b"\r\n\r\n", 1)
                    connection.sendall(ANSWER)


class _FlakyServer(_Server):
    """Resets the first `resets` connections once it has read a request from them (RST:
    SO_LINGER 0), and answers the others `{"ok": true}` and closes them."""

    def __init__(self, resets: int) -> None:
        self.resets = resets
        self.requests: list[bytes] = []
        self.lock = threading.Lock()
        super().__init__()

    def _handle(self, connection: socket.socket) -> None:
        with connection:
            request = connection.recv(65536)
            with self.lock:
                self.requests.append(request.split(b"\r\n", 1)[0])
                reset = len(self.requests) <= self.resets
            if reset:
                connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                return
            connection.sendall(ANSWER.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1))


def test_a_read_whose_connection_is_reset_is_sent_again() -> None:
    server = _FlakyServer(resets=2)
    try:
        with Api(server.url, None) as api:
            assert api.get("/tasks/statuses", params={"id": "t-1"}) == {"ok": True}
        assert len(server.requests) == 3
    finally:
        server.close()


def test_an_upload_with_an_idempotency_key_is_sent_again_and_one_without_is_not() -> None:
    server = _FlakyServer(resets=1)
    try:
        with Api(server.url, None) as api:
            answer = api.send("POST", "/documents", headers={"Idempotency-Key": "k"}, content=b"x")
            assert answer.json() == {"ok": True}
            server.requests.clear()
            server.resets = 1
            with pytest.raises(SystemExit):  # the one-line exit: the API did not answer
                api.post("/documents", content=b"x")
        assert server.requests == [b"POST /documents HTTP/1.1"]
    finally:
        server.close()


def test_a_read_from_an_api_that_keeps_resetting_ends_in_the_one_line_exit(
    capsys: pytest.CaptureFixture[str],
) -> None:
    server = _FlakyServer(resets=100)
    try:
        with Api(server.url, None) as api, pytest.raises(SystemExit):
            api.get("/health")
        assert len(server.requests) == 1 + len(RETRY_PAUSES)
        assert "does not answer (ProtocolError)" in capsys.readouterr().err
    finally:
        server.close()

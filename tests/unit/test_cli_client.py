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
    with Api("http://127.0.0.1:1", None) as api:
        pool = api.http._transport._pool  # type: ignore[attr-defined]
        assert pool._keepalive_expiry == CLIENT_KEEP_ALIVE


class _FlakyServer:
    """An HTTP server on 127.0.0.1 that resets the first `resets` connections once it has read a
    request from them (RST: SO_LINGER 0), and answers the others `{"ok": true}`."""

    def __init__(self, resets: int) -> None:
        self.resets = resets
        self.requests: list[bytes] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:  # closed
                return
            with connection:
                request = connection.recv(65536)
                self.requests.append(request.split(b"\r\n", 1)[0])
                if len(self.requests) <= self.resets:
                    connection.setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                    )
                    continue
                body = b'{"ok": true}'
                connection.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
                    + f"Content-Length: {len(body)}\r\n\r\n".encode()
                    + body
                )

    def close(self) -> None:
        self.listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept(), as close() does not
        self.listener.close()
        self.thread.join(5)
        assert not self.thread.is_alive()


def test_a_read_whose_connection_is_reset_is_sent_again() -> None:
    server = _FlakyServer(resets=2)
    try:
        with Api(server.url, None) as api:
            assert api.get("/tasks/statuses?id=t-1") == {"ok": True}
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
        assert "does not answer (ReadError)" in capsys.readouterr().err
    finally:
        server.close()

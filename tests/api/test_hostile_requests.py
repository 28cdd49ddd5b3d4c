"""Requests a review sent to the API that were once answered 500 or 503, or with a sentence
that was wrong: each is now a problem saying what was wrong with it."""

from __future__ import annotations

import asyncio
import base64
import json
import select
import socket
from collections.abc import Callable

import httpx
import pytest

from service.api.app import create_app
from service.settings import Settings
from tests.api.conftest import Client
from tests.support import served_by_uvicorn

pytestmark = pytest.mark.rabbitmq


def is_problem(response: httpx.Response, status: int) -> dict[str, object]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem: dict[str, object] = response.json()
    return problem


async def test_a_body_nested_too_deep_is_a_400(client: Client) -> None:
    """msgspec stops at a depth; its RecursionError was a 500."""
    deep = b"[" * 1000 + b"]" * 1000
    response = await client.post(
        "/dead-letters/redrive", content=deep, headers={"Content-Type": "application/json"}
    )
    assert "nests too deep" in str(is_problem(response, 400)["detail"])


async def test_a_nul_in_a_files_path_is_a_404(client: Client) -> None:
    """The file system refuses a path with a NUL (a 500): no file has one."""
    for path in ("/schema/assets/%00", "/ui/static/%00", "/schema/assets/a%00.js"):
        is_problem(await client.get(path), 404)


async def test_a_cursor_at_the_calendars_edge_is_a_400_not_an_outage(client: Client) -> None:
    """0001-01-01T00:00+14:00 is no time in UTC; the store said so with an error, which the API
    answered as a 503 (the store unavailable)."""
    forged = base64.urlsafe_b64encode(b"0001-01-01T00:00:00+14:00|x").decode()
    response = await client.get("/dead-letters", params={"cursor": forged})
    assert "cursor" in str(is_problem(response, 400)["detail"])


@pytest.mark.parametrize("row_id", [b"a\x00b", b"a\nb"])
async def test_a_cursor_naming_no_id_the_store_gave_out_is_not_a_cursor(
    client: Client, row_id: bytes
) -> None:
    """A NUL in a cursor's id reached PostgreSQL, whose refusal the API answered "the store
    refused a value" (SQLite answered a page); no id the store gives out holds one."""
    forged = base64.urlsafe_b64encode(b"2026-01-01T00:00:00+00:00|" + row_id).decode()
    response = await client.get("/dead-letters", params={"cursor": forged})
    assert "not a next_cursor this API gave out" in str(is_problem(response, 400)["detail"])


async def test_a_body_over_its_endpoints_limit_is_told_that_limit(client: Client) -> None:
    """An operator's JSON body has Litestar's limit, not the upload's; an upload sent in chunks
    (no Content-Length) gets the upload's sentence whole."""
    big = b'{"queue": "' + b"x" * (11 * 1024 * 1024) + b'"}'
    response = await client.post(
        "/dead-letters/redrive", content=big, headers={"Content-Type": "application/json"}
    )
    detail = str(is_problem(response, 413)["detail"])
    assert "bytes this endpoint takes" in detail
    assert "DOCPROC_MAX_UPLOAD_BYTES" not in detail


async def test_an_upload_over_the_limit_sent_in_chunks_gets_the_uploads_sentence(
    settings_for: Callable[..., Settings],
) -> None:
    """With no Content-Length, the limit is met as the body streams in: the sentence once read
    "the upload is, more than"."""
    app = create_app(settings_for(DOCPROC_MAX_UPLOAD_BYTES="1000"))
    head = b'--B\r\nContent-Disposition: form-data; name="file"; filename="a.txt"\r\n\r\n'
    body = head + b"a" * 200_000
    with served_by_uvicorn(app) as port:
        received = await asyncio.to_thread(_sent_in_chunks, port, body)
    status, _, rest = received.partition(b"\r\n")
    assert status == b"HTTP/1.1 413 Request Entity Too Large", received[:200]
    problem = json.loads(rest.partition(b"\r\n\r\n")[2])
    assert problem["detail"] == (
        "the upload is more than the 1000 allowed (DOCPROC_MAX_UPLOAD_BYTES)"
    )


def _sent_in_chunks(port: int, body: bytes) -> bytes:
    """The answer to `body` sent in chunks, read as soon as it comes (the server answers, and
    closes, before the body's end: what the client sends after that resets the connection)."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as client:
        client.sendall(
            b"POST /documents HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
            b"Content-Type: multipart/form-data; boundary=B\r\n\r\n"
        )
        for start in range(0, len(body), 16384):
            piece = body[start : start + 16384]
            client.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
            if select.select([client], [], [], 0.05)[0]:
                break
        received = b""
        while b"\r\n\r\n" not in received or not received.endswith(b"}"):
            piece = client.recv(65536)
            assert piece, f"the connection closed after {received!r}"
            received += piece
    return received


async def test_a_request_no_route_matches_has_a_correlation_id_and_is_counted(
    client: Client,
) -> None:
    """Litestar runs middlewares around matched routes only: its router's 404s and 405s carried
    no X-Correlation-ID and were in no metric, so a scan of paths went unseen."""
    missing = await client.get("/no/such/path", headers={"X-Correlation-ID": "scan-1"})
    wrong = await client.put("/health")
    assert missing.headers["x-correlation-id"] == "scan-1"
    is_problem(missing, 404)
    assert len(wrong.headers["x-correlation-id"]) == 32
    is_problem(wrong, 405)
    metrics = (await client.get("/metrics")).text
    for method, status in (("GET", "404"), ("PUT", "405")):
        assert any(
            line.startswith("docproc_requests_total{")
            and f'method="{method}"' in line
            and 'path="(unrouted)"' in line
            and f'status_code="{status}"' in line
            for line in metrics.splitlines()
        ), metrics
    assert "/no/such/path" not in metrics

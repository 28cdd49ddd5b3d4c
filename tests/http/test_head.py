"""HEAD is answered wherever GET is, as GET is and without the body (RFC 9110 9.3.2): a load
balancer's or an uptime monitor's `HEAD /health` once got 405. Served by uvicorn with docproc's
protocol, which sends the head of the response only."""

from __future__ import annotations

from collections.abc import Callable

import httpx

from service.api.app import create_app
from service.settings import Settings
from tests.support import RecordingPublisher, served_by_uvicorn


def test_head_is_answered_as_get_without_the_body(
    settings_for: Callable[..., Settings], publisher: RecordingPublisher
) -> None:
    app = create_app(settings_for(), publisher=publisher)
    with served_by_uvicorn(app) as port, httpx.Client(base_url=f"http://127.0.0.1:{port}") as http:
        for path, status in [
            ("/health", 200),
            ("/schema/openapi.json", 200),
            ("/tasks/no-such-task/status", 404),
        ]:
            got, head = http.get(path), http.head(path)
            assert got.status_code == head.status_code == status, (path, head.status_code)
            assert head.content == b"", path
            assert got.content, path
            assert head.headers["content-type"] == got.headers["content-type"], path
            assert head.headers["content-length"] == str(len(got.content)), path
            assert head.headers["x-correlation-id"], path
        posted_only = http.head("/documents")
        assert posted_only.status_code == 405
        assert posted_only.content == b""


def test_head_needs_the_key_a_get_needs(
    settings_for: Callable[..., Settings], publisher: RecordingPublisher
) -> None:
    app = create_app(settings_for(DOCPROC_API_KEYS="sekrit"), publisher=publisher)
    with served_by_uvicorn(app) as port, httpx.Client(base_url=f"http://127.0.0.1:{port}") as http:
        assert http.head("/health").status_code == 200
        assert http.head("/tasks/t/status").status_code == 401
        assert (
            http.head("/tasks/t/status", headers={"Authorization": "Bearer sekrit"}).status_code
            == 404
        )

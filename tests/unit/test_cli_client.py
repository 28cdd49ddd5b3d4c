"""The CLI's HTTP client against the API's own settings."""

from __future__ import annotations

from service.cli.client import CLIENT_KEEP_ALIVE, Api
from service.cli.serve import SERVER_KEEP_ALIVE


def test_the_client_drops_idle_connections_before_the_api_closes_them() -> None:
    # Equal, a request sent on a connection as the server closed it failed (CI, 2026-12-04).
    assert CLIENT_KEEP_ALIVE < SERVER_KEEP_ALIVE
    with Api("http://127.0.0.1:1", None) as api:
        pool = api.http._transport._pool  # type: ignore[attr-defined]
        assert pool._keepalive_expiry == CLIENT_KEEP_ALIVE

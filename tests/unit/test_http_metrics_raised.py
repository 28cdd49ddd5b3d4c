"""The HTTP metrics of a request that a middleware inside them refuses by raising: counted with
the status the client gets, not as a 500."""

from __future__ import annotations

from litestar import Litestar, get
from litestar.exceptions import HTTPException, NotAuthorizedException, PermissionDeniedException
from litestar.testing import AsyncTestClient
from litestar.types import ASGIApp, Receive, Scope, Send
from prometheus_client import REGISTRY

from service.api.http_metrics import APP_NAME, http_metrics_middleware

PATH = "/raised-in-middleware"


def refusing(exception: HTTPException) -> ASGIApp:
    """An app whose one route sits behind a middleware that raises `exception`, as the API key
    check does, inside the HTTP metrics."""

    def refuse(app: ASGIApp) -> ASGIApp:
        async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
            raise exception

        return middleware

    @get(PATH, middleware=[refuse])
    async def handler() -> str:
        return "never"

    return Litestar([handler], middleware=[http_metrics_middleware])


def counted(name: str, status: int) -> float:
    labels = {"method": "GET", "path": PATH, "status_code": str(status), "app_name": APP_NAME}
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_a_middleware_refusal_is_counted_with_its_own_status() -> None:
    refusals = [
        NotAuthorizedException(),
        PermissionDeniedException(),
        HTTPException(status_code=429),
    ]
    before = {
        (name, status): counted(name, status)
        for name in ("docproc_requests_total", "docproc_requests_error_total")
        for status in (401, 403, 429, 500)
    }

    for refusal in refusals:
        async with AsyncTestClient(refusing(refusal)) as client:
            answer = await client.get(PATH)
        assert answer.status_code == refusal.status_code

    def added(name: str, status: int) -> float:
        return counted(name, status) - before[name, status]

    assert [added("docproc_requests_total", s) for s in (401, 403, 429)] == [1, 1, 1]
    assert added("docproc_requests_total", 500) == 0
    assert added("docproc_requests_error_total", 500) == 0

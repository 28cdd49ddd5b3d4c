"""A property-based run of the OpenAPI document (schemathesis) against the real server — uvicorn,
broker and store: no 5xx, and no response that breaks the document."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from service.store.migrations import upgrade
from tests.support import Process, Vhost, docproc_command, eventually, free_port

pytestmark = pytest.mark.rabbitmq


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def api_schema(
    api_vhost: Vhost, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Any]:
    directory = Path(tmp_path_factory.mktemp("fuzz"))
    url = f"sqlite:///{directory / 'docproc.db'}"
    upgrade(url)
    port = free_port()
    server = Process(
        docproc_command("serve", "api"),
        api_vhost.env(
            DOCPROC_DATABASE_URL=url,
            DOCPROC_API_PORT=str(port),
            DOCPROC_MAX_UPLOAD_BYTES="65536",
            CELERY_LOG_LEVEL="WARNING",
        ),
        directory / "api.log",
    )
    base = f"http://127.0.0.1:{port}"

    async def ready() -> bool | None:
        try:
            async with httpx.AsyncClient() as client:
                return True if (await client.get(f"{base}/ready")).status_code == 200 else None
        except httpx.TransportError:
            return None

    try:
        await eventually(ready, 30, "the API to be ready", interval=0.2)
        yield await asyncio.to_thread(schemathesis.openapi.from_url, f"{base}/schema/openapi.json")
    finally:
        server.stop()


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


def fuzzer(operation: Any, calls: dict[str, int]) -> Callable[[], None]:
    """A hypothesis test of one operation, counting the requests it makes."""
    label = operation.label

    @given(case=operation.as_strategy())
    @settings(
        max_examples=50,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def fuzz(case: Any) -> None:
        calls[label] = calls.get(label, 0) + 1
        case.call_and_validate(checks=CHECKS)

    return fuzz  # type: ignore[no-any-return]


def test_no_operation_answers_5xx_or_outside_its_documented_responses(api_schema: Any) -> None:
    failures: dict[str, str] = {}
    calls: dict[str, int] = {}
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 18

    for operation in operations:
        try:
            fuzzer(operation, calls)()
        except (Exception, BaseExceptionGroup) as exc:  # every operation's report, not the first
            failures[operation.label] = str(exc)[:2000]

    assert not failures, "\n\n".join(f"{label}:\n{text}" for label, text in failures.items())
    assert all(calls.get(operation.label) for operation in operations), calls

"""Service fixtures: a real RabbitMQ (fresh vhost per session) and a real PostgreSQL (fresh database
per session). Each comes from the environment, else localhost, else testcontainers where a Docker
engine answers; with none, tests fail under CI=true and skip elsewhere, saying why."""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack
from importlib.metadata import version
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest
import pytest_asyncio

from tests.support import (
    RabbitMQ,
    Vhost,
    broker_from_environment,
    create_vhost,
    delete_vhost,
    missing,
    port_open,
)


def pytest_configure() -> None:
    """Run in the background by a script (`.ci/run &`, no job control), this process starts with
    SIGINT ignored, and every command a test starts would inherit that: `docproc selftest` would
    then run through a Ctrl-C that a test sends it, as no terminal user's would. Catching SIGINT
    here gives the children its default again (exec resets caught signals, not ignored ones)."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_report_header() -> str:
    """The versions a run proved: the lock's, or the newest under `tox -e upgrade`."""
    names = ("celery", "kombu", "aio-pika", "litestar", "msgspec", "sqlalchemy", "pypdf")
    return "docproc dependencies: " + ", ".join(f"{name} {version(name)}" for name in names)


def _docker_answers() -> bool:
    try:
        import docker

        docker.from_env().ping()
    except Exception:
        return False
    return True


@pytest.fixture(scope="session")
def rabbitmq() -> Iterator[RabbitMQ]:
    with ExitStack() as stack:
        broker = broker_from_environment()
        if broker is None and _docker_answers():
            from testcontainers.rabbitmq import RabbitMqContainer

            container = stack.enter_context(RabbitMqContainer("rabbitmq:3.13-management"))
            host = container.get_container_host_ip()
            broker = RabbitMQ(
                host=host,
                port=int(container.get_exposed_port(5672)),
                user="guest",
                password="guest",
                management_url=f"http://{host}:{container.get_exposed_port(15672)}",
            )
        if broker is None:
            missing(
                "no RabbitMQ: set DOCPROC_TEST_BROKER_URL, start one on localhost "
                "(infra/rabbitmq/local.sh) or run a Docker engine for testcontainers"
            )
        assert broker is not None
        try:
            httpx.get(
                f"{broker.management_url}/api/overview",
                auth=(broker.user, broker.password),
                timeout=5,
            ).raise_for_status()
        except httpx.HTTPError as exc:
            missing(
                f"RabbitMQ's management API does not answer at {broker.management_url} ({exc}); "
                "enable it: rabbitmq-plugins enable rabbitmq_management"
            )
        yield broker


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def broker(rabbitmq: RabbitMQ) -> AsyncIterator[Vhost]:
    """The test session's own vhost, deleted at the end."""
    name = await create_vhost(rabbitmq, "docproc-session")
    try:
        yield Vhost(rabbitmq, name)
    finally:
        await delete_vhost(rabbitmq, name)


@pytest_asyncio.fixture(loop_scope="session")
async def fresh_vhost(rabbitmq: RabbitMQ) -> AsyncIterator[Vhost]:
    """A vhost of the test's own, for tests that need an empty broker."""
    name = await create_vhost(rabbitmq)
    try:
        yield Vhost(rabbitmq, name)
    finally:
        await delete_vhost(rabbitmq, name)


def _postgres_admin_url() -> str | None:
    url = os.environ.get("DOCPROC_TEST_POSTGRES_URL")
    if url:
        return url
    if port_open("127.0.0.1", 5432):
        return "postgresql://postgres@127.0.0.1:5432/postgres"
    return None


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """The URL of a database created for this session and dropped at its end."""
    import psycopg

    with ExitStack() as stack:
        admin = _postgres_admin_url()
        if admin is None and _docker_answers():
            from testcontainers.postgres import PostgresContainer

            container: Any = stack.enter_context(PostgresContainer("postgres:16-alpine"))
            admin = container.get_connection_url(driver=None)
        if admin is None:
            missing(
                "no PostgreSQL: set DOCPROC_TEST_POSTGRES_URL, start one on localhost "
                "or run a Docker engine for testcontainers"
            )
        assert admin is not None
        name = f"docproc_test_{uuid.uuid4().hex[:10]}"
        try:
            with psycopg.connect(admin, autocommit=True, connect_timeout=5) as connection:
                connection.execute(f'CREATE DATABASE "{name}"')
        except psycopg.OperationalError as exc:
            missing(f"PostgreSQL at {admin} refused: {exc}")
        parts = urlsplit(admin)
        yield urlunsplit(parts._replace(path=f"/{name}"))
        with psycopg.connect(admin, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

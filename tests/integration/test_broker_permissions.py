"""A broker that answers and refuses: a user without the configure permission, a vhost that does
not exist or is not the user's, a wrong password. Each is a setting to fix (exit 78, one line
naming the fix), not a traceback, and not "RabbitMQ is not reachable … start one".

The user and the vhosts are the test's own, made here and deleted after: no other vhost's
permissions, and nothing node-wide, change."""

from __future__ import annotations

import asyncio
import secrets
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
import pytest_asyncio

from service.broker.connection import BrokerRefused, connect
from service.errors import BrokerUnavailable
from tests.support import (
    RabbitMQ,
    Vhost,
    create_vhost,
    delete_vhost,
    free_port,
    run_docproc,
)

pytestmark = pytest.mark.rabbitmq


@dataclass(frozen=True)
class Stranger:
    """A RabbitMQ user of the test's own, with no tags and, at first, no permissions."""

    rabbitmq: RabbitMQ
    name: str
    password: str

    def url(self, vhost: str, password: str | None = None) -> str:
        secret = quote(self.password if password is None else password, safe="")
        return (
            f"amqp://{quote(self.name, safe='')}:{secret}@{self.rabbitmq.host}:"
            f"{self.rabbitmq.port}/{quote(vhost, safe='')}"
        )

    async def permit(self, vhost: str, configure: str, write: str, read: str) -> None:
        path = f"/api/permissions/{quote(vhost, safe='')}/{quote(self.name, safe='')}"
        body = {"configure": configure, "write": write, "read": read}
        await _management("PUT", self.rabbitmq, path, json=body)


async def _management(
    method: str, rabbitmq: RabbitMQ, path: str, json: dict[str, str] | None = None
) -> None:
    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.request(
            method,
            rabbitmq.management_url.rstrip("/") + path,
            auth=(rabbitmq.user, rabbitmq.password),
            json=json,
        )
    if not (method == "DELETE" and response.status_code == 404):
        response.raise_for_status()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def stranger(rabbitmq: RabbitMQ) -> AsyncIterator[Stranger]:
    user = Stranger(rabbitmq, f"docproc-test-{uuid.uuid4().hex[:10]}", secrets.token_hex(8))
    path = f"/api/users/{quote(user.name, safe='')}"
    await _management("PUT", rabbitmq, path, json={"password": user.password, "tags": ""})
    try:
        yield user
    finally:
        await _management("DELETE", rabbitmq, path)


@pytest_asyncio.fixture(loop_scope="session")
async def own_vhost(rabbitmq: RabbitMQ) -> AsyncIterator[str]:
    name = await create_vhost(rabbitmq)
    try:
        yield name
    finally:
        await delete_vhost(rabbitmq, name)


def _env(rabbitmq: RabbitMQ, vhost: str, broker_url: str, tmp_path: Path) -> dict[str, str]:
    return Vhost(rabbitmq, vhost).env(
        DOCPROC_BROKER_URL=broker_url,
        DOCPROC_DATA_DIR=str(tmp_path),
        DOCPROC_API_PORT=str(free_port()),
        CELERY_CONCURRENCY="1",
    )


def _one_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.startswith("docproc: ")]
    assert len(lines) == 1, stderr
    return lines[0]


@pytest.mark.parametrize(
    "command",
    [("topology", "declare"), ("serve", "worker"), ("up",)],
    ids=["topology-declare", "worker", "up"],
)
async def test_a_user_who_may_not_configure_is_told_the_permissions_to_give(
    stranger: Stranger, own_vhost: str, tmp_path: Path, command: tuple[str, ...]
) -> None:
    await stranger.permit(own_vhost, "^$", ".*", ".*")
    env = _env(stranger.rabbitmq, own_vhost, stranger.url(own_vhost), tmp_path)

    done = await asyncio.to_thread(run_docproc, *command, env=env, timeout=60)

    assert done.returncode == 78, done.stderr
    line = _one_line(done.stderr)
    assert "ACCESS_REFUSED" in line
    assert f"rabbitmqctl set_permissions -p {own_vhost} {stranger.name} '.*' '.*' '.*'" in line
    assert stranger.password not in done.stderr + done.stdout


async def test_a_vhost_that_does_not_exist_is_a_setting_not_an_unreachable_broker(
    rabbitmq: RabbitMQ, tmp_path: Path
) -> None:
    missing = f"docproc-test-missing-{uuid.uuid4().hex[:10]}"  # never created
    env = _env(rabbitmq, missing, rabbitmq.url(missing), tmp_path)

    done = await asyncio.to_thread(run_docproc, "topology", "declare", env=env, timeout=60)

    assert done.returncode == 78, done.stderr
    line = _one_line(done.stderr)
    assert f"rabbitmqctl add_vhost {missing}" in line
    assert "DOCPROC_BROKER_URL" in line
    assert "not reachable" not in line
    assert "local.sh" not in line


async def test_a_vhost_the_user_has_no_permissions_on_names_both_fixes(
    stranger: Stranger, own_vhost: str
) -> None:
    settings = Vhost(stranger.rabbitmq, own_vhost).settings(
        DOCPROC_BROKER_URL=stranger.url(own_vhost)
    )

    with pytest.raises(BrokerRefused) as refused:
        await connect(settings, name="test")

    message = str(refused.value)
    assert f"rabbitmqctl set_permissions -p {own_vhost} {stranger.name} '.*' '.*' '.*'" in message
    assert f"rabbitmqctl add_vhost {own_vhost}" in message
    # A process that reconnects (the API's publisher, the DLQ consumer) keeps trying.
    assert isinstance(refused.value, BrokerUnavailable)


async def test_a_wrong_password_says_to_check_the_credentials(
    stranger: Stranger, own_vhost: str
) -> None:
    await stranger.permit(own_vhost, ".*", ".*", ".*")
    wrong = stranger.url(own_vhost, password="wrong-" + stranger.password)
    settings = Vhost(stranger.rabbitmq, own_vhost).settings(DOCPROC_BROKER_URL=wrong)

    with pytest.raises(BrokerRefused) as refused:
        await connect(settings, name="test")

    message = str(refused.value)
    assert f"refused user {stranger.name!r}" in message
    assert "password in DOCPROC_BROKER_URL" in message
    assert stranger.password not in message
    assert "not reachable" not in message

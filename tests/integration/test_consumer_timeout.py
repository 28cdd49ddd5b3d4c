"""`docproc topology check` against a real broker: it warns when RabbitMQ's consumer timeout is not
longer than CELERY_TIME_LIMIT, and the warning never changes its exit status."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess

import pytest

from service.broker.consumer_timeout import LOCAL_HOSTS
from tests.support import Vhost, missing, run_docproc

pytestmark = pytest.mark.rabbitmq

DEFAULT_TIME_LIMIT = 2400


def node_consumer_timeout(vhost: Vhost) -> int:
    """The broker's consumer_timeout in ms, read here independently of docproc's own reading."""
    rabbitmqctl = shutil.which("rabbitmqctl")
    if vhost.rabbitmq.host not in LOCAL_HOSTS or rabbitmqctl is None:
        missing(
            "the broker's consumer_timeout can only be read on its own machine with rabbitmqctl "
            f"(broker at {vhost.rabbitmq.host}, rabbitmqctl {rabbitmqctl or 'not installed'})"
        )
    assert rabbitmqctl is not None
    answer = subprocess.run(
        [rabbitmqctl, "-q", "eval", "application:get_env(rabbit, consumer_timeout)."],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    found = re.fullmatch(r"\{ok,(\d+)\}", answer.stdout.strip())
    if found is None:
        missing(f"rabbitmqctl did not tell the consumer_timeout: {answer.stdout}{answer.stderr}")
    assert found is not None
    return int(found.group(1))


def timeout_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith(("warning:", "note:"))]


async def declared(vhost: Vhost) -> None:
    done = await asyncio.to_thread(run_docproc, "topology", "declare", env=vhost.env())
    assert done.returncode == 0, done.stdout + done.stderr


async def test_check_warns_when_the_consumer_timeout_is_not_longer_than_the_time_limit(
    fresh_vhost: Vhost,
) -> None:
    node_ms = node_consumer_timeout(fresh_vhost)
    await declared(fresh_vhost)

    checked = await asyncio.to_thread(run_docproc, "topology", "check", env=fresh_vhost.env())

    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "matches" in checked.stdout
    lines = timeout_lines(checked.stderr)
    if node_ms > DEFAULT_TIME_LIMIT * 1000:
        # A broker configured like infra/rabbitmq/rabbitmq.conf: nothing to warn about.
        assert lines == [], checked.stderr
        return
    # Debian's RabbitMQ keeps the 30 min default, shorter than the 40 min default time limit.
    assert len(lines) == 1, checked.stderr
    warning = lines[0]
    assert warning.startswith("warning: ")
    assert f"{node_ms} ms, the consumer_timeout of node " in warning
    assert f"CELERY_TIME_LIMIT={DEFAULT_TIME_LIMIT} s" in warning
    assert "Fix: set consumer_timeout in rabbitmq.conf" in warning
    assert "infra/rabbitmq/rabbitmq.conf" in warning


async def test_a_time_limit_within_the_timeout_is_not_warned_about_and_drift_still_fails(
    fresh_vhost: Vhost,
) -> None:
    node_ms = node_consumer_timeout(fresh_vhost)
    if node_ms < 180_000:
        pytest.skip(f"the broker's consumer_timeout ({node_ms} ms) leaves no time limit below it")
    within = {
        "CELERY_TIME_LIMIT": str(node_ms // 1000 - 60),
        "CELERY_SOFT_TIME_LIMIT": str(node_ms // 1000 - 120),
    }
    beyond = {"CELERY_TIME_LIMIT": str(node_ms // 1000), "CELERY_SOFT_TIME_LIMIT": "60"}

    # Nothing declared: the topology has drifted, and that alone decides the exit status.
    quiet = await asyncio.to_thread(run_docproc, "topology", "check", env=fresh_vhost.env(**within))
    warned = await asyncio.to_thread(
        run_docproc, "topology", "check", env=fresh_vhost.env(**beyond)
    )

    assert quiet.returncode == 1, quiet.stdout + quiet.stderr
    assert timeout_lines(quiet.stderr) == [], quiet.stderr
    assert warned.returncode == 1, warned.stdout + warned.stderr
    (warning,) = timeout_lines(warned.stderr)
    assert warning.startswith("warning: ")
    assert f"CELERY_TIME_LIMIT={node_ms // 1000} s" in warning

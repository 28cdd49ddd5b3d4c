"""Is RabbitMQ's consumer timeout longer than CELERY_TIME_LIMIT? Where to read it, and the check.

RabbitMQ closes the channel of a consumer that holds a delivery unacknowledged longer than the
consumer timeout (30 min by default) and requeues what was unacknowledged on it. docproc's worker
acknowledges a task when it ends, so a task holds its delivery for up to CELERY_TIME_LIMIT (40 min
by default): a shorter timeout cuts long tasks off, and they run again.

What is readable: the node's `consumer_timeout` (rabbitmq.conf) lives in the `rabbit` application's
environment, which no management API endpoint shows, in 3.10 as in 3.13; `rabbitmqctl eval` reads
it, on the broker's machine and with its Erlang cookie only. Since RabbitMQ 3.12 a queue can
override it with the `x-consumer-timeout` argument or the `consumer-timeout` policy key (the smaller
of the two applies): the management API shows both.
"""

from __future__ import annotations

import asyncio
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

import httpx

from service.broker.management import Management, QueuePolicy
from service.errors import DocprocError
from service.settings import Settings
from service.topology import WORK_QUEUES

CONFIG_FILE = "infra/rabbitmq/rabbitmq.conf"
PER_QUEUE_SINCE = (3, 12)
LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
RABBITMQCTL_TIMEOUT = 30.0
# What `rabbitmqctl eval` prints: {ok,1800000}, or undefined when no timeout is enforced.
_EVAL_EXPRESSION = "application:get_env(rabbit, consumer_timeout)."
_EVAL_ANSWER = re.compile(r"^\s*(?:\{ok,\s*(?P<value>\d+|undefined)\}|undefined)\s*$")


@dataclass(frozen=True)
class ConsumerTimeout:
    """A consumer timeout in milliseconds (None: RabbitMQ enforces none) and where it was set."""

    milliseconds: int | None
    where: str
    scope: Literal["node", "queue"] = "node"


class Unreadable(DocprocError):
    """The node's consumer timeout could not be read; the message says why."""


def warnings(timeouts: Mapping[str, ConsumerTimeout], time_limit: float) -> list[str]:
    """One `warning:` line per timeout that is not longer than CELERY_TIME_LIMIT (`time_limit`,
    seconds), naming the queues it applies to; empty when every timeout outlasts the limit."""
    queues_of: dict[ConsumerTimeout, list[str]] = {}
    for queue, timeout in timeouts.items():
        if timeout.milliseconds is not None and timeout.milliseconds <= time_limit * 1000:
            queues_of.setdefault(timeout, []).append(queue)
    return [_warning(timeout, queues, time_limit) for timeout, queues in queues_of.items()]


def queue_override(queue: QueuePolicy) -> ConsumerTimeout | None:
    """The timeout a queue sets for itself (RabbitMQ >= 3.12), or None when it follows the node."""
    found: list[tuple[int, str]] = []
    argument = queue.arguments.get("x-consumer-timeout")
    if isinstance(argument, int):
        found.append((argument, f"the x-consumer-timeout argument of queue {queue.name}"))
    definition = queue.effective_policy_definition
    policy_value = definition.get("consumer-timeout") if isinstance(definition, dict) else None
    if isinstance(policy_value, int):
        found.append((policy_value, f"the consumer-timeout of policy {queue.policy or '?'}"))
    if not found:
        return None
    milliseconds, where = min(found)
    return ConsumerTimeout(milliseconds, where, scope="queue")


def parse_eval(output: str) -> int | None:
    """The value in `rabbitmqctl eval` output for _EVAL_EXPRESSION; None for undefined."""
    match = _EVAL_ANSWER.match(output)
    if match is None:
        raise ValueError(f"unexpected rabbitmqctl output {output.strip()!r}")
    value = match.group("value")
    return int(value) if value is not None and value != "undefined" else None


def version_of(overview: Mapping[str, object]) -> tuple[int, int]:
    """RabbitMQ's major and minor version from the management API's overview; (0, 0) if unknown."""
    match = re.match(r"(\d+)\.(\d+)", str(overview.get("rabbitmq_version", "")))
    return (int(match.group(1)), int(match.group(2))) if match else (0, 0)


async def node_timeout(settings: Settings, node: str) -> ConsumerTimeout:
    """The node's consumer_timeout, read with `rabbitmqctl eval`: only for a broker on this machine
    (the management API does not show it). Raises Unreadable saying why it could not be read."""
    host = urlsplit(settings.broker_urls[0]).hostname or ""
    if host not in LOCAL_HOSTS:
        raise Unreadable(
            f"the broker runs on {host}, and only rabbitmqctl on its machine can read it"
        )
    rabbitmqctl = shutil.which("rabbitmqctl")
    if rabbitmqctl is None:
        raise Unreadable("rabbitmqctl, which alone can read it, is not installed here")
    try:
        process = await asyncio.create_subprocess_exec(
            rabbitmqctl,
            "-q",
            "-n",
            node,
            "eval",
            _EVAL_EXPRESSION,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
    except OSError as exc:
        raise Unreadable(f"rabbitmqctl did not start: {exc}") from exc
    try:
        out, err = await asyncio.wait_for(process.communicate(), RABBITMQCTL_TIMEOUT)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise Unreadable(f"rabbitmqctl did not answer within {RABBITMQCTL_TIMEOUT:g} s") from None
    if process.returncode != 0:
        said = (err or out).decode(errors="replace").strip().splitlines()
        raise Unreadable(f"rabbitmqctl -n {node} failed: {said[0] if said else process.returncode}")
    try:
        milliseconds = parse_eval(out.decode(errors="replace"))
    except ValueError as exc:
        raise Unreadable(str(exc)) from None
    return ConsumerTimeout(milliseconds, f"the consumer_timeout of node {node}")


async def check(settings: Settings, management: Management) -> list[str]:
    """Lines for `docproc topology check`: a `warning:` for each consumer timeout of a work queue
    that is not longer than CELERY_TIME_LIMIT, or a `note:` saying why it could not be checked."""
    overrides: dict[str, ConsumerTimeout] = {}
    try:
        overview = await management.overview()
        if version_of(overview) >= PER_QUEUE_SINCE:
            for queue in await management.queue_policies():
                override = queue_override(queue)
                if queue.name in WORK_QUEUES and override is not None:
                    overrides[queue.name] = override
        timeouts = dict(overrides)
        following_node = [name for name in WORK_QUEUES if name not in overrides]
        if following_node:
            node = await node_timeout(settings, str(overview.get("node", "")))
            timeouts |= dict.fromkeys(following_node, node)
    except (DocprocError, httpx.HTTPError) as exc:
        return [
            f"note: RabbitMQ's consumer timeout could not be checked against CELERY_TIME_LIMIT="
            f"{settings.time_limit:g} s ({exc}); make sure consumer_timeout in rabbitmq.conf is "
            f"longer (see {CONFIG_FILE})",
            *warnings(overrides, settings.time_limit),
        ]
    return warnings(timeouts, settings.time_limit)


def _warning(timeout: ConsumerTimeout, queues: list[str], time_limit: float) -> str:
    assert timeout.milliseconds is not None
    above = f"above {time_limit * 1000:.0f} ms"
    if timeout.scope == "queue":
        fix = f"raise {timeout.where} {above}, or remove it"
    else:
        fix = f"set consumer_timeout in rabbitmq.conf {above} (see {CONFIG_FILE}), restart RabbitMQ"
    return (
        f"warning: RabbitMQ's consumer timeout for {', '.join(queues)} is "
        f"{timeout.milliseconds / 60_000:g} min ({timeout.milliseconds} ms, {timeout.where}), "
        f"not longer than CELERY_TIME_LIMIT={time_limit:g} s: a task that runs longer has its "
        f"channel closed by RabbitMQ and runs again. Fix: {fix}"
    )

"""The consumer-timeout check's own logic: comparison, per-queue overrides, rabbitmqctl's answer."""

from __future__ import annotations

from typing import Any

import pytest

from service.broker.consumer_timeout import (
    ConsumerTimeout,
    Unreadable,
    check,
    node_timeout,
    parse_eval,
    queue_override,
    version_of,
    warnings,
)
from service.broker.management import QueuePolicy
from service.settings import Settings
from service.topology import WORK_QUEUES

NODE_DEFAULT = ConsumerTimeout(1_800_000, "the consumer_timeout of node rabbit@localhost")


def test_a_timeout_shorter_than_the_time_limit_is_a_warning_naming_value_limit_and_fix() -> None:
    (line,) = warnings({"document_processing": NODE_DEFAULT}, time_limit=2400)

    assert line.startswith("warning: ")
    assert "30 min (1800000 ms, the consumer_timeout of node rabbit@localhost)" in line
    assert "CELERY_TIME_LIMIT=2400 s" in line
    assert "set consumer_timeout in rabbitmq.conf above 2400000 ms" in line
    assert "infra/rabbitmq/rabbitmq.conf" in line


def test_a_timeout_equal_to_the_time_limit_is_not_long_enough() -> None:
    timeout = ConsumerTimeout(2_400_000, "the consumer_timeout of node rabbit@localhost")

    assert len(warnings({"document_processing": timeout}, time_limit=2400)) == 1


@pytest.mark.parametrize(
    "timeout",
    [
        ConsumerTimeout(2_400_001, "the consumer_timeout of node rabbit@localhost"),
        ConsumerTimeout(None, "the consumer_timeout of node rabbit@localhost"),
    ],
    ids=["longer", "disabled"],
)
def test_a_longer_or_disabled_timeout_is_no_warning(timeout: ConsumerTimeout) -> None:
    assert warnings({"document_processing": timeout}, time_limit=2400) == []


def test_queues_sharing_a_timeout_get_one_warning_that_names_them_all() -> None:
    lines = warnings(dict.fromkeys(WORK_QUEUES, NODE_DEFAULT), time_limit=2400)

    assert len(lines) == 1
    assert "for document_processing, retry_queue, celery is" in lines[0]


def test_a_queue_override_that_is_too_short_names_the_override_as_the_fix() -> None:
    policy = QueuePolicy(
        name="document_processing",
        policy="short",
        effective_policy_definition={"consumer-timeout": 600_000},
    )
    override = queue_override(policy)
    assert override is not None

    (line,) = warnings({"document_processing": override}, time_limit=2400)

    assert "10 min (600000 ms, the consumer-timeout of policy short)" in line
    assert "Fix: raise the consumer-timeout of policy short above 2400000 ms" in line


def test_the_smaller_of_queue_argument_and_policy_applies() -> None:
    policy = QueuePolicy(
        name="document_processing",
        arguments={"x-consumer-timeout": 7_200_000},
        policy="long",
        effective_policy_definition={"consumer-timeout": 3_600_000},
    )

    assert queue_override(policy) == ConsumerTimeout(
        3_600_000, "the consumer-timeout of policy long", scope="queue"
    )
    assert queue_override(
        QueuePolicy(name="celery", arguments={"x-consumer-timeout": 5_000_000})
    ) == ConsumerTimeout(
        5_000_000, "the x-consumer-timeout argument of queue celery", scope="queue"
    )


@pytest.mark.parametrize(
    "policy",
    [
        QueuePolicy(name="celery"),
        QueuePolicy(name="celery", effective_policy_definition=[]),
        QueuePolicy(name="celery", effective_policy_definition={"max-length": 10}),
        QueuePolicy(name="celery", arguments={"x-consumer-timeout": "soon"}),
    ],
    ids=["nothing", "empty-list-definition", "other-policy-keys", "not-a-number"],
)
def test_a_queue_without_an_override_follows_the_node(policy: QueuePolicy) -> None:
    assert queue_override(policy) is None


@pytest.mark.parametrize(
    ("output", "expected"),
    [("{ok,1800000}\n", 1_800_000), ("undefined", None), ("{ok,undefined}\n", None)],
)
def test_rabbitmqctl_answers_are_read(output: str, expected: int | None) -> None:
    assert parse_eval(output) == expected


def test_an_unexpected_rabbitmqctl_answer_is_an_error() -> None:
    with pytest.raises(ValueError, match="unexpected rabbitmqctl output"):
        parse_eval("Error: unable to perform an operation on node")


@pytest.mark.parametrize(
    ("version", "expected"),
    [("3.10.8", (3, 10)), ("3.13.7", (3, 13)), ("4.0.0-rc.1", (4, 0)), ("", (0, 0))],
)
def test_versions_are_read_from_the_overview(version: str, expected: tuple[int, int]) -> None:
    assert version_of({"rabbitmq_version": version}) == expected


async def test_the_node_value_of_a_remote_broker_is_not_read() -> None:
    settings = Settings(broker_url="amqp://docproc:secret@rabbitmq.internal:5672//")

    with pytest.raises(Unreadable, match=r"the broker runs on rabbitmq\.internal"):
        await node_timeout(settings, "rabbit@rabbitmq")


class FakeManagement:
    """The two management API answers the check reads."""

    def __init__(self, version: str, queues: list[QueuePolicy]) -> None:
        self.version = version
        self.queues = queues

    async def overview(self) -> dict[str, Any]:
        return {"rabbitmq_version": self.version, "node": "rabbit@rabbitmq"}

    async def queue_policies(self) -> list[QueuePolicy]:
        return self.queues


REMOTE = Settings(broker_url="amqp://docproc:secret@rabbitmq.internal:5672//")
SHORT_POLICY = {"consumer-timeout": 600_000}
SHORT_EVERYWHERE = [
    QueuePolicy(name=name, policy="short", effective_policy_definition=SHORT_POLICY)
    for name in WORK_QUEUES
]


async def test_overrides_on_every_work_queue_are_checked_without_the_node() -> None:
    lines = await check(REMOTE, FakeManagement("3.13.7", SHORT_EVERYWHERE))  # type: ignore[arg-type]

    assert len(lines) == 1
    assert lines[0].startswith("warning: ")
    assert "the consumer-timeout of policy short" in lines[0]


async def test_a_node_value_that_cannot_be_read_is_a_note_not_a_warning() -> None:
    queues = [
        QueuePolicy(name="document_processing", effective_policy_definition=SHORT_POLICY),
    ]

    lines = await check(REMOTE, FakeManagement("3.13.7", queues))  # type: ignore[arg-type]

    assert lines[0].startswith("note: RabbitMQ's consumer timeout could not be checked")
    assert "CELERY_TIME_LIMIT=2400 s" in lines[0]
    assert "the broker runs on rabbitmq.internal" in lines[0]
    assert lines[1].startswith("warning: ")
    assert "for document_processing is 10 min" in lines[1]


async def test_per_queue_settings_are_ignored_before_rabbitmq_3_12() -> None:
    lines = await check(REMOTE, FakeManagement("3.10.8", SHORT_EVERYWHERE))  # type: ignore[arg-type]

    assert len(lines) == 1
    assert lines[0].startswith("note: ")

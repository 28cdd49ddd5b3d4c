from __future__ import annotations

import json
import subprocess
import sys

from service.settings import Settings
from service.topology import (
    DEAD_LETTER_EXCHANGE,
    DEAD_LETTER_QUEUE,
    EXCHANGE,
    WORK_QUEUES,
    build_topology,
    export_definitions,
)
from service.worker.app import celery_config, celery_queues, create_celery
from tests.support import ROOT


def test_the_definitions_file_is_the_export_of_the_default_topology() -> None:
    exported = subprocess.run(
        [sys.executable, "-m", "service", "topology", "export"],
        env={"PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    ).stdout

    on_disk = (ROOT / "infra" / "rabbitmq" / "definitions.json").read_text()

    assert json.loads(on_disk) == json.loads(exported), (
        "infra/rabbitmq/definitions.json is stale: run "
        "`docproc topology export > infra/rabbitmq/definitions.json`"
    )
    assert json.loads(exported) == export_definitions(build_topology(Settings()))


def test_quorum_work_queues_carry_the_poison_message_breaker_and_safe_dead_lettering() -> None:
    topology = build_topology(Settings(delivery_limit=3))

    for name in WORK_QUEUES:
        assert topology.queue(name).arguments == {
            "x-queue-type": "quorum",
            "x-delivery-limit": 3,
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
            "x-dead-letter-exchange": DEAD_LETTER_EXCHANGE,
            "x-dead-letter-routing-key": name,
        }
    assert topology.queue(DEAD_LETTER_QUEUE).arguments == {"x-queue-type": "quorum"}
    assert topology.native_delayed_delivery


def test_classic_work_queues_dead_letter_without_quorum_only_arguments() -> None:
    topology = build_topology(Settings(queue_type="classic"))

    for name in WORK_QUEUES:
        assert topology.queue(name).arguments == {
            "x-queue-type": "classic",
            "x-dead-letter-exchange": DEAD_LETTER_EXCHANGE,
            "x-dead-letter-routing-key": name,
        }
    # Celery only holds countdowns in the broker when it sees quorum queues.
    assert not topology.native_delayed_delivery


def test_every_work_queue_is_bound_for_direct_and_delayed_delivery() -> None:
    topology = build_topology(Settings())
    bindings = {(b.source, b.destination, b.routing_key) for b in topology.bindings}

    for name in WORK_QUEUES:
        assert (EXCHANGE, name, name) in bindings
        assert (EXCHANGE, name, f"#.{name}") in bindings
        assert ("celery_delayed_delivery", EXCHANGE, f"#.{name}") in bindings
    assert (DEAD_LETTER_EXCHANGE, DEAD_LETTER_QUEUE, "#") in bindings


def test_celery_declares_its_queues_with_the_topology_arguments() -> None:
    settings = Settings()
    topology = build_topology(settings)

    queues = {queue.name: queue for queue in celery_queues(topology)}

    assert set(queues) == set(WORK_QUEUES)
    for name, queue in queues.items():
        assert queue.queue_arguments == topology.queue(name).arguments
        assert queue.exchange.name == EXCHANGE
        assert queue.exchange.type == "topic"
        assert queue.routing_key == name
    assert [q.name for q in celery_config(settings)["task_queues"]] == list(WORK_QUEUES)


def test_the_celery_configuration_dead_letters_instead_of_acking_failures() -> None:
    config = celery_config(Settings(concurrency=3, soft_time_limit=10, time_limit=20))

    assert config["task_acks_late"] is True
    assert config["task_acks_on_failure"] is False
    assert config["task_acks_on_timeout"] is False
    assert config["task_reject_on_worker_lost"] is True
    assert config["worker_prefetch_multiplier"] == 1
    assert (config["task_soft_time_limit"], config["task_time_limit"]) == (10, 20)
    assert config["worker_concurrency"] == 3
    assert "pickle" not in config["accept_content"]
    assert config["task_serializer"] == "msgspec"
    assert config["accept_content"] == ["msgspec", "json"]


def test_the_worker_declares_no_exclusive_queue_that_could_outlive_a_partition() -> None:
    # Remote control's queue, named after the worker, was exclusive: after a partition,
    # re-declaring it while RabbitMQ still held the old connection stopped the worker
    # (tests/faults). Event queues have a fresh name each time.
    config = celery_config(Settings())
    assert config["control_queue_exclusive"] is False
    app = create_celery(Settings())
    assert app.control.mailbox.get_queue("worker-1@host").exclusive is False


def test_beat_runs_the_maintenance_tasks_on_the_celery_queue() -> None:
    from service.task_contract import (
        EXPIRE_TASK_RUNS,
        PUBLISH_UNPUBLISHED,
        PURGE_DEAD_LETTERS,
        RECONCILE,
        RECONCILE_MARKER,
    )
    from service.worker.app import create_celery

    app = create_celery(Settings())
    schedule = app.conf.beat_schedule
    router = app.amqp.router

    assert {entry["task"] for entry in schedule.values()} == {
        EXPIRE_TASK_RUNS,
        PURGE_DEAD_LETTERS,
        PUBLISH_UNPUBLISHED,
        RECONCILE,
    }
    for entry in schedule.values():
        assert router.route({}, entry["task"])["queue"].name == "celery"
    assert schedule["publish-unpublished"]["schedule"] <= 30, "the sweeper runs often"
    # The marker goes behind the document tasks: that is what it proves.
    assert router.route({}, RECONCILE_MARKER)["queue"].name == "document_processing"
    assert router.route({}, "docproc.document.process")["queue"].name == "document_processing"
    app.close()


def test_the_delayed_delivery_names_are_kombus() -> None:
    from kombu.transport import native_delayed_delivery as delayed

    from service.topology import DELAY_LEVELS, DELAYED_DELIVERY_EXCHANGE, delay_level_name

    assert delayed.MAX_NUMBER_OF_BITS_TO_USE == DELAY_LEVELS
    assert delayed.CELERY_DELAYED_DELIVERY_EXCHANGE == DELAYED_DELIVERY_EXCHANGE
    assert [delay_level_name(n) for n in range(DELAY_LEVELS)] == [
        delayed.level_name(n) for n in range(DELAY_LEVELS)
    ]

"""The Celery app: configuration from Settings and the topology, and the worker's hooks."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

import celery.apps.worker
import kombu
from celery import Celery, signals
from kombu.serialization import register
from loguru import logger

from service import serialization
from service.broker.declarer import declare_topology
from service.errors import ConfigError, DatabaseError, DocprocError, abort
from service.logs import current_component, say_from_signal_handler, setup_logging
from service.settings import Settings
from service.task_contract import ROUTES
from service.topology import (
    EXCHANGE,
    MAINTENANCE_QUEUE,
    WORK_QUEUES,
    Topology,
    build_topology,
)
from service.worker import (
    canary,
    document_task,
    frames,
    lifecycle,
    maintenance,
    metrics,
    tracing,
)
from service.worker.base_task import DocprocTask
from service.worker.docproc_celery import DocprocCelery
from service.worker.store_watch import StoreWatch

TASK_ROUTES = {pattern: {"queue": queue} for pattern, queue in ROUTES.items()}


def celery_queues(topology: Topology) -> list[kombu.Queue]:
    """The work queues as kombu declares them: the same arguments as the topology's."""
    exchange = kombu.Exchange(EXCHANGE, type="topic", durable=True)
    return [
        kombu.Queue(
            queue.name,
            exchange,
            routing_key=queue.name,
            queue_arguments=dict(queue.arguments),
            durable=True,
        )
        for queue in topology.queues
        if queue.name in WORK_QUEUES
    ]


BROKER_TCP_USER_TIMEOUT = 30.0
"""Seconds what a worker, beat or a Celery client sent may go unacknowledged by RabbitMQ's host
before the kernel drops the connection (TCP_USER_TIMEOUT). py-amqp sets 1 s on every connection
it makes: a network blip of a second or two, with an ack or an event on its way, dropped the
worker's connection — Celery restarted its consumer and cancelled the tasks it was running, and
RabbitMQ gave them out again. A broker that is gone is still found by the connection's
heartbeats, or by this timeout once something waits to be sent."""


def socket_settings() -> dict[int, int]:
    """py-amqp's TCP options for docproc's connections: TCP_USER_TIMEOUT where there is one."""
    option = getattr(socket, "TCP_USER_TIMEOUT", None)
    return {} if option is None else {option: int(BROKER_TCP_USER_TIMEOUT * 1000)}


def celery_config(settings: Settings) -> dict[str, Any]:
    topology = build_topology(settings)
    return {
        "broker_url": settings.broker_url,
        # The worker's own publishes (retries) are confirmed before the original is acked.
        "broker_transport_options": {
            "confirm_publish": True,
            "socket_settings": socket_settings(),
        },
        "broker_connection_retry_on_startup": True,
        "broker_native_delayed_delivery_queue_type": settings.queue_type,
        "task_queues": celery_queues(topology),
        "task_default_queue": MAINTENANCE_QUEUE,
        "task_default_exchange": EXCHANGE,
        "task_default_exchange_type": "topic",
        "task_default_routing_key": MAINTENANCE_QUEUE,
        # A queue Celery would create on the fly would have no dead-letter exchange.
        "task_create_missing_queues": False,
        "task_routes": TASK_ROUTES,
        "task_serializer": serialization.NAME,
        "result_serializer": serialization.NAME,
        "accept_content": list(serialization.ACCEPTED),
        "result_accept_content": list(serialization.ACCEPTED),
        "event_serializer": "json",
        # Task events for Flower (and `celery events`): received, started, succeeded, failed,
        # retried; and `task-sent` for what Celery clients publish (beat, a stock client).
        "worker_send_task_events": settings.task_events,
        "task_send_sent_event": True,
        "task_acks_late": True,
        "task_acks_on_failure": False,
        "task_acks_on_timeout": False,
        "task_reject_on_worker_lost": True,
        "task_soft_time_limit": settings.soft_time_limit,
        "task_time_limit": settings.time_limit,
        "task_ignore_result": True,
        "result_expires": settings.result_expires,
        "worker_prefetch_multiplier": 1,
        "beat_schedule": maintenance.SCHEDULE,
        "beat_schedule_filename": str(Path(settings.data_dir) / "celerybeat-schedule"),
        "worker_concurrency": settings.concurrency,
        # A pool process whose peak resident memory passed this (KiB) is replaced after its
        # task: memory a large document made it take is not kept for ever.
        "worker_max_memory_per_child": settings.max_memory_per_child or None,
        "worker_consumer": "service.worker.consumer:DeadLetteringConsumer",
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        # Remote control (Flower's worker pages use it) on a queue that is not exclusive: a
        # worker cut off long enough for RabbitMQ to drop its connection reconnects before
        # RabbitMQ has removed the old connection's exclusive queue — RESOURCE_LOCKED, which
        # Celery calls unrecoverable: the worker exited (tests/faults, network partition).
        "control_queue_exclusive": False,
        "worker_hijack_root_logger": False,
        # Our log sink writes to stdout; redirecting stdout into logging would loop.
        "worker_redirect_stdouts": False,
    }


def register_serializer() -> None:
    """docproc's msgspec serializer, for kombu (publishing retries, and reading messages)."""
    register(
        serialization.NAME,
        serialization.dumps,  # type: ignore[arg-type]  # kombu publishes bytes as they are
        serialization.loads,
        content_type=serialization.CONTENT_TYPE,
        content_encoding=serialization.CONTENT_ENCODING,
    )


def create_celery(settings: Settings | None = None) -> DocprocCelery:
    """The Celery app. Without `settings`, they are read from the environment when Celery first
    needs its configuration, not at import: `celery -A service.worker.celery` imports this lazily.
    """
    register_serializer()
    frames.install()
    app = DocprocCelery(
        "docproc",
        task_cls=DocprocTask,
        # Task events dropped while RabbitMQ blocks their connection: service.worker.events.
        events="service.worker.events:Events",
        # A worker's remote control (Mingle's hello, replies) without confirms: worker.control.
        control="service.worker.control:Control",
        set_as_current=False,
    )

    def configure(settings: Settings) -> None:
        app._docproc_settings = settings
        app.config_from_object(celery_config(settings))

    if settings is not None:
        configure(settings)
    else:

        def configure_from_environment(sender: Celery, **_: Any) -> None:
            try:
                configure(Settings.from_env())
            except ConfigError as exc:
                abort(exc)

        app.on_configure.connect(configure_from_environment, weak=False)

    _connect_signals(app)
    app.steps["consumer"].add(StoreWatch)
    canary.register(app)
    document_task.register(app)
    maintenance.register(app)
    return app


def _connect_signals(app: DocprocCelery) -> None:
    def on_setup_logging(**_: Any) -> None:
        # Keep the component the entry point chose: beat runs this signal too.
        setup_logging(
            app.settings.log_level,
            component=current_component() or "worker",
            log_format=app.settings.log_format,
        )
        celery.apps.worker.safe_say = say_from_signal_handler  # type: ignore[attr-defined]  # not in the stub

    def on_worker_init(sender: Any, **_: Any) -> None:
        if sender.app is not app:
            return
        try:
            asyncio.run(declare_topology(app.settings))
        except DocprocError as exc:
            abort(exc)
        try:
            app.store.migrate()
            app.migrated = True
        except DatabaseError as exc:
            # No crash loop: the worker starts paused and takes work once the store answers.
            logger.warning("the store is unavailable at start: {}", exc)
        except DocprocError as exc:
            # A store this docproc cannot use (newer than it, read-only): waiting mends nothing,
            # and no task may run on it. Stopped here, before any consumer starts.
            abort(exc)
        stop_metrics = metrics.serve(app.settings)  # before the pool forks
        if stop_metrics is not None:
            signals.worker_shutdown.connect(lambda **_: stop_metrics(), weak=False)

    signals.setup_logging.connect(on_setup_logging, weak=False)
    signals.worker_init.connect(on_worker_init, weak=False)
    metrics.connect(app)
    tracing.connect(app)
    lifecycle.connect(app, lambda: app.store)

"""`docproc serve worker` (and, as they land, api, beat, dlq)."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from loguru import logger

from service import heap
from service.logs import setup_logging
from service.settings import Settings, load_settings
from service.topology import WORK_QUEUES

if TYPE_CHECKING:
    import uvicorn

CELERY_LEVELS = {"TRACE": "DEBUG", "SUCCESS": "INFO"}
SERVER_KEEP_ALIVE = 5
"""Seconds the API keeps an idle connection open (uvicorn's `timeout_keep_alive`); the CLI's
client keeps one for less (`service.cli.client.CLIENT_KEEP_ALIVE`)."""


@click.group()
def serve() -> None:
    """Run one docproc process in the foreground.

    \b
    Examples:
      docproc serve worker
      CELERY_CONCURRENCY=4 docproc serve worker
    """


@serve.command()
def worker() -> None:
    """A Celery worker on document_processing, retry_queue and celery."""
    from celery import signals

    from service.worker.app import create_celery

    settings = load_settings()
    setup_logging(settings.log_level, component="worker", log_format=settings.log_format)
    app = create_celery(settings)
    # The code and the app leave the collector's sweeps before any connection is made: in this
    # process before the pool forks, and in each pool process once it is set up.
    heap.settle()
    signals.worker_process_init.connect(lambda **_: heap.settle(), weak=False)
    process = app.Worker(
        hostname=f"worker-{os.getpid()}@{socket.gethostname()}",
        loglevel=CELERY_LEVELS.get(settings.log_level, settings.log_level),
        concurrency=settings.concurrency,
        queues=list(WORK_QUEUES),
        quiet=True,  # no banner: stdout carries JSON lines only
    )
    process.start()
    raise SystemExit(process.exitcode)


@serve.command()
@click.option(
    "--fault",
    envvar="DOCPROC_FAULT_INJECTION",
    type=click.Choice(["before-commit", "after-commit", "after-ack"]),
    default=None,
    hidden=True,  # for fault tests: the process kills itself at that point of a batch
)
def dlq(fault: str | None) -> None:
    """The dead-letter consumer: stores every message of docproc.dead_letter, with why it died.

    One consumer is active at a time (a lease in the store); another started beside it stands
    by and takes over when the first stops.
    """
    from service import telemetry
    from service.deadletters.consumer import serve as serve_dlq

    settings = load_settings()
    setup_logging(settings.log_level, component="dlq", log_format=settings.log_format)
    telemetry.setup("dlq")
    prepare(settings)
    heap.settle()
    asyncio.run(serve_dlq(settings, fault=fault))


@serve.command()
def api() -> None:
    """The HTTP API (uvicorn), DOCPROC_API_WORKERS processes on DOCPROC_API_HOST:PORT.

    Uvicorn rather than granian: it is what Litestar documents and most operators know, pure
    Python with uvloop and httptools for speed, and its workers share one socket.
    """
    import uvicorn

    from service.api.server import GuardedHttpToolsProtocol
    from service.errors import BrokerUnavailable

    settings = load_settings()
    setup_logging(settings.log_level, component="api", log_format=settings.log_format)
    try:
        prepare(settings)
    except BrokerUnavailable as exc:
        # The API starts all the same: /ready says the broker is down, uploads are swept later.
        logger.warning("{}", exc)
    options: dict[str, Any] = {
        "factory": True,
        "host": settings.api_host,
        "port": settings.api_port,
        "workers": settings.api_workers,
        "log_config": None,
        "proxy_headers": False,
        "timeout_graceful_shutdown": 20,
        "http": GuardedHttpToolsProtocol,  # closes connections that never send their headers
        "timeout_keep_alive": SERVER_KEEP_ALIVE,
    }
    if settings.api_workers == 1:
        uvicorn.run(API_FACTORY, **options)
    else:
        serve_api_processes(uvicorn.Config(API_FACTORY, **options))


API_FACTORY = "service.api.app:create_app_from_environment"


def serve_api_processes(config: uvicorn.Config) -> None:
    """Uvicorn's worker processes, their HTTP metrics added up: each writes them into a fresh
    directory (prometheus_client's multiprocess mode) that they inherit, and /metrics serves the
    sum — whichever process a scrape reaches, a counter never goes back. A worker that uvicorn
    replaces (it died, or SIGHUP, SIGTTOU) keeps its counts in the sum, and its requests in
    progress leave it. The directory goes when the API stops."""
    from prometheus_client.multiprocess import mark_process_dead
    from uvicorn.supervisors import Multiprocess

    directory = tempfile.mkdtemp(prefix="docproc-api-metrics-")

    class Supervisor(Multiprocess):
        def __init__(self, config: uvicorn.Config, sockets: list[socket.socket]) -> None:
            super().__init__(config, sockets)
            self.serving: set[int] = set()

        def keep_subprocess_alive(self) -> None:
            # Called after the signals are handled, every half second.
            super().keep_subprocess_alive()
            serving = {process.pid for process in self.processes if process.pid is not None}
            for pid in self.serving - serving:
                mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]
            self.serving = serving

    # prometheus_client's own variable: the workers uvicorn spawns inherit it, and write there.
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
    try:
        Supervisor(config, sockets=[config.bind_socket()]).run()
    finally:
        del os.environ["PROMETHEUS_MULTIPROC_DIR"]
        shutil.rmtree(directory, ignore_errors=True)


@serve.command()
def beat() -> None:
    """Celery beat: task-run expiry, dead-letter retention, and the sweeper of unpublished
    documents, sent to the `celery` queue."""
    from service import telemetry
    from service.worker.app import create_celery

    settings = load_settings()
    setup_logging(settings.log_level, component="beat", log_format=settings.log_format)
    if telemetry.setup("beat"):
        from opentelemetry.instrumentation.celery import CeleryInstrumentor

        CeleryInstrumentor().instrument()  # type: ignore[no-untyped-call]
    prepare(settings)
    Path(settings.data_dir).mkdir(parents=True, exist_ok=True)
    app = create_celery(settings)
    app.Beat(loglevel=CELERY_LEVELS.get(settings.log_level, settings.log_level), quiet=True).run()


def prepare(settings: Settings) -> None:
    """Before serving: the topology declared (or a clear stop on a mismatch), the store migrated."""
    from service.broker.declarer import declare_topology
    from service.store.migrations import upgrade

    upgrade(settings.resolved_database_url)
    asyncio.run(declare_topology(settings))

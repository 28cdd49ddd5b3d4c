"""`docproc serve worker` (and, as they land, api, beat, dlq)."""

from __future__ import annotations

import asyncio
import os

import click

from service.cli.environment import load_settings
from service.logs import setup_logging
from service.topology import WORK_QUEUES

CELERY_LEVELS = {"TRACE": "DEBUG", "SUCCESS": "INFO"}


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
    from service.worker.app import create_celery

    settings = load_settings()
    setup_logging(settings.log_level, component="worker")
    app = create_celery(settings)
    process = app.Worker(
        hostname=f"worker-{os.getpid()}@%h",
        loglevel=CELERY_LEVELS.get(settings.log_level, settings.log_level),
        concurrency=settings.concurrency,
        queues=list(WORK_QUEUES),
        quiet=True,  # no banner: stdout carries JSON lines only
    )
    process.start()
    raise SystemExit(process.exitcode)


@serve.command()
def dlq() -> None:
    """The dead-letter consumer: stores every message of docproc.dead_letter, with why it died."""
    from service.broker.declarer import declare_topology
    from service.deadletters.consumer import serve as serve_dlq
    from service.store.migrations import upgrade

    settings = load_settings()
    setup_logging(settings.log_level, component="dlq")
    asyncio.run(declare_topology(settings))
    upgrade(settings.resolved_database_url)
    asyncio.run(serve_dlq(settings))

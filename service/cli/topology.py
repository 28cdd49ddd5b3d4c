"""`docproc topology declare | export | check`."""

from __future__ import annotations

import asyncio
import json

import click

from service.broker import consumer_timeout
from service.broker.declarer import declare_topology
from service.broker.drift import check as check_drift
from service.broker.management import Management
from service.logs import setup_logging
from service.settings import load_settings
from service.topology import build_topology, export_definitions


@click.group()
def topology() -> None:
    """The broker topology: exchanges, queues, dead-lettering (docs/architecture.md).

    \b
    Examples:
      docproc topology declare
      docproc topology check || echo "the broker has drifted"
      docproc topology export > infra/rabbitmq/definitions.json
    """


@topology.command()
def declare() -> None:
    """Declare every exchange, queue and binding; running it again changes nothing."""
    settings = load_settings()
    setup_logging(settings.log_level, component="cli", log_format=settings.log_format)
    declared = asyncio.run(declare_topology(settings))
    click.echo(
        f"declared {len(declared.exchanges)} exchanges, {len(declared.queues)} queues and "
        f"{len(declared.bindings)} bindings in vhost {settings.vhost!r}"
    )


@topology.command()
@click.option("--vhost", default="/", show_default=True, help="The vhost named in the export.")
def export(vhost: str) -> None:
    """Print the topology as RabbitMQ definitions JSON (loadable by the management plugin)."""
    definitions = export_definitions(build_topology(load_settings()), vhost)
    click.echo(json.dumps(definitions, indent=2))


@topology.command()
def check() -> None:
    """Compare the broker's topology with docproc's; exit 1 and list each difference if it drifted.

    Reads through the management API and changes nothing. Also warns (on stderr, without changing
    the exit status) when RabbitMQ's consumer timeout is not longer than CELERY_TIME_LIMIT.
    """
    settings = load_settings()

    async def run() -> tuple[list[str], list[str]]:
        async with Management.from_settings(settings) as management:
            differences = await check_drift(build_topology(settings), management)
            return differences, await consumer_timeout.check(settings, management)

    differences, timeout_lines = asyncio.run(run())
    for line in timeout_lines:
        click.echo(line, err=True)
    vhost = settings.vhost
    if not differences:
        click.echo(f"topology of vhost {vhost!r} matches")
        return
    for difference in differences:
        click.echo(difference)
    click.echo(
        f"{len(differences)} difference(s) in vhost {vhost!r}; `docproc topology declare` creates "
        "what is missing, a queue with other arguments must be deleted first",
        err=True,
    )
    raise SystemExit(1)

"""The `docproc` command line."""

from __future__ import annotations

import click

from service.cli.dead_letters import dead_letters
from service.cli.documents import search, status, text
from service.cli.selftest import selftest
from service.cli.serve import serve
from service.cli.submit import submit
from service.cli.topology import topology
from service.errors import DocprocError, abort
from service.logs import setup_logging
from service.settings import load_settings

__all__ = ["main"]


@click.group(
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog='Configuration comes from the environment; see README.md, "Configuration".',
)
@click.version_option(package_name="docproc")
def cli() -> None:
    """docproc: documents in over HTTP, searchable text out, failures dead-lettered by RabbitMQ.

    \b
    Examples:
      docproc up
      docproc submit reports/ --wait
      docproc dead-letters groups
      docproc selftest --crash
    """


cli.add_command(topology)
cli.add_command(serve)
cli.add_command(submit)
cli.add_command(dead_letters)
cli.add_command(selftest)
cli.add_command(status)
cli.add_command(text)
cli.add_command(search)


@cli.command()
def up() -> None:
    """Run everything on this machine: API, worker, beat and DLQ consumer, supervised.

    Declares the topology and migrates the store first (SQLite under DOCPROC_DATA_DIR unless
    DOCPROC_DATABASE_URL says otherwise). Ctrl-C stops it in order, losing nothing.

    \b
    Examples:
      docproc up
      DOCPROC_DATABASE_URL=postgresql://docproc@localhost/docproc docproc up
    """
    from service import supervisor
    from service.cli.serve import prepare

    settings = load_settings()
    setup_logging(settings.log_level, component="up", log_format=settings.log_format)
    supervisor.check_port(settings)
    prepare(settings)
    supervisor.warn_about_the_broker(settings)
    supervisor.warn_about_ocr(settings)
    raise SystemExit(supervisor.run(settings))


def main() -> None:
    try:
        cli(prog_name="docproc")
    except DocprocError as exc:
        abort(exc)

"""The `docproc` command line."""

from __future__ import annotations

import click

from service.cli.serve import serve
from service.cli.topology import topology
from service.errors import DocprocError, abort

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
      docproc topology declare
      docproc serve worker
    """


cli.add_command(topology)
cli.add_command(serve)


def main() -> None:
    try:
        cli(prog_name="docproc")
    except DocprocError as exc:
        abort(exc)

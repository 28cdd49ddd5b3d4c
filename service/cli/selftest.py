"""`docproc selftest`."""

from __future__ import annotations

import asyncio

import click
import httpx

from service.cli.client import api_option, table
from service.errors import BrokerUnavailable
from service.settings import load_settings


@click.command()
@click.option(
    "--crash", is_flag=True, help="Also kill a worker process, to prove the delivery limit."
)
@click.option("--timeout", default=120.0, show_default=True, help="Seconds each path may take.")
@api_option
def selftest(crash: bool, timeout: float, api_url: str, api_key: str | None) -> None:
    """Run canary tasks through the live deployment and check every path ends as it should.

    Exit status 0 only when every path behaved and the clean-up worked. Whatever happens,
    Ctrl-C included, it discards the dead letters its canaries made and stops its crash canary.

    \b
    Examples:
      docproc selftest
      docproc selftest --crash --api http://docproc.internal:8000
    """
    from service.selftest import run

    settings = load_settings()
    try:
        outcomes = asyncio.run(run(settings, api_url, api_key, crash=crash, timeout=timeout))
    except KeyboardInterrupt:
        click.echo("docproc: selftest interrupted; its canaries were cleaned up", err=True)
        raise SystemExit(130) from None
    except httpx.TransportError as exc:
        raise BrokerUnavailable(
            f"the docproc API at {api_url} does not answer ({exc.__class__.__name__}); "
            "start it with `docproc up`, or pass --api"
        ) from None
    click.echo(
        table(
            [
                ["ok" if o.ok else "FAILED", o.path, f"{o.seconds:.2f} s", o.detail]
                for o in outcomes
            ],
            ["", "path", "took", "detail"],
        )
    )
    if not all(o.ok for o in outcomes):
        raise SystemExit(1)

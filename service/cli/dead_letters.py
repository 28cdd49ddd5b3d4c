"""`docproc dead-letters ...`: the dead-letter workflow from a terminal, through the API."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import click

from service.cli.client import Api, api_option, table
from service.store.dead_letters import STATUSES
from service.terminal import printable

FILTERS = ("queue", "reason", "task", "error_type", "group", "since", "until")


def filter_options(command: Callable[..., Any]) -> Callable[..., Any]:
    for name in reversed(FILTERS):
        help_text = {
            "since": "Died at or after (ISO 8601).",
            "until": "Died before (ISO 8601).",
            "group": "A group's fingerprint (see `groups`).",
        }.get(name, f"Only this {name.replace('_', ' ')}.")
        command = click.option(f"--{name.replace('_', '-')}", name, default=None, help=help_text)(
            command
        )
    return command


def _chosen(values: dict[str, Any]) -> dict[str, Any]:
    return {name: values[name] for name in FILTERS if values.get(name) is not None}


@click.group("dead-letters")
def dead_letters() -> None:
    """Inspect dead letters, group them, re-publish, redrive or discard them.

    \b
    Examples:
      docproc dead-letters list --reason rejected
      docproc dead-letters groups
      docproc dead-letters show 9d2e1f30-...
      docproc dead-letters republish 9d2e1f30-...
      docproc dead-letters redrive --group 3fa1c2... --rate 50 --follow
      docproc dead-letters discard --group 3fa1c2...
    """


@dead_letters.command("list")
@filter_options
@click.option(
    "--status",
    type=click.Choice(list(STATUSES)),
    default="active",
    show_default=True,
)
@click.option("--limit", default=50, show_default=True)
@click.option("--cursor", default=None, help="Continue from a previous page's next cursor.")
@api_option
def list_(
    status: str, limit: int, cursor: str | None, api_url: str, api_key: str | None, **filters: Any
) -> None:
    """Dead letters, newest first."""
    params = _chosen(filters) | {"status": status, "limit": limit}
    if cursor:
        params["cursor"] = cursor
    with Api(api_url, api_key) as api:
        rows, next_cursor = api.get("/dead-letters", params=params, read=_letters)
    click.echo(table(rows, ["id", "died", "reason", "queue", "task", "error", "republished"]))
    if next_cursor:
        click.echo(f"more: --cursor {printable(next_cursor)}", err=True)


def _letters(page: Any) -> tuple[list[list[object]], str | None]:
    rows: list[list[object]] = [
        [
            i["id"],
            i["dead_at"][:19],
            i["reason"],
            i["queue"],
            i["task"],
            i["error_type"],
            i["republish_count"],
        ]
        for i in page["items"]
    ]
    return rows, page["next_cursor"]


@dead_letters.command()
@click.argument("dead_letter_id")
@api_option
def show(dead_letter_id: str, api_url: str, api_key: str | None) -> None:
    """One dead letter in full (JSON): raw body, headers, why it died, the failure."""
    with Api(api_url, api_key) as api:
        click.echo(json.dumps(api.get(f"/dead-letters/{dead_letter_id}"), indent=2))


@dead_letters.command()
@filter_options
@api_option
def groups(api_url: str, api_key: str | None, **filters: Any) -> None:
    """Failures grouped by task, error type and fingerprint, biggest first."""
    params = {k: v for k, v in _chosen(filters).items() if k != "group"}
    with Api(api_url, api_key) as api:
        rows = api.get("/dead-letters/groups", params=params, read=_groups)
    click.echo(table(rows, ["group", "count", "task", "error", "last seen", "example"]))


def _groups(found: Any) -> list[list[object]]:
    return [
        [
            g["group"],
            g["count"],
            g["task"],
            g["error_type"] or g["reason"],
            g["last_seen"][:19],
            (g["example_message"] or "")[:60],
        ]
        for g in found["items"]
    ]


@dead_letters.command()
@click.argument("dead_letter_ids", nargs=-1, required=True)
@click.option(
    "--force",
    is_flag=True,
    help="Re-publish even a letter re-published before, one that died at the delivery limit "
    "(it killed workers), or one whose task succeeded since.",
)
@click.option(
    "--target",
    default=None,
    help="Re-publish into this queue: needed for a letter that did not die in a docproc work "
    "queue.",
)
@api_option
def republish(
    dead_letter_ids: tuple[str, ...],
    force: bool,
    target: str | None,
    api_url: str,
    api_key: str | None,
) -> None:
    """Re-publish dead letters to their original queues."""
    params: dict[str, Any] = {"force": "true"} if force else {}
    if target is not None:
        params["target"] = target
    with Api(api_url, api_key) as api:
        for dead_letter_id in dead_letter_ids:
            done = api.post(
                f"/dead-letters/{dead_letter_id}/republish", params=params, read=_republished
            )
            click.echo(printable(f"{dead_letter_id}: {done}"))


def _republished(done: Any) -> str:
    return f"re-published to {done['queue']} (time {done['republish_count']})" + (
        "" if done.get("recorded", True) else "; not recorded yet: do not repeat it"
    )


@dead_letters.command()
@filter_options
@click.option("--all", "everything", is_flag=True, help="Every active dead letter (no filter).")
@click.option("--dry-run", is_flag=True, help="Count what would be re-published; publish nothing.")
@click.option(
    "--include-republished",
    is_flag=True,
    help="Take letters re-published before too, and letters in doubt (may have gone out).",
)
@click.option(
    "--include-delivery-limit",
    is_flag=True,
    help="Take letters that died at the delivery limit too (their message killed or lost a "
    "worker process at each delivery); --reason delivery_limit takes them anyway.",
)
@click.option("--rate", default=10.0, show_default=True, help="Messages per second.")
@click.option("--follow", is_flag=True, help="Show progress until it ends (Ctrl-C cancels it).")
@api_option
def redrive(
    *,
    everything: bool,
    dry_run: bool,
    include_republished: bool,
    include_delivery_limit: bool,
    rate: float,
    follow: bool,
    api_url: str,
    api_key: str | None,
    **filters: Any,
) -> None:
    """Re-publish every active dead letter that matches, at RATE per second, in the background.

    Needs at least one filter, or --all. --dry-run first shows what it would take.
    """
    chosen = _chosen(filters)
    if not chosen and not everything:
        raise click.UsageError(
            "name at least one filter (--queue, --reason, --task, --error-type, --group, "
            "--since, --until), or --all to re-publish every active dead letter"
        )
    request = chosen | {
        "rate": rate,
        "all": everything,
        "dry_run": dry_run,
        "include_republished": include_republished,
        "include_delivery_limit": include_delivery_limit,
    }
    with Api(api_url, api_key) as api:
        if dry_run:
            matched, rows, left = api.post("/dead-letters/redrive", json=request, read=_dry_run)
            click.echo(f"dry run: {matched} would be re-published; nothing was")
            click.echo(table(rows, ["group", "count", "queue", "task", "error"]))
            for why, count in left:
                click.echo(printable(f"left out: {count} {LEFT_OUT.get(why, why)}"))
            return
        job = api.post("/dead-letters/redrive", json=request, read=Redrive.read)
        click.echo(printable(f"redrive {job.id}: {job.matched} matched, at {job.rate:g}/s"))
        if not follow:
            return
        try:
            with click.progressbar(length=job.matched, label="re-publishing") as bar:
                while job.state == "running":
                    time.sleep(0.5)
                    done = job.done
                    job = api.get(f"/dead-letters/redrives/{job.id}", read=Redrive.read)
                    bar.update(job.done - done)
        except KeyboardInterrupt:
            job = api.delete(f"/dead-letters/redrives/{job.id}", read=Redrive.read)
        click.echo(
            printable(
                f"redrive {job.id} {job.state}: {job.published} published, "
                f"{job.failed} failed of {job.matched}"
            )
        )


LEFT_OUT = {
    "delivery_limit": "died at the delivery limit (--include-delivery-limit takes them)",
    "republished": "re-published before (--include-republished takes them)",
    "in_doubt": (
        "taken for a re-publishing never recorded: they may have gone out "
        "(--include-republished takes them)"
    ),
}


def _dry_run(job: Any) -> tuple[int, list[list[object]], list[tuple[str, int]]]:
    rows: list[list[object]] = [
        [g["group"], g["count"], g["queue"], g["task"], g["error_type"]] for g in job["groups"]
    ]
    left = [(str(count["name"]), int(count["count"])) for count in job.get("left_out") or []]
    return int(job["matched"]), rows, left


@dataclass(frozen=True, kw_only=True)
class Redrive:
    """A redrive job as the API tells it, what the commands show of it."""

    id: str
    state: str
    matched: int
    published: int
    failed: int
    rate: float

    @property
    def done(self) -> int:
        return self.published + self.failed

    @classmethod
    def read(cls, job: Any) -> Redrive:
        return cls(
            id=str(job["id"]),
            state=str(job["state"]),
            matched=int(job["matched"]),
            published=int(job["published"]),
            failed=int(job["failed"]),
            rate=float(job["rate"]),
        )


@dead_letters.command()
@api_option
def redrives(api_url: str, api_key: str | None) -> None:
    """Recent redrive jobs and their progress."""
    with Api(api_url, api_key) as api:
        jobs = api.get(
            "/dead-letters/redrives", read=lambda found: [Redrive.read(j) for j in found["items"]]
        )
    rows = [[j.id, j.state, j.matched, j.published, j.failed, j.rate] for j in jobs]
    click.echo(table(rows, ["id", "state", "matched", "published", "failed", "rate"]))


@dead_letters.command()
@click.argument("redrive_id")
@api_option
def cancel(redrive_id: str, api_url: str, api_key: str | None) -> None:
    """Cancel a redrive; what it has not re-published stays untouched."""
    with Api(api_url, api_key) as api:
        job = api.delete(f"/dead-letters/redrives/{redrive_id}", read=Redrive.read)
    click.echo(printable(f"redrive {redrive_id} {job.state}: {job.published} published"))


@dead_letters.command()
@click.argument("dead_letter_ids", nargs=-1)
@click.option("--group", default=None, help="Discard every active dead letter of this group.")
@click.option(
    "--force",
    is_flag=True,
    help="Discard letters in doubt too: taken for a re-publishing that was never recorded.",
)
@api_option
def discard(
    dead_letter_ids: tuple[str, ...],
    group: str | None,
    force: bool,
    api_url: str,
    api_key: str | None,
) -> None:
    """Discard dead letters (kept a while, see DOCPROC_HANDLED_DEAD_LETTER_RETENTION). A letter
    in doubt — its re-publishing may be under way — is left as it is unless --force."""
    if not dead_letter_ids and group is None:
        raise click.UsageError("name dead letters to discard, or --group")
    params = {"force": "true"} if force else {}
    with Api(api_url, api_key) as api:
        for dead_letter_id in dead_letter_ids:
            api.delete(f"/dead-letters/{dead_letter_id}", params=params)
            click.echo(f"{printable(dead_letter_id)}: discarded")
        if group is not None:
            discarded, in_doubt = api.delete(
                f"/dead-letters/groups/{group}",
                params=params,
                read=lambda done: (int(done["discarded"]), int(done.get("in_doubt", 0))),
            )
            click.echo(f"group {printable(group)}: {discarded} discarded")
            if in_doubt:
                click.echo(
                    f"{in_doubt} left as they are: taken for a re-publishing that was never "
                    "recorded (it may be under way); --force discards them too"
                )

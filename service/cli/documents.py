"""`docproc status`, `docproc text`, `docproc search`: one document, or what matches, from a
terminal through the API."""

from __future__ import annotations

from typing import Any

import click

from service.cli.client import Api, api_option, table
from service.terminal import printable


@click.command()
@click.argument("task_id")
@api_option
def status(task_id: str, api_url: str, api_key: str | None) -> None:
    """Where a task is: state, progress, retries, error.

    \b
    Examples:
      docproc status 3f0c9a4e-6a57-4c1e-9d1e-2c2b6f1f7a10
    """
    with Api(api_url, api_key) as api:
        rows = api.get(f"/tasks/{task_id}/status", read=_status_rows)
    click.echo(table(rows, ["", ""]))


def _status_rows(found: Any) -> list[list[object]]:
    progress = found["progress"]
    rows = [
        ["state", found["state"]],
        ["task", found["task"]],
        ["document", found["document_id"]],
        ["step", f"{progress['step'] or '-'} ({progress['percent']:g} %)"],
        ["retries", found["retries"]],
    ]
    if found["error"]:
        rows.append(["error", f"{found['error']['type']}: {found['error']['message']}"])
    return rows


@click.command()
@click.argument("document_id")
@api_option
def text(document_id: str, api_url: str, api_key: str | None) -> None:
    """A document's extracted text, as stored.

    \b
    Examples:
      docproc text b1f4c2de-0d4a-4b8e-8f5e-5a9e3c7d2b11 | less
    """
    with Api(api_url, api_key) as api:
        found = api.get(f"/documents/{document_id}/text", read=lambda found: str(found["text"]))
    # As stored, but for what a terminal would act on (escape sequences) or could not write.
    click.echo(printable(found, lines=True))


@click.command()
@click.argument("query", nargs=-1, required=True)
@click.option("--limit", default=10, show_default=True, help="Hits to show (at most 100).")
@click.option("--type", "document_type", help="Only documents of this type (pdf, html, docx…).")
@click.option("--language", help="Only documents in this language (ISO 639-1: en, de…).")
@click.option(
    "--since",
    help="Only documents dated at or after this ISO 8601 date or time (their own modification, "
    "else creation, else acceptance time).",
)
@api_option
def search(
    query: tuple[str, ...],
    *,
    limit: int,
    document_type: str | None,
    language: str | None,
    since: str | None,
    api_url: str,
    api_key: str | None,
) -> None:
    """Full-text search: words, "a phrase", OR, -excluded, prefix*.

    \b
    Examples:
      docproc search lighthouse keeper
      docproc search '"lighthouse keeper"' -storm --limit 5
      docproc search invoice --type pdf --language de --since 2024-01-01
    """
    filters = {"type": document_type, "language": language, "since": since}
    params = {"q": " ".join(query), "limit": limit} | {k: v for k, v in filters.items() if v}
    with Api(api_url, api_key) as api:
        rows, partial = api.get("/search", params=params, read=_hits)
    click.echo(table(rows, ["document", "file", "score", "snippet"]))
    if not rows:
        click.echo(printable(f"nothing matches {' '.join(query)!r}"), err=True)
    if partial:
        click.echo(partial, err=True)


def _hits(found: Any) -> tuple[list[list[object]], str]:
    """The hits' rows, and what to say when they are not ranked among every match."""
    rows: list[list[object]] = [
        [hit["document_id"], hit["filename"], f"{hit['score']:.3f}", hit["snippet"]]
        for hit in found["items"]
    ]
    if found.get("complete", True):
        return rows, ""
    return rows, (
        f"more than {found['window']:,} chunks match: these are the best of the newest "
        f"{found['window']:,}; more words, a phrase or a filter rank every match"
    )

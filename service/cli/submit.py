"""`docproc submit PATH...`: upload files through the API and, with --wait, follow them."""

from __future__ import annotations

import contextlib
import glob
import hashlib
import os
import re
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import click

from service.cli.client import (
    TRANSPORT_ERRORS,
    Answer,
    Api,
    UnexpectedAnswer,
    api_option,
    printable,
    problem_detail,
    table,
)
from service.errors import abort

FINAL = frozenset({"SUCCESS", "DEAD", "REVOKED"})
IN_FLIGHT = 8
"""Uploads (and status reads) in flight at once: one at a time, the command, not the API, set
the pace of a large folder; more than a few only queue up in the API."""


def _natural(path: Path) -> list[object]:
    """`doc-2` before `doc-10`: numbers in names compare as numbers."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(path))]


def expand(paths: tuple[str, ...]) -> list[Path]:
    """Files, folders (every file below them) and globs, each file once, in natural order. A
    path or glob that names nothing is a warning; the rest is uploaded."""
    found: dict[Path, None] = {}
    for given in paths:
        matches = [Path(m) for m in glob.glob(given, recursive=True)] or [Path(given)]
        for match in matches:
            if match.is_dir():
                for child in match.rglob("*"):
                    if child.is_file() and not child.name.startswith("."):
                        found[child] = None
            elif match.is_file():
                found[match] = None
            else:
                click.echo(f"docproc: warning: {printable(given)} names no file; skipped", err=True)
    return sorted(found, key=_natural)


def idempotency_key(path: Path, content: bytes) -> str:
    """The same file with the same content is the same upload: a rerun after a crash or a lost
    answer gets the documents it already made (for a day) instead of making them twice."""
    # The path's bytes as the file system has them: a name that is not UTF-8 (b"bad\xff.txt",
    # "bad\udcff.txt" to Python) cannot be encoded as UTF-8, and the others encode as they did.
    digest = hashlib.sha256(os.fsencode(path.resolve()) + b"\0" + content).hexdigest()
    return f"docproc-submit-{digest}"


def sent_name(path: Path) -> str:
    """The file's name as the upload gives it: what is not UTF-8 in it replaced (U+FFFD)."""
    return os.fsencode(path.name).decode("utf-8", "replace")


@click.command()
@click.argument("paths", nargs=-1, required=True)
@click.option("--wait", is_flag=True, help="Follow processing to the end and report outcomes.")
@click.option("--timeout", default=600.0, show_default=True, help="Seconds --wait waits at most.")
@api_option
def submit(
    paths: tuple[str, ...], wait: bool, timeout: float, api_url: str, api_key: str | None
) -> None:
    """Upload documents (files, folders, globs) to the API.

    Exits non-zero if any upload is refused or, with --wait, any document does not end SUCCESS.
    Each file goes with an Idempotency-Key made from its path and content: running the same
    command again (after a crash, a lost answer) does not upload anything twice, for a day.

    \b
    Examples:
      docproc submit report.pdf notes/
      docproc submit 'inbox/**/*.docx' --wait
    """
    files = expand(paths)
    if not files:
        raise click.UsageError("nothing to upload: no PATH names a file")
    accepted: dict[str, list[object]] = {}
    with Api(api_url, api_key, size=IN_FLIGHT) as api, _pool() as pool:

        def upload(path: Path) -> list[object]:
            # Gone, not ours to read, a name that cannot be sent: said in its row, the rest go on.
            try:
                content = path.read_bytes()
                upload = {"file": (sent_name(path), content)}
                key = idempotency_key(path, content)
            except (OSError, ValueError) as exc:
                said = getattr(exc, "strerror", None) or f"{type(exc).__name__}: {exc}"
                return [str(path), "UNREADABLE", "", "", said]
            response = api.send(
                "POST", "/documents", files=upload, headers={"Idempotency-Key": key}
            )
            if response.status_code == 202:
                state, document_id, task_id = response.read(_accepted)
                return [str(path), state, document_id, task_id, ""]
            detail = response.read(problem_detail) if response.content else ""
            return [str(path), f"REFUSED {response.status_code}", "", "", detail]

        rows: list[list[object]] = []
        try:
            with click.progressbar(length=len(files), label="uploading", file=sys.stderr) as bar:
                for row in pool.map(upload, files):  # in the files' order, IN_FLIGHT at a time
                    bar.update(1)
                    rows.append(row)
                    if row[3]:
                        accepted[str(row[3])] = row
            if wait and accepted:
                _follow(api, pool, accepted, timeout)
        # Raised in a thread, said once, here.
        except TRANSPORT_ERRORS as exc:
            api.unreachable(exc)
        except _Refused as refused:
            api.fail(refused.response)
        except UnexpectedAnswer as exc:
            abort(exc)
    click.echo(table(rows, ["file", "state", "document", "task", "detail"]))
    failed = [
        row
        for row in rows
        if row[1] != "SUCCESS" and (wait or str(row[1]).startswith(("REFUSED", "UNREADABLE")))
    ]
    if failed:
        raise SystemExit(1)


def _accepted(body: Any) -> tuple[str, str, str]:
    """An accepted upload's state, document and task."""
    return str(body["status"]), str(body["document_id"]), str(body["task_id"])


class _Refused(Exception):
    def __init__(self, response: Answer) -> None:
        super().__init__(response.status_code)
        self.response = response


@contextlib.contextmanager
def _pool() -> Iterator[ThreadPoolExecutor]:
    """Threads for requests in flight; what is not begun is dropped when the command stops (a
    refusal to go on, Ctrl-C), not sent after it."""
    pool = ThreadPoolExecutor(IN_FLIGHT)
    try:
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


STATUSES_A_READ = 100
"""Task ids in one `GET /tasks/statuses` (the API's bound)."""


def _follow(
    api: Api, pool: ThreadPoolExecutor, accepted: dict[str, list[object]], timeout: float
) -> None:
    """Read the statuses of what is not final, a hundred a request, until all are final."""
    deadline = time.monotonic() + timeout
    waiting = set(accepted)

    def read(task_ids: list[str]) -> list[tuple[str, str, str]]:
        response = api.send("GET", "/tasks/statuses", params=[("id", each) for each in task_ids])
        if response.status_code >= 400:
            raise _Refused(response)
        return list(response.read(lambda found: _statuses(found, accepted)))

    with click.progressbar(length=len(waiting), label="processing", file=sys.stderr) as bar:
        while waiting and time.monotonic() < deadline:
            ordered = [task_id for task_id in accepted if task_id in waiting]  # as sent
            parts = [
                ordered[n : n + STATUSES_A_READ] for n in range(0, len(ordered), STATUSES_A_READ)
            ]
            for statuses in pool.map(read, parts):
                for task_id, state, error in statuses:
                    row = accepted[task_id]
                    row[1] = state
                    if error:
                        row[4] = error
                    if state in FINAL:
                        waiting.discard(task_id)
                        bar.update(1)
            if waiting:
                time.sleep(0.5)


def _statuses(found: Any, accepted: dict[str, list[object]]) -> list[tuple[str, str, str]]:
    """Each task's id, state and error ("" for none) from `GET /tasks/statuses`: tasks it sent."""
    statuses = []
    for status in found["statuses"]:
        if status["task_id"] not in accepted:
            raise KeyError(f"task {status['task_id']}, not asked for")
        error = status["error"]
        said = f"{error['type']}: {error['message']}" if error else ""
        statuses.append((status["task_id"], str(status["state"]), said))
    return statuses

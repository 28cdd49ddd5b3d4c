"""`docproc submit PATH...`: upload files through the API and, with --wait, follow them."""

from __future__ import annotations

import contextlib
import glob
import hashlib
import os
import re
import sys
import time
from collections.abc import Collection, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from service.cli.client import (
    TRANSPORT_ERRORS,
    Answer,
    Api,
    UnexpectedAnswer,
    api_option,
    problem_detail,
    table,
)
from service.errors import abort
from service.terminal import printable

FINAL = frozenset({"SUCCESS", "DEAD", "REVOKED"})
IN_FLIGHT = 8
"""Uploads (and status reads) in flight at once: one at a time, the command, not the API, set
the pace of a large folder; more than a few only queue up in the API."""


def _natural(path: Path) -> list[object]:
    """`doc-2` before `doc-10`: numbers in names compare as numbers."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(path))]


@dataclass(frozen=True)
class Unreadable:
    """A folder below one named that could not be walked, and why: said in its row, as a file
    that cannot be read is, rather than skipped without a word."""

    path: Path
    reason: str


def expand(paths: tuple[str, ...]) -> list[Path | Unreadable]:
    """Files, folders (every file below them) and globs, each file once — by what it resolves
    to, so a link and its file are one — in natural order. A path that exists is taken as it is
    (`a[1].txt` is that file, not `a1.txt`); one that does not is a glob. A path or glob that
    names nothing is a warning; the rest is uploaded. A folder named is walked, but no link to a
    folder below it, nor below a `**`: a folder holding a link to itself would be walked without
    end."""
    found: list[Path | Unreadable] = []
    for given in paths:
        if os.path.lexists(given):
            matches = [Path(given)]
        else:
            unwalked: list[Unreadable] = []
            matches = [Path(m) for m in _matching(given, unwalked)] or [Path(given)]
            found += unwalked
        for match in matches:
            if match.is_dir():
                found += _files_below(match)
            elif match.is_file():
                found.append(match)
            else:
                click.echo(f"docproc: warning: {printable(given)} names no file; skipped", err=True)
    each: dict[str, Path | Unreadable] = {}
    for item in sorted(found, key=lambda item: _natural(_path(item))):
        each.setdefault(os.path.realpath(_path(item)), item)
    return list(each.values())


def _path(item: Path | Unreadable) -> Path:
    return item.path if isinstance(item, Unreadable) else item


def _files_below(folder: Path) -> list[Path | Unreadable]:
    """The files below `folder` whose names do not start with "."; links to folders not
    followed; each folder that cannot be read, as Unreadable."""
    unreadable: list[Path | Unreadable] = []

    def unwalked(exc: OSError) -> None:
        unreadable.append(Unreadable(Path(exc.filename or folder), _reason(exc)))

    files: list[Path | Unreadable] = [
        Path(below, name)
        for below, _, names in os.walk(folder, onerror=unwalked)
        for name in names
        if not name.startswith(".") and os.path.isfile(os.path.join(below, name))
    ]
    return files + unreadable


def _reason(exc: Exception) -> str:
    """Why a file or folder could not be read, as its row says it."""
    return getattr(exc, "strerror", None) or f"{type(exc).__name__}: {exc}"


def _matching(pattern: str, unwalked: list[Unreadable]) -> list[str]:
    """glob.glob(pattern, recursive=True), except that `**` goes down no link to a folder —
    glob's does, and `loop/**` over a folder holding two links to itself did not end (2^40
    paths), with one it found each file forty times — and that each folder below a `**` that
    cannot be read is added to `unwalked`, where glob's passes over it without a word."""
    parts = pattern.split(os.sep)
    if "**" not in parts:
        return glob.glob(pattern)
    at = parts.index("**")
    rest = os.sep.join(parts[at + 1 :])
    if at == 0:
        tops = [os.curdir]
    else:
        head = os.sep.join(parts[:at]) or os.sep
        tops = [top for top in glob.glob(head) if os.path.isdir(top)]
    found = []

    def unreadable(exc: OSError) -> None:  # os.walk's: the folder is exc.filename
        unwalked.append(Unreadable(Path(exc.filename or pattern), _reason(exc)))

    for top in tops:
        for folder, folders, names in os.walk(top, onerror=unreadable):
            # As glob's `**`: no hidden folder or file (a name starting with ".").
            folders[:] = [name for name in folders if not name.startswith(".")]
            # The current folder, where a pattern starts with `**`, glob names "", not ".".
            named = at > 0 or folder != top
            if rest:
                below = os.path.join(glob.escape(folder) if named else "", rest)
                found += _matching(below, unwalked)
                continue
            if named:
                found.append(folder)
            if not pattern.endswith(os.sep):  # `**/`: folders only
                found += [os.path.join(folder, n) for n in names if not n.startswith(".")]
    return found


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
    try:
        with Api(api_url, api_key, size=IN_FLIGHT) as api, _pool(api) as pool:
            rows = _upload(api, pool, files, wait=wait, timeout=timeout)
    except KeyboardInterrupt:
        click.echo(
            "docproc: submit interrupted; what the API accepted is processed all the same, and "
            "the same command again uploads nothing twice",
            err=True,
        )
        raise SystemExit(130) from None
    click.echo(table(rows, ["file", "state", "document", "task", "detail"]))
    failed = [
        row
        for row in rows
        if row[1] != "SUCCESS" and (wait or str(row[1]).startswith(("REFUSED", "UNREADABLE")))
    ]
    if failed:
        raise SystemExit(1)


def _upload(
    api: Api,
    pool: ThreadPoolExecutor,
    files: list[Path | Unreadable],
    *,
    wait: bool,
    timeout: float,
) -> list[list[object]]:
    """Each file's row: uploaded (and, with `wait`, followed to its end), or why not."""
    accepted: dict[str, list[object]] = {}

    def upload(item: Path | Unreadable) -> list[object]:
        if isinstance(item, Unreadable):
            return [str(item.path), "UNREADABLE", "", "", item.reason]
        path = item
        # Gone, not ours to read, a name that cannot be sent: said in its row, the rest go on.
        try:
            content = path.read_bytes()
            upload = {"file": (sent_name(path), content)}
            key = idempotency_key(path, content)
        except (OSError, ValueError) as exc:
            return [str(path), "UNREADABLE", "", "", _reason(exc)]
        response = api.send("POST", "/documents", files=upload, headers={"Idempotency-Key": key})
        if response.status_code == 202:
            state, document_id, task_id = response.read(_accepted)
            return [str(path), state, document_id, task_id, ""]
        if response.status_code == 413 and not _json_body(response):
            # A proxy's limit below the API's: this file is too large to pass, others may.
            kind = response.headers.get("content-type") or "no content type"
            detail = f"too large for what is in front of the API (it answered {kind})"
        else:
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
    return rows


def _json_body(response: Answer) -> bool:
    try:
        response.json()
    except (ValueError, RecursionError):
        return False
    return True


def _accepted(body: Any) -> tuple[str, str, str]:
    """An accepted upload's state, document and task."""
    return str(body["status"]), str(body["document_id"]), str(body["task_id"])


class _Refused(Exception):
    def __init__(self, response: Answer) -> None:
        super().__init__(response.status_code)
        self.response = response


@contextlib.contextmanager
def _pool(api: Api) -> Iterator[ThreadPoolExecutor]:
    """Threads for requests in flight; what is not begun is dropped when the command stops (a
    refusal to go on, Ctrl-C), not sent after it. On Ctrl-C the requests under way end too:
    their threads, which the interpreter waits for as it exits whatever `shutdown` is told,
    would hold the command until the API answered, or for 30 s."""
    pool = ThreadPoolExecutor(IN_FLIGHT)
    try:
        yield pool
    except KeyboardInterrupt:
        api.interrupt()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


STATUSES_A_READ = 100
"""Task ids in one `GET /tasks/statuses` (the API's bound)."""
FOLLOW_PAUSE = 0.5
"""Seconds between two rounds of status reads."""
FIRST_WINDOW = 2 * STATUSES_A_READ
"""Unfinished tasks a round reads at least, the oldest first."""


class Following:
    """Which statuses `--wait` reads in each round, while tasks are unfinished.

    Tasks finish roughly in the order they were sent, so a round reads the oldest unfinished ones
    — twice as many as finished the round before, FIRST_WINDOW at least — and one part of the
    rest, in turn, where a task that finished out of order (another's retry held up) is seen
    before the window reaches it. Reading every unfinished task each round cost the API one
    status read a task a round: thousands of files followed over a minute made hundreds of
    thousands of them, on the CPU the API and the workers share with the command.
    """

    def __init__(self, task_ids: Iterable[str]) -> None:
        self.unfinished: dict[str, None] = dict.fromkeys(task_ids)  # in the order sent
        self.window = FIRST_WINDOW
        self._turn = 0

    def round(self) -> list[list[str]]:
        """The task ids to read this round, a request's worth a list."""
        ordered = list(self.unfinished)
        head, rest = ordered[: self.window], ordered[self.window :]
        parts = _parts(head)
        if rest:
            start = self._turn if self._turn < len(rest) else 0
            parts.append(rest[start : start + STATUSES_A_READ])
            self._turn = start + STATUSES_A_READ
        return parts

    def everything(self) -> list[list[str]]:
        """Every unfinished task's id, a request's worth a list (the last round)."""
        return _parts(list(self.unfinished))

    def finished(self, task_ids: Collection[str]) -> None:
        """These ended this round; the next round's window follows the pace."""
        for task_id in task_ids:
            self.unfinished.pop(task_id, None)
        self.window = max(FIRST_WINDOW, 2 * len(task_ids))


def _parts(task_ids: list[str]) -> list[list[str]]:
    return [task_ids[n : n + STATUSES_A_READ] for n in range(0, len(task_ids), STATUSES_A_READ)]


def _follow(
    api: Api, pool: ThreadPoolExecutor, accepted: dict[str, list[object]], timeout: float
) -> None:
    """Read statuses, round after round, until every task is final or the time is up; then read
    every unfinished one once more, so that the table says where each is."""
    deadline = time.monotonic() + timeout
    following = Following(accepted)

    def read(task_ids: list[str]) -> list[tuple[str, str, str]]:
        response = api.send("GET", "/tasks/statuses", params=[("id", each) for each in task_ids])
        if response.status_code >= 400:
            raise _Refused(response)
        return list(response.read(lambda found: _statuses(found, accepted)))

    with click.progressbar(length=len(accepted), label="processing", file=sys.stderr) as bar:
        while following.unfinished:
            last = time.monotonic() >= deadline
            ended = []
            for statuses in pool.map(read, following.everything() if last else following.round()):
                for task_id, state, error in statuses:
                    row = accepted[task_id]
                    row[1] = state
                    if error:
                        row[4] = error
                    if state in FINAL and task_id in following.unfinished:
                        ended.append(task_id)
            following.finished(ended)
            bar.update(len(ended))
            if last:
                return
            if following.unfinished:
                time.sleep(max(0.0, min(FOLLOW_PAUSE, deadline - time.monotonic())))


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

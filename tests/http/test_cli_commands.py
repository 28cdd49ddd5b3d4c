"""The client commands (`docproc submit`, `status`, `text`, `search`, `dead-letters …`) against
the real API served by uvicorn on a port, its broker a recording publisher: each command's
requests — paths, parameters, bodies, the key — as the API reads them, and its answers as the
command prints them."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from service.api.app import create_app
from service.cli import cli
from service.settings import Settings
from service.store import documents, task_runs
from service.store.database import Store
from tests.api.test_dead_letters_api import bury, dead_message, put_in_doubt
from tests.support import RecordingPublisher, free_port, served_by_uvicorn

KEY = "cli-test-key"


@dataclass
class Served:
    url: str
    publisher: RecordingPublisher

    def run(self, *args: str, key: str | None = KEY) -> Result:
        """`docproc ARGS --api URL`, in this process; its exit code and output."""
        env = {"DOCPROC_API_KEY": key}  # None: unset, whatever the test's environment holds
        return CliRunner().invoke(cli, [*args, "--api", self.url], env=env, catch_exceptions=False)


@pytest.fixture
def served(settings_for: Callable[..., Settings]) -> Iterator[Served]:
    publisher = RecordingPublisher()
    app = create_app(settings_for(DOCPROC_API_KEYS=KEY), publisher=publisher)
    with served_by_uvicorn(app) as port:
        yield Served(f"http://127.0.0.1:{port}", publisher)


def rows(output: str) -> list[list[str]]:
    """The rows of a table the CLI printed (after its header and rule)."""
    return [line.split() for line in output.splitlines()[2:] if line.strip()]


def test_submit_uploads_each_file_once_and_follows_it_to_its_end(
    served: Served, store: Store, tmp_path: Path
) -> None:
    folder = tmp_path / "inbox"
    folder.mkdir()
    for n in (2, 10, 1):
        (folder / f"doc-{n}.txt").write_text(f"Document {n}, a line of text.")

    first = served.run("submit", str(folder))
    again = served.run("submit", str(folder))

    assert first.exit_code == 0, first.output
    listed = rows(first.stdout)
    assert [Path(row[0]).name for row in listed] == ["doc-1.txt", "doc-2.txt", "doc-10.txt"]
    assert {row[1] for row in listed} == {"PENDING"}
    assert len(served.publisher.sent) == 3
    # The same files again: their Idempotency-Keys name the uploads already made.
    assert again.exit_code == 0, again.output
    assert rows(again.stdout) == listed
    assert len(served.publisher.sent) == 3

    for row in listed:
        store.run(task_runs.record_success, row[3])
    waited = served.run("submit", str(folder), "--wait", "--timeout", "30")
    assert waited.exit_code == 0, waited.output
    assert {row[1] for row in rows(waited.stdout)} == {"SUCCESS"}

    status = served.run("status", listed[0][3])
    assert status.exit_code == 0, status.output
    assert "SUCCESS" in status.stdout


def test_reads_and_a_missing_document_end_in_one_clear_line(served: Served) -> None:
    found = served.run("search", "lighthouse")
    missing = served.run("text", "no-such-document")
    strange = served.run("status", "a task? 100% \x01 #1")

    assert found.exit_code == 0, found.output
    assert missing.exit_code != 0
    assert missing.output.strip().count("\n") == 0, missing.output
    assert "GET /documents/no-such-document/text: 404" in missing.output
    # Sent as typed — not cut at "?" or "#", nor refused by http.client — and the API's refusal
    # said on one line, the control character escaped.
    assert strange.exit_code != 0
    assert strange.output.strip().count("\n") == 0, strange.output
    assert "GET /tasks/a task? 100% \\x01 #1/status: 400" in strange.output, strange.output


def test_a_file_that_cannot_be_read_is_said_in_its_row_and_the_rest_are_uploaded(
    served: Served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "inbox"
    folder.mkdir()
    for name in ("a.txt", "b.txt"):
        (folder / name).write_text(f"The file {name}.")
    reading = Path.read_bytes

    def read_bytes(path: Path) -> bytes:  # as if b.txt were not ours to read (tests run as root)
        if path.name == "b.txt":
            raise PermissionError(13, "Permission denied", str(path))
        return reading(path)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    result = served.run("submit", str(folder))

    assert result.exit_code == 1, result.output
    [uploaded, unreadable] = rows(result.stdout)
    assert (Path(uploaded[0]).name, uploaded[1]) == ("a.txt", "PENDING")
    assert unreadable[1:] == ["UNREADABLE", "Permission", "denied"]
    assert len(served.publisher.sent) == 1


def test_dead_letters_are_listed_shown_grouped_republished_and_discarded(
    served: Served, store: Store
) -> None:
    first, second = bury(store, dead_message(), dead_message())

    listed = served.run("dead-letters", "list", "--queue", "document_processing")
    shown = served.run("dead-letters", "show", first)
    groups = served.run("dead-letters", "groups")
    republished = served.run("dead-letters", "republish", first)
    dry = served.run("dead-letters", "redrive", "--all", "--dry-run")
    discarded = served.run("dead-letters", "discard", second)

    for result in (listed, shown, groups, republished, dry, discarded):
        assert result.exit_code == 0, result.output
    assert {first, second} <= set(listed.stdout.split())
    assert json.loads(shown.stdout)["id"] == first
    assert rows(groups.stdout)[0][1:4] == ["2", "docproc.document.process", "rejected"]
    assert [sent.routing_key for sent in served.publisher.sent] == ["document_processing"]
    every = served.run("dead-letters", "list", "--status", "all")
    active = served.run("dead-letters", "list")
    assert {row[0]: row[-1] for row in rows(every.stdout)} == {first: "1", second: "0"}
    assert rows(active.stdout) == [], "one re-published, the other discarded"


def test_discarding_a_group_says_what_it_left_in_doubt_and_force_takes_it(
    served: Served, store: Store
) -> None:
    doubtful, _ = bury(store, dead_message(), dead_message())
    put_in_doubt(store, doubtful)
    [group] = {row[0] for row in rows(served.run("dead-letters", "groups").stdout)}

    alone = served.run("dead-letters", "discard", doubtful)
    grouped = served.run("dead-letters", "discard", "--group", group)
    forced = served.run("dead-letters", "discard", "--force", doubtful)

    assert alone.exit_code != 0
    assert "never recorded" in alone.output
    assert grouped.exit_code == 0, grouped.output
    assert "1 discarded" in grouped.stdout
    assert "1 left as they are" in grouped.stdout
    assert "--force" in grouped.stdout
    assert forced.exit_code == 0, forced.output


def test_a_dry_run_says_what_it_leaves_out_and_the_flag_that_takes_it(
    served: Served, store: Store
) -> None:
    bury(store, dead_message(queue="retry_queue"))
    bury(store, dead_message(queue="retry_queue", reason="delivery_limit"))

    default = served.run("dead-letters", "redrive", "--queue", "retry_queue", "--dry-run")
    asked = served.run(
        "dead-letters", "redrive", "--queue", "retry_queue", "--dry-run", "--include-delivery-limit"
    )

    assert default.exit_code == 0, default.output
    assert "dry run: 1 would be re-published" in default.stdout
    assert "left out: 1 died at the delivery limit (--include-delivery-limit" in default.stdout
    assert asked.exit_code == 0, asked.output
    assert "dry run: 2 would be re-published" in asked.stdout
    assert "left out" not in asked.stdout


def test_a_command_without_the_key_or_without_an_api_says_what_to_do(served: Served) -> None:
    refused = served.run("dead-letters", "discard", "some-letter", key=None)
    nowhere = CliRunner().invoke(cli, ["status", "t-1", "--api", f"http://127.0.0.1:{free_port()}"])

    assert refused.exit_code != 0
    assert "401" in refused.output
    assert nowhere.exit_code != 0
    assert "does not answer" in nowhere.output
    assert "docproc up" in nowhere.output


def test_a_file_whose_name_is_not_utf8_is_uploaded_and_said_as_its_bytes(
    served: Served, store: Store, tmp_path: Path
) -> None:
    folder = tmp_path / "inbox"
    folder.mkdir()
    (folder / "good.txt").write_text("A good name.")
    with open(os.fsencode(folder) + b"/bad\xff.txt", "wb") as bad:  # no str names this file
        bad.write(b"A name that is not UTF-8.")

    result = served.run("submit", str(folder))
    again = served.run("submit", str(folder))

    assert result.exit_code == 0, result.output
    listed = rows(result.stdout)
    assert [(Path(row[0]).name, row[1]) for row in listed] == [
        ("bad\\xff.txt", "PENDING"),
        ("good.txt", "PENDING"),
    ]
    document = store.run(documents.get, listed[0][2])
    assert document is not None
    assert document.filename == "bad\ufffd.txt"
    # Its Idempotency-Key is the same from one run to the next: the upload is not made twice.
    assert rows(again.stdout) == listed
    assert len(served.publisher.sent) == 2

"""Reading a dead letter (`service.deadletters.parsing.read`) never raises, and reads a body as
the worker read it: decompressed as its `compression` header says, within a bound."""

from __future__ import annotations

import bz2
import lzma
import uuid
import zlib
from typing import Any

import pytest

from service.deadletters import parsing
from service.deadletters.parsing import RawMessage, read
from service.task_protocol import BODY_CHECK_LIMIT

BODY = b'[["doc-1"], {"why": "testing"}, {"callbacks": null}]'


def letter(body: bytes, **headers: Any) -> RawMessage:
    return RawMessage(
        body=body,
        headers={"task": "docproc.canary.fail", "id": str(uuid.uuid4()), **headers},
        properties={"content_type": "application/json", "content_encoding": "utf-8"},
    )


@pytest.mark.parametrize(
    ("compression", "compress"),
    [
        ("application/x-gzip", zlib.compress),
        ("zlib", zlib.compress),
        ("application/x-bz2", bz2.compress),
        ("application/x-lzma", lzma.compress),
        ("xz", lzma.compress),
    ],
)
def test_a_compressed_body_is_read_decompressed_and_kept_as_it_came(
    compression: str, compress: Any
) -> None:
    compressed = compress(BODY)

    read_letter = read(letter(compressed, compression=compression))

    assert (read_letter.args, read_letter.kwargs) == (["doc-1"], {"why": "testing"})
    assert read_letter.error_type is None, read_letter.error_message
    assert read_letter.problems is None
    assert read_letter.body == compressed


def test_streams_one_after_another_are_read_as_kombu_reads_them() -> None:
    """bz2 and lzma read concatenated streams, and ignore what follows that is none."""
    body = bz2.compress(BODY[:10]) + bz2.compress(BODY[10:]) + b"trailing"

    read_letter = read(letter(body, compression="application/x-bz2"))

    assert read_letter.args == ["doc-1"]


def test_a_body_inflating_past_the_bound_is_not_inflated_nor_called_malformed() -> None:
    """A few kilobytes can inflate to gigabytes: reading stops one byte past the bound, and a
    body it did not read is not said to be wrong."""
    bomb = zlib.compress(b"[" + b" " * (BODY_CHECK_LIMIT * 4) + b"[], {}, {}]")

    read_letter = read(letter(bomb, compression="application/x-gzip"))

    assert len(bomb) < 16 * 1024
    assert read_letter.error_type is None
    assert read_letter.args is None
    assert read_letter.problems is not None
    assert f"inflates past {BODY_CHECK_LIMIT:,} bytes" in read_letter.problems[0]
    assert read_letter.body == bomb


@pytest.mark.parametrize(
    "body", [b"not zlib at all", zlib.compress(BODY)[:-4], b""], ids=["garbage", "cut", "empty"]
)
def test_a_body_that_does_not_decompress_is_malformed_saying_so(body: bytes) -> None:
    read_letter = read(letter(body, compression="application/x-gzip"))

    assert read_letter.error_type == "MalformedTaskMessage"
    assert read_letter.error_message is not None
    assert "does not decompress as its compression header says" in read_letter.error_message


@pytest.mark.parametrize("compression", ["application/x-brotli", "rot13", 7])
def test_a_compression_not_known_here_is_not_read_nor_called_malformed(compression: Any) -> None:
    read_letter = read(letter(b"\x8b\x00opaque", compression=compression))

    assert read_letter.error_type is None
    assert read_letter.args is None
    assert read_letter.problems is not None
    assert "not read here" in read_letter.problems[0]


def nested_table(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {"leaf": "x"}
    for _ in range(depth):
        value = {"k": value}
    return value


def test_headers_nested_past_repr_are_read_and_keyed_the_same_each_time() -> None:
    raw = letter(BODY, **{"x-nested": nested_table(5000)})

    first, second = read(raw), read(raw)

    assert first.message_key == second.message_key
    assert first.problems is not None
    assert "headers could not be read as JSON (RecursionError" in first.problems[0]
    assert first.args == ["doc-1"]


def test_a_letter_whose_reading_breaks_is_read_in_its_least_form(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What no reader foresaw (here: a bug injected into the reading of x-death) still makes a
    record: the body as it came, the headers as escaped text, the task, and why."""

    def broken(self: Any, headers: Any) -> Any:
        raise KeyError("injected")

    monkeypatch.setattr(parsing._Reader, "deaths", broken)
    raw = letter(BODY, **{"x-note": "caf\u00e9"})

    read_letter = read(raw)

    assert read_letter.body == BODY
    assert read_letter.task_name == "docproc.canary.fail"
    assert read_letter.task_id == raw.headers["id"]
    assert read_letter.headers == {"unreadable": parsing.escaped(raw.headers)}
    assert "caf\\xe9" in read_letter.headers["unreadable"]
    assert read_letter.problems is not None
    assert "could not be read (KeyError: 'injected')" in read_letter.problems[0]

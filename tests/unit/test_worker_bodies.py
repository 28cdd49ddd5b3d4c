"""What kombu inflates and decodes of a delivery's body in the worker (`service.worker.bodies`,
through `task_protocol.inflated`): at most BODY_CHECK_LIMIT, and only from a content encoding
that does not inflate — a refusal kombu hands to the consumer's `on_decode_error`, which
dead-letters the message."""

from __future__ import annotations

import bz2
import lzma
import time
import tracemalloc
import zlib
from typing import Any

import amqp
import kombu.compression
import pytest
from kombu.transport import pyamqp

from service.task_protocol import BODY_CHECK_LIMIT, inflated
from service.worker import bodies

TASK_BODY = b'[[], {"document_id": "d"}, {"callbacks": null, "errbacks": null}]'


@pytest.mark.parametrize(
    "compression",
    ["zlib", "gzip", "application/x-gzip", "bzip2", "application/x-bz2", "xz", "lzma"],
)
def test_a_compressed_body_inflates_as_kombu_inflates_it(compression: str) -> None:
    compressed, _ = kombu.compression.compress(TASK_BODY * 100, compression)
    assert inflated(compressed, compression) == TASK_BODY * 100
    assert bodies.decompressed(compressed, compression) == kombu.compression.decompress(
        compressed, compression
    )


@pytest.mark.parametrize(
    ("compression", "compressed"),
    [
        ("bzip2", bz2.compress(b"one") + bz2.compress(b"two") + b"not bzip2"),
        ("xz", lzma.compress(b"one") + lzma.compress(b"two") + b"not xz at all, no"),
        ("zlib", zlib.compress(b"onetwo") + zlib.compress(b"three")),
    ],
)
def test_streams_that_follow_one_another_are_read_as_kombu_reads_them(
    compression: str, compressed: bytes
) -> None:
    expected = kombu.compression.decompress(compressed, compression)
    assert inflated(compressed, compression) == expected == b"onetwo"


def test_a_bomb_is_refused_having_inflated_no_more_than_the_bound() -> None:
    """2.6 KB inflating to 510 MiB: kombu took the worker's main process to 1.1 GB with it."""
    bomb = bz2.compress(TASK_BODY) + bz2.compress(b" " * (10 << 20)) * 51
    tracemalloc.start()
    started = time.thread_time()
    try:
        with pytest.raises(bodies.UnreadableBody, match="inflates to more than 1,048,576 bytes"):
            bodies.decompressed(bomb, "application/x-bz2")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * BODY_CHECK_LIMIT
    assert time.thread_time() - started < 1.0


@pytest.mark.parametrize(
    ("compression", "body", "said"),
    [
        ("brotli", b"x", "compression 'brotli' is not one the worker inflates"),
        (["zlib"], b"x", "compression ['zlib'] is not one the worker inflates"),
        ("zlib", b"not zlib", "the body is not zlib data"),
        ("zlib", zlib.compress(TASK_BODY)[:-4], "the compressed stream ends early"),
        ("bzip2", bz2.compress(TASK_BODY)[:-4], "the compressed stream ends early"),
    ],
)
def test_what_cannot_be_inflated_is_said(compression: object, body: bytes, said: str) -> None:
    with pytest.raises(bodies.UnreadableBody, match=said.replace("[", r"\[").replace("]", r"\]")):
        bodies.decompressed(body, compression)


def _delivery(body: bytes, **properties: object) -> amqp.Message:
    raw = amqp.Message(body, **properties)
    raw.delivery_info = {"delivery_tag": 1, "routing_key": "document_processing"}
    return raw


def _received(raw: amqp.Message) -> Any:  # kombu's stub has a received body as text
    """The message kombu's AMQP channel builds of a delivery (its channel unused for that)."""
    bodies.install()
    bodies.install()  # idempotent
    channel = pyamqp.Channel.__new__(pyamqp.Channel)
    return channel.message_to_python(raw)


def test_kombu_inflates_through_the_bound_and_the_message_keeps_what_arrived() -> None:
    compressed = zlib.compress(TASK_BODY)
    message = _received(
        _delivery(
            compressed,
            content_type="application/json",
            application_headers={"compression": "application/x-gzip"},
        )
    )
    assert not message.errors
    assert message.body == TASK_BODY
    assert bodies.arrived(message) == compressed

    bomb = bz2.compress(b" " * (BODY_CHECK_LIMIT + 1))
    message = _received(_delivery(bomb, application_headers={"compression": "application/x-bz2"}))
    [(kind, error, _)] = message.errors
    assert kind is bodies.UnreadableBody
    assert "inflates to more than" in str(error)
    assert message.body == bomb


@pytest.mark.parametrize("encoding", [None, "utf-8", "UTF-8", "utf8", "binary"])
def test_the_encodings_kombu_writes_are_read(encoding: str | None) -> None:
    message = _received(_delivery(TASK_BODY, content_encoding=encoding))
    assert not message.errors
    assert message.body == TASK_BODY


@pytest.mark.parametrize("encoding", ["bz2_codec", "zlib_codec", "base64", "hex", "latin-1"])
def test_an_encoding_kombu_would_decode_with_any_codec_is_refused(encoding: str) -> None:
    """kombu decodes a body whose content type has no decoder of its own (`application/data`)
    with the codec its content encoding names: bz2_codec inflated as much as it was asked."""
    body = bz2.compress(b" " * (10 << 20))
    message = _received(_delivery(body, content_type="application/data", content_encoding=encoding))
    [(kind, error, _)] = message.errors
    assert kind is bodies.UnreadableBody
    assert f"content encoding {encoding!r} is not one the worker decodes" in str(error)
    assert message.body == body


@pytest.mark.parametrize("method", ["brotli", ["zlib"], None])
def test_inflated_refuses_a_method_it_does_not_read_with_a_value_error(method: object) -> None:
    with pytest.raises(ValueError, match="is not a compression kombu reads"):
        inflated(zlib.compress(TASK_BODY), method)  # type: ignore[arg-type]


def test_inflated_stops_one_byte_past_its_limit() -> None:
    assert inflated(zlib.compress(b"x" * 100), "zlib", limit=100) == b"x" * 100
    assert inflated(zlib.compress(b"x" * 101), "zlib", limit=100) is None

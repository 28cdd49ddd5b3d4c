"""The worker's reader of message properties (py-amqp, through `service.worker.frames`): what it
cannot read becomes one header naming the error, which `task_protocol.problem` turns into a
reason to dead-letter — never an exception out of Celery's event loop."""

from __future__ import annotations

import struct

import amqp
import amqp.abstract_channel
import amqp.serialization
import pytest

from service.task_protocol import UNREADABLE_PROPERTIES, problem
from service.worker import frames
from tests.hostile_properties import (
    CONTENT_TYPE,
    HOSTILE,
    NOT_UTF8,
    content_header,
    deliver_arguments,
)


@pytest.mark.parametrize("properties", HOSTILE.values(), ids=HOSTILE.keys())
def test_properties_that_cannot_be_read_become_a_header_naming_why(properties: bytes) -> None:
    frames.install()
    message = amqp.Message()
    message.inbound_header(content_header(properties, 7))
    assert message.body_size == 7, "the body that follows is still known"
    headers = message.properties["application_headers"]
    assert set(headers) == {UNREADABLE_PROPERTIES}
    error = headers[UNREADABLE_PROPERTIES]["error"]
    assert error.split(":")[0] in {
        "RecursionError",
        "ValueError",
        "OverflowError",
        "OSError",
        "UnicodeDecodeError",
    }
    wrong = problem(headers, b"[[], {}, {}]", None)
    assert wrong is not None
    assert wrong.startswith(f"its properties cannot be read ({error}")


def test_readable_properties_are_read_as_ever() -> None:
    frames.install()
    frames.install()  # idempotent
    message = amqp.Message()
    message.inbound_header(
        content_header(struct.pack(">H", CONTENT_TYPE) + b"\x10application/json", 0)
    )
    assert message.properties == {"content_type": "application/json"}
    assert message.ready


def test_a_routing_key_that_is_not_utf8_is_read_with_replacements() -> None:
    frames.install()
    readable = deliver_arguments(b"document_processing")
    assert amqp.abstract_channel.loads("sLbss", readable, 0) == amqp.serialization.loads(
        "sLbss", readable, 0
    )
    assert frames.lenient_arguments("sLbss", readable, 0) == amqp.serialization.loads(
        "sLbss", readable, 0
    )
    hostile = deliver_arguments(NOT_UTF8 + b".document_processing")
    with pytest.raises(UnicodeDecodeError):
        amqp.serialization.loads("sLbss", hostile, 0)
    values, offset = amqp.abstract_channel.loads("sLbss", hostile, 0)
    assert values == ["ctag", 7, True, "docproc", "\ufffd\ufffd.document_processing"]
    assert offset == len(hostile)

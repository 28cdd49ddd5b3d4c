"""Floats in AMQP tables are written as doubles (`d`), as py-amqp (Celery's side) writes them.

pamqp, under aio-pika, writes a float in a header table as a 32-bit `f`: 0.1 came back as
0.10000000149011612, 1e-50 as 0.0, and 1e39 could not be written at all. Headers the API
publishes — a dead letter re-published, above all, whose headers the DLQ consumer read as
doubles — would change on their way back. `install()` makes pamqp write every float as the
double it is; pamqp reads both.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pamqp.encode

from service.hooks import replace_once


def install() -> None:
    """Write floats as doubles in every table this process encodes (idempotent)."""
    replace_once(pamqp.encode, "encode_table_value", _doubles)


def _doubles(original: Callable[[Any], bytes]) -> Callable[[Any], bytes]:
    # Tables and arrays go to pamqp's encoders of them directly, which call this again for
    # their values: through `original` each level of nesting cost a third frame of Python's
    # stack, and tables nested 330 deep, which pamqp alone writes, could not be written.
    def encode_table_value(value: Any) -> bytes:
        if isinstance(value, float):
            return b"d" + pamqp.encode.double(value)
        if isinstance(value, dict):
            return b"F" + pamqp.encode.field_table(value)
        if isinstance(value, list):
            return b"A" + pamqp.encode.field_array(value)
        return original(value)

    return encode_table_value

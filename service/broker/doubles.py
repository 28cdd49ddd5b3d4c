"""Floats in AMQP tables are written as doubles (`d`), as py-amqp (Celery's side) writes them.

pamqp, under aio-pika, writes a float in a header table as a 32-bit `f`: 0.1 came back as
0.10000000149011612, 1e-50 as 0.0, and 1e39 could not be written at all. Headers the API
publishes — a dead letter re-published, above all, whose headers the DLQ consumer read as
doubles — would change on their way back. `install()` makes pamqp write every float as the
double it is; pamqp reads both.
"""

from __future__ import annotations

from typing import Any

import pamqp.encode


def install() -> None:
    """Write floats as doubles in every table this process encodes (idempotent)."""
    original: Any = pamqp.encode.encode_table_value
    if getattr(original, "doubles", False):
        return

    def encode_table_value(value: Any) -> bytes:
        if isinstance(value, float):
            return b"d" + pamqp.encode.double(value)
        encoded: bytes = original(value)
        return encoded

    encode_table_value.doubles = True  # type: ignore[attr-defined]
    pamqp.encode.encode_table_value = encode_table_value

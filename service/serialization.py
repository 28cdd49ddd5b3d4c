"""The msgspec serializer that docproc's task messages use (the worker registers it with kombu:
service.worker.app).

Stock Celery clients keep working: the worker also accepts kombu's plain `json`. Pickle is never
accepted.
"""

from __future__ import annotations

from typing import Any

import msgspec

NAME = "msgspec"
CONTENT_TYPE = "application/x-docproc-msgspec+json"
CONTENT_ENCODING = "utf-8"
ACCEPTED = (NAME, "json")
"""What the worker accepts: ours and kombu's JSON (so `send_task` from any Celery client works)."""

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder()


def dumps(value: Any) -> bytes:
    return _encoder.encode(value)


def loads(data: bytes | str) -> Any:
    return _decoder.decode(data)

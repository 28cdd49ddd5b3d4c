"""Request parameters as the API accepts them: an id or a filter value is printable text of at
most 255 characters, so that what the store cannot hold (a NUL, a 10 kB id) is a 400 naming the
parameter, not a store error."""

from __future__ import annotations

from typing import Annotated

from litestar.params import PathParameter, QueryParameter

PRINTABLE = r"^[^\x00-\x1f\x7f]+$"
MAX_LENGTH = 255

PathId = Annotated[str, PathParameter(max_length=MAX_LENGTH, pattern=PRINTABLE)]
"""A document, task, dead-letter or redrive id in the path."""

QueryText = Annotated[str | None, QueryParameter(max_length=MAX_LENGTH, pattern=PRINTABLE)]
"""A filter value in the query string."""

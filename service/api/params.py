"""Request parameters as the API accepts them: an id or a filter value is printable text of at
most 255 characters, so that what the store cannot hold (a NUL, a 10 kB id) is a 400 naming the
parameter, not a store error."""

from __future__ import annotations

from typing import Annotated, Any

from litestar.connection import ASGIConnection
from litestar.exceptions import NotFoundException
from litestar.handlers import BaseRouteHandler
from litestar.params import PathParameter, QueryParameter

PRINTABLE = r"^[^\x00-\x1f\x7f]+$"
MAX_LENGTH = 255

PathId = Annotated[str, PathParameter(max_length=MAX_LENGTH, pattern=PRINTABLE)]
"""A document, task, dead-letter or redrive id in the path."""

QueryText = Annotated[str | None, QueryParameter(max_length=MAX_LENGTH, pattern=PRINTABLE)]
"""A filter value in the query string."""
SEARCH_LENGTH = 500
"""The longest search a query string may carry (`/search`, and the console's search page)."""


def no_nul_in_path(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    """A guard for routes that serve files by their path, which the file system would refuse
    with a NUL in it (a 500): such a file is not there."""
    if "\x00" in connection.scope["path"]:
        raise NotFoundException("no such file")

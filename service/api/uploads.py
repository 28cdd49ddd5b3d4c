"""The file of an upload: the multipart body of `POST /documents`, read here, not by Litestar.

Litestar's form parser decodes each part that has no file name as text, in whatever charset the
part names — any codec Python has. `punycode`'s decoder takes time quadratic in its input (a
300 kB part held the event loop, and every other client, for 9 s), and a part that does not
decode, or names a codec that is no text codec (`rot13`, `base64`), raised out of the parser
as a 500. An upload needs one part, the file: it is kept as bytes, every other part is skipped
unread. The parser is the one Litestar uses (`multipart`); the body's size is bounded as the
route says (`request_max_body_size`), as it streams in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

from litestar import Request
from litestar.openapi.spec import (
    OpenAPIFormat,
    OpenAPIMediaType,
    OpenAPIType,
    Operation,
    RequestBody,
    Schema,
)
from multipart import (  # type: ignore[import-untyped]
    MultipartSegment,
    ParserError,
    ParserLimitReached,
    PushMultipartParser,
    parse_options_header,
)

from service.errors import BadRequest

FIELD = "file"
"""The form field the file is sent in (contract: `curl -F file=@report.pdf`)."""
MAX_PARTS = 64
"""Parts a body may have: one is read, a few more (a browser form's other fields) are skipped."""


class FilePart(NamedTuple):
    filename: str | None
    content_type: str | None
    content: bytes


class _Form:
    """Collects the parts in `FIELD` from the parser's events, and skips the others unread."""

    def __init__(self) -> None:
        self.files: list[FilePart] = []
        self._segment: MultipartSegment | None = None
        self._pieces: list[bytes] | None = None

    def take(self, events: Any) -> None:
        for event in events:
            if isinstance(event, MultipartSegment):
                self._segment = event
                self._pieces = [] if event.name == FIELD else None
            elif event is None:  # the end of a part
                segment, pieces = self._segment, self._pieces
                if segment is not None and pieces is not None:
                    # A part without a file name is a file all the same: `curl -F file=<x`.
                    self.files.append(
                        FilePart(segment.filename, segment.content_type, b"".join(pieces))
                    )
                self._segment = self._pieces = None
            elif self._pieces is not None:
                self._pieces.append(event)


async def file_of(request: Request[Any, Any, Any]) -> FilePart:
    """The one file of the upload; BadRequest (400) when the body is no multipart form, is
    malformed, or holds no file or more than one in `FIELD`."""
    kind, options = parse_options_header(request.headers.get("content-type", ""))
    boundary = options.get("boundary")
    if kind != "multipart/form-data" or not boundary:
        raise BadRequest(
            f"an upload is a multipart/form-data body with the file in the field `{FIELD}`"
            f" (curl -F {FIELD}=@name.pdf); this one is {kind or 'without a content type'}"
        )
    form = _Form()
    try:
        with PushMultipartParser(boundary, max_segment_count=MAX_PARTS) as parser:
            async for chunk in request.stream():
                form.take(parser.parse(chunk))
            form.take(parser.parse(b""))
    except ParserLimitReached as exc:
        raise BadRequest(f"the multipart body goes beyond a limit: {exc}") from None
    except ParserError as exc:
        raise BadRequest(f"the multipart body is malformed: {exc}") from None
    if len(form.files) != 1:
        raise BadRequest(
            f"one file per upload, in the field `{FIELD}`: this one has {len(form.files)}"
        )
    return form.files[0]


@dataclass
class UploadOperation(Operation):
    """The OpenAPI operation of `POST /documents`: its handler reads the body itself, so the
    request body it takes is said here."""

    def __post_init__(self) -> None:
        file = Schema(
            type=OpenAPIType.STRING,
            format=OpenAPIFormat.BINARY,
            content_media_type="application/octet-stream",
        )
        form = Schema(type=OpenAPIType.OBJECT, properties={FIELD: file}, required=[FIELD])
        self.request_body = RequestBody(
            content={"multipart/form-data": OpenAPIMediaType(schema=form)}, required=True
        )

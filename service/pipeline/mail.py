"""E-mail (RFC 5322, .eml): From, To, Cc, Subject and Date, the body — its plain text, else its
HTML through the HTML reader — and the names of its attachments, parsed by the standard library's
email package (policy.default: it decodes encoded words, and takes malformed headers as defects
rather than errors). The subject is the title, the sender the author, the date the creation time.

Attachments are named, never decoded, nor even parsed: the email package holds each line of a
part as a string of its own, then joins them, so a 40 MB base64 attachment cost 330 MB; their
bodies are cut out before parsing. The parser recurses into each multipart and attached
message, and checks each line against the boundary of every part it is in, so the containers a
message may declare are bounded before it is parsed.
"""

from __future__ import annotations

import email
import re
from email import policy
from email.headerregistry import DateHeader
from email.message import EmailMessage, Message

from service.errors import CorruptFile, TooLarge
from service.pipeline.blocks import Blocks
from service.pipeline.html import read_html
from service.pipeline.limits import CpuBudget
from service.pipeline.models import RawDocument
from service.pipeline.office.package import aware

MAX_CONTAINERS = 256
"""Multipart and message parts a message may declare; mail from real clients has a handful."""
MAX_DEPTH = 32
"""Parts nested at most, forwarded messages included."""
_CONTAINER = re.compile(rb"content-type:\s*(?:multipart|message)/", re.IGNORECASE)
_PART_HEADER = re.compile(
    rb"(?:\A|^--[^\r\n]*\r?\n)(?:[^\r\n]+\r?\n)*?\r?\n",  # the message's or a part's header
    re.MULTILINE,
)
_BASE64 = re.compile(rb"content-transfer-encoding:\s*base64", re.IGNORECASE)
_TEXT_BODY = re.compile(rb"content-type:\s*text/", re.IGNORECASE)
_ATTACHED = re.compile(rb"content-disposition:\s*attachment|\b(?:file)?name\*?=", re.IGNORECASE)
_SHOWN_HEADERS = ("From", "To", "Cc", "Subject", "Date")


def read_eml(data: bytes, budget: CpuBudget) -> RawDocument:
    """The headers, a line each, the body after a blank line, then the attachments' names."""
    containers = len(_CONTAINER.findall(data))
    if containers > MAX_CONTAINERS:
        raise TooLarge(
            f"the message declares {containers:,} multipart or attached-message parts; docproc "
            f"reads at most {MAX_CONTAINERS}"
        )
    try:
        message = email.message_from_bytes(_without_attached_bodies(data), policy=policy.default)
        return _read(message, budget)
    except (TooLarge, MemoryError):
        raise
    except RecursionError as exc:
        raise TooLarge("the message nests parts too deep to read") from exc
    except Exception as exc:
        raise CorruptFile(f"not a valid e-mail message: {exc}") from exc


def _without_attached_bodies(data: bytes) -> bytes:
    """The message with the body of each base64 part cut out, unless it may be the message's
    body (text, not attached). A body ends at the next line that begins with "--", a boundary:
    base64 has no "-". A regular expression over the body's lines would cost its own stack
    several times the body's size."""
    pieces = []
    position = 0
    for header in _PART_HEADER.finditer(data):
        block = header.group()
        if header.start() < position or not _BASE64.search(block):
            continue
        if _ATTACHED.search(block) or not _TEXT_BODY.search(block):
            pieces.append(data[position : header.end()])
            end = data.find(b"\n--", header.end())
            position = len(data) if end < 0 else end
    if not pieces:
        return data
    pieces.append(data[position:])
    return b"".join(pieces)


def _read(message: EmailMessage, budget: CpuBudget) -> RawDocument:
    blocks = Blocks(budget, "the message")
    headers = [(name, _header(message, name)) for name in _SHOWN_HEADERS]
    blocks.add("\n".join(f"{name}: {value}" for name, value in headers if value))
    plain, html, attachments = _parts(message, budget)
    if plain is not None:
        blocks.add(_text(plain), "in the body")
    elif html is not None:
        blocks.add(read_html(_text(html)).text, "in the body")
    if attachments:
        blocks.add("Attachments: " + ", ".join(attachments))
    date = message.get("Date")
    return RawDocument(
        text=blocks.text(),
        title=_header(message, "Subject"),
        author=_header(message, "From"),
        created=aware(date.datetime) if isinstance(date, DateHeader) else None,
    )


def _parts(message: Message, budget: CpuBudget) -> tuple[Message | None, Message | None, list[str]]:
    """The first plain-text and HTML bodies, and the name of every attachment, in order."""
    plain = html = None
    attachments: list[str] = []
    stack: list[tuple[Message, int]] = [(message, 0)]
    while stack:
        part, depth = stack.pop()
        budget.check("in the message's parts")
        if depth > MAX_DEPTH:
            raise TooLarge(f"the message nests parts more than {MAX_DEPTH} deep")
        filename = part.get_filename()
        attached = filename is not None or part.get_content_disposition() == "attachment"
        kind = part.get_content_type()
        if part.get_content_maintype() == "message":
            # A forwarded message is named by its subject; its own parts are its business.
            inner = part.get_payload(0) if part.is_multipart() else None
            subject = inner.get("Subject") if isinstance(inner, Message) else None
            attachments.append(filename or f"message: {subject or '(no subject)'}")
        elif part.is_multipart():
            children = part.get_payload()
            if isinstance(children, list):
                stack.extend(
                    (child, depth + 1) for child in reversed(children) if isinstance(child, Message)
                )
        elif attached:
            attachments.append(filename or f"unnamed {kind}")
        elif kind == "text/plain" and plain is None:
            plain = part
        elif kind == "text/html" and html is None:
            html = part
    return plain, html, attachments


def _text(part: Message) -> str:
    """A text part's content, its transfer encoding and charset undone."""
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        return ""
    charset = part.get_content_charset() or "utf-8"
    try:
        return payload.decode(charset, "replace")
    except LookupError:  # a charset Python does not know
        return payload.decode("utf-8", "replace")


def _header(message: EmailMessage, name: str) -> str | None:
    """A header's value, decoded; as written when the header parser fails on it."""
    try:
        value = message.get(name)
    except Exception:
        value = next((raw for key, raw in message.raw_items() if key.lower() == name.lower()), None)
    return " ".join(str(value).split()) if value is not None else None

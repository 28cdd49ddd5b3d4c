"""Secrets kept out of logs and messages: the password of every URL is masked."""

from __future__ import annotations

import re

_PASSWORD = re.compile(
    # A scheme where a word begins (each letter of a long word tried as a scheme's first made
    # a 40,000-letter log line take 23 s), its user, and its password up to the last "@"
    # before the host: passwords hold "@" and "/" (`openssl rand -base64`), and stopping at
    # the first left the rest of them in the clear.
    r"(?<![a-z0-9+.-])(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:/@;\s]*):"
    r"\S{0,256}?@(?=[^@\s/?#]*(?:[/?#\s]|$))",
    re.IGNORECASE,
)
"""A password is taken to be at most 256 characters: the bound keeps the work on any line in
proportion to its length."""


def redact(text: str) -> str:
    """`text` with the password of every URL in it replaced by `***`."""
    if "@" not in text:
        return text
    return _PASSWORD.sub(r"\g<scheme>\g<user>:***@", text)

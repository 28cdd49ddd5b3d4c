"""Secrets kept out of logs and messages: the password of every URL is masked."""

from __future__ import annotations

import re

_PASSWORD = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:/@;\s]*):[^@/;\s]*@", re.I)


def redact(text: str) -> str:
    """`text` with the password of every URL in it replaced by `***`."""
    return _PASSWORD.sub(r"\g<scheme>\g<user>:***@", text)

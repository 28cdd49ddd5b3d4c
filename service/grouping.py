"""What makes two failures the same failure: task, error type, and the message and top stack frames
with the parts that vary between occurrences (numbers, ids, paths, quoted values) folded away."""

from __future__ import annotations

import hashlib
import re

_FOLDS = [
    (re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.I), "<id>"),
    (re.compile(r"(?:[A-Za-z]:)?(?:[\\/][\w.\-]+){2,}[\\/]?"), "<path>"),
    (re.compile(r"'[^']*'|\"[^\"]*\""), "<value>"),
    (re.compile(r"\b0x[0-9a-f]+\b|\b[0-9a-f]{8,}\b", re.I), "<hex>"),
    (re.compile(r"\d+(?:\.\d+)?"), "<n>"),
    (re.compile(r"\s+"), " "),
]
_FRAME = re.compile(r'File "(?P<file>[^"]+)", line \d+, in (?P<function>\S+)')
TOP_FRAMES = 3


def fold(message: str) -> str:
    for pattern, replacement in _FOLDS:
        message = pattern.sub(replacement, message)
    return message.strip()


def top_frames(traceback: str | None, count: int = TOP_FRAMES) -> list[str]:
    """The innermost `count` frames as `file.py:function`, paths and line numbers dropped."""
    if not traceback:
        return []
    frames = [
        f"{match['file'].replace(chr(92), '/').rsplit('/', 1)[-1]}:{match['function']}"
        for match in _FRAME.finditer(traceback)
    ]
    return frames[-count:]


def fingerprint(
    task_name: str | None, error_type: str | None, message: str | None, traceback: str | None
) -> str:
    parts = [task_name or "", error_type or "", fold(message or ""), *top_frames(traceback)]
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:16]

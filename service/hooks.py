"""Replacing a library's function in place, once per process: how docproc reads what its AMQP
libraries refuse (`service.worker.frames`, `service.deadletters.frames`) and writes what they
would change (`service.broker.doubles`). Each hook wraps a name of a locked version, and a test
fails if the name moves."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

_MARK = "docproc_hook"


def replace_once(owner: Any, name: str, wrap: Callable[[Any], Callable[..., Any]]) -> None:
    """`owner.name` becomes `wrap(original)`; again, nothing changes (the first hook stays)."""
    original = getattr(owner, name)
    if getattr(original, _MARK, False):
        return
    replacement = wrap(original)
    setattr(replacement, _MARK, True)
    setattr(owner, name, replacement)

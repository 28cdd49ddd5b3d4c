"""Where the pipeline says which of its steps runs (detect, decode, read, normalise), for a
caller that watches: the worker traces them. By default nobody watches, and a step costs one
global lookup. The pipeline itself knows nothing of what watches."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextlib import AbstractContextManager

Watcher = Callable[[str], AbstractContextManager[object]]

_watcher: Watcher | None = None
_NOTHING = contextlib.nullcontext()


def step(name: str) -> AbstractContextManager[object]:
    """`with step("detect"): ...` — the watcher's context for that step, if one watches."""
    return _NOTHING if _watcher is None else _watcher(name)


def watch(watcher: Watcher | None) -> None:
    """Wrap every step of this process in `watcher(name)` (None: stop watching)."""
    global _watcher  # noqa: PLW0603 -- one watcher per process: the worker's tracing
    _watcher = watcher

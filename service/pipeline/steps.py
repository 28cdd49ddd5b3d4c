"""Where the pipeline says which of its steps runs (detect, decode, read, normalise) and which
page it reads, for a caller that watches: the worker traces the steps and records the pages.
By default nobody watches, and a step costs one global lookup. The pipeline itself knows
nothing of what watches."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager

Watcher = Callable[[str], AbstractContextManager[object]]
PageWatcher = Callable[[int, int | None], None]

_watcher: Watcher | None = None
_page_watcher: PageWatcher | None = None
_NOTHING = contextlib.nullcontext()


def step(name: str) -> AbstractContextManager[object]:
    """`with step("detect"): ...` — the watcher's context for that step, if one watches."""
    return _NOTHING if _watcher is None else _watcher(name)


def watch(watcher: Watcher | None) -> None:
    """Wrap every step of this process in `watcher(name)` (None: stop watching)."""
    global _watcher  # noqa: PLW0603 -- one watcher per process: the worker's tracing
    _watcher = watcher


def page(number: int, total: int | None) -> None:
    """Page `number` (of `total`, when known) is about to be read: told to whoever watches."""
    if _page_watcher is not None:
        _page_watcher(number, total)


@contextlib.contextmanager
def pages_watched(watcher: PageWatcher) -> Iterator[None]:
    """Tell `watcher` of every page read within the block (one document's, in a worker)."""
    global _page_watcher  # noqa: PLW0603 -- one document at a time in a pool process
    earlier, _page_watcher = _page_watcher, watcher
    try:
        yield
    finally:
        _page_watcher = earlier

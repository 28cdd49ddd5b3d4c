"""`heap.settle`: garbage freed first, everything left out of the collector's sweeps."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from service import heap


class _Node:
    def __init__(self) -> None:
        self.other: object = self


@pytest.fixture
def unfrozen() -> Iterator[None]:
    """The test process is left as it was: nothing frozen."""
    assert gc.get_freeze_count() == 0
    yield
    gc.unfreeze()


@pytest.mark.usefixtures("unfrozen")
def test_settle_frees_the_garbage_there_is_and_freezes_what_lives() -> None:
    cycle = _Node()  # garbage once dropped: only the collector can free a cycle
    gone = weakref.ref(cycle)
    del cycle
    kept = _Node()

    heap.settle()

    assert gone() is None
    assert gc.get_freeze_count() > 0
    assert not any(obj is kept for obj in gc.get_objects())  # no sweep visits it


@pytest.mark.usefixtures("unfrozen")
def test_what_a_settled_process_allocates_later_is_swept_as_before() -> None:
    heap.settle()
    later = _Node()

    assert gc.isenabled()
    assert any(obj is later for obj in gc.get_objects(generation=0))

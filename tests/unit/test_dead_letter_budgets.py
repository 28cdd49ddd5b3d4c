"""The byte budgets of dead letters held at once: the DLQ consumer's batch (which deliveries fit,
and the prefetch after) and a redrive's group."""

from __future__ import annotations

from service.deadletters.consumer import BATCH_BYTES, BATCH_SIZE, Budget
from service.deadletters.redrive import GROUP_BYTES, grouped
from service.settings import Settings

MIB = 1024 * 1024


def test_the_first_delivery_fits_whatever_its_size() -> None:
    budget = Budget(8 * MIB)
    assert budget.take(100 * MIB)
    assert not budget.spent


def test_once_past_the_budget_nothing_more_is_taken_on_the_channel() -> None:
    budget = Budget(8 * MIB)
    assert budget.take(4 * MIB)
    assert budget.take(4 * MIB)  # exactly the budget still fits
    assert not budget.take(1)
    assert budget.spent
    assert not budget.take(1)  # small ones after it too: the channel must be closed


def test_a_spent_budget_sets_the_prefetch_to_what_it_holds_of_the_largest() -> None:
    budget = Budget(8 * MIB)
    for size in (1_000, 3 * MIB, 2 * MIB, 5 * MIB):
        budget.take(size)
    assert budget.spent
    assert budget.prefetch(BATCH_SIZE, BATCH_SIZE) == 1  # 8 MiB holds one of 5 MiB


def test_the_prefetch_never_falls_below_one_nor_rises_when_spent() -> None:
    budget = Budget(MIB)
    budget.take(3 * MIB)
    budget.take(3 * MIB)
    assert budget.prefetch(4, BATCH_SIZE) == 1
    small = Budget(MIB)
    for _ in range(11):
        small.take(100 * 1024)
    assert small.spent
    assert small.prefetch(4, BATCH_SIZE) == 4  # spent: at most what it was, though 10 would fit


def test_batches_under_half_the_budget_double_the_prefetch_up_to_the_batch_size() -> None:
    budget = Budget(8 * MIB)
    budget.take(MIB)
    assert budget.prefetch(2, BATCH_SIZE) == 4
    assert budget.prefetch(200, BATCH_SIZE) == BATCH_SIZE
    budget.take(4 * MIB)  # 5 MiB of 8: more than half, kept as it is
    assert budget.prefetch(2, BATCH_SIZE) == 2
    budget.settle()
    assert (budget.count, budget.bytes, budget.largest) == (0, 0, 0)


def test_both_budgets_default_to_the_setting() -> None:
    assert BATCH_BYTES == GROUP_BYTES == Settings().dead_letter_batch_bytes


def test_a_redrive_groups_letters_by_count_and_by_bytes_of_bodies() -> None:
    pending = [("a", 3), ("b", 3), ("c", 3), ("d", 10), ("e", 1), ("f", 1), ("g", 1)]
    assert list(grouped(pending, 64, 6)) == [["a", "b"], ["c"], ["d"], ["e", "f", "g"]]
    assert list(grouped(pending, 2, 100)) == [["a", "b"], ["c", "d"], ["e", "f"], ["g"]]
    assert list(grouped([], 64, 6)) == []

"""Which statuses `docproc submit --wait` reads round after round (`Following`): the oldest
unfinished tasks, as many as the pace asks, and one part of the rest in turn — never every
unfinished task every round."""

from __future__ import annotations

from service.cli.submit import FIRST_WINDOW, STATUSES_A_READ, Following


def ids(count: int) -> list[str]:
    return [f"task-{n:05d}" for n in range(count)]


def read(following: Following) -> list[str]:
    parts = following.round()
    assert all(0 < len(part) <= STATUSES_A_READ for part in parts)
    return [task_id for part in parts for task_id in part]


def test_rounds_read_about_what_finishes_not_everything_unfinished() -> None:
    sent = ids(10_000)
    following = Following(sent)
    finishing = iter(sent)  # in the order sent, 150 a round
    reads = 0
    rounds = 0
    while following.unfinished:
        asked = read(following)
        reads += len(asked)
        done = {next(finishing) for _ in range(min(150, len(following.unfinished)))}
        following.finished([task_id for task_id in asked if task_id in done])
        rounds += 1
        assert rounds < 1_000, "never ended"
    # Everything unfinished every round: ~ 10,000 * rounds / 2, some 340,000 reads.
    assert reads <= rounds * (2 * 150 + STATUSES_A_READ + FIRST_WINDOW)
    assert reads < 40_000


def test_a_task_finished_out_of_order_is_seen_before_the_window_reaches_it() -> None:
    sent = ids(2_000)
    following = Following(sent)
    late = sent[-1]  # finished at once, while the oldest are held up (retries, a stuck worker)
    for _ in range(len(sent) // STATUSES_A_READ):
        asked = read(following)
        assert set(asked[:FIRST_WINDOW]) == set(sent[:FIRST_WINDOW])  # the head, held up
        following.finished([late] if late in asked else [])
        if late not in following.unfinished:
            break
    assert late not in following.unfinished


def test_the_window_follows_the_pace_both_ways() -> None:
    following = Following(ids(5_000))
    assert len(read(following)) == FIRST_WINDOW + STATUSES_A_READ

    following.finished(ids(5_000)[:600])
    assert following.window == 1_200
    assert len(read(following)) == 1_200 + STATUSES_A_READ

    following.finished([])
    assert following.window == FIRST_WINDOW


def test_the_last_round_reads_every_unfinished_task() -> None:
    sent = ids(1_234)
    following = Following(sent)
    following.finished(sent[:34])

    parts = following.everything()

    assert [task_id for part in parts for task_id in part] == sent[34:]
    assert all(len(part) <= STATUSES_A_READ for part in parts)

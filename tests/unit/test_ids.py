"""Record ids: version-7 UUIDs, in the order they were made to the millisecond."""

from __future__ import annotations

import time
import uuid

from service.ids import new_id


def test_an_id_is_a_version_7_uuid_that_begins_with_the_time() -> None:
    before = time.time_ns() // 1_000_000
    made = uuid.UUID(new_id())
    after = time.time_ns() // 1_000_000

    assert made.version == 7
    assert made.variant == uuid.RFC_4122
    assert before <= made.int >> 80 <= after


def test_an_id_is_written_as_uuid_writes_it() -> None:
    text = new_id()

    assert text == str(uuid.UUID(text))  # lower case, hyphenated


def test_ids_are_unique_and_sort_by_the_millisecond_they_were_made_in() -> None:
    made = [new_id() for _ in range(20_000)]

    assert len(set(made)) == len(made)
    milliseconds = [uuid.UUID(id_).int >> 80 for id_ in made]
    assert milliseconds == sorted(milliseconds)
    assert [id_[:13] for id_ in made] == sorted(id_[:13] for id_ in made)


def test_the_bits_after_the_time_are_random() -> None:
    tails = {uuid.UUID(new_id()).int & ((1 << 80) - 1) for _ in range(1_000)}

    assert len(tails) == 1_000

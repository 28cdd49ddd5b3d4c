"""AMQP header tables stored as JSON come back as they went in (`service.deadletters.headers`):
a re-published message carries the types it came with, at any depth."""

from __future__ import annotations

from datetime import UTC
from decimal import Decimal
from typing import Any

import msgspec
from hypothesis import given
from hypothesis import strategies as st

from service.deadletters.headers import from_json, to_json

TAGS = ["$datetime", "$bytes", "$decimal", "$table"]

scalars = st.one_of(
    st.text(max_size=8),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    st.none(),
    st.datetimes(timezones=st.just(UTC)),
    st.binary(max_size=8),
    st.decimals(allow_nan=False, allow_infinity=False, places=3),
)
names = st.one_of(st.text(max_size=8), st.sampled_from(TAGS))
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(names, inner, max_size=4)),
    max_leaves=20,
)


def stored(value: Any) -> Any:
    """As the store keeps it: JSON text, read back."""
    return msgspec.json.decode(msgspec.json.encode(to_json(value)))


@given(st.dictionaries(names, values, max_size=6))
def test_a_header_table_comes_back_as_it_went_in(table: dict[str, Any]) -> None:
    assert from_json(stored(table)) == table


def test_a_tag_that_does_not_decode_is_kept_as_stored() -> None:
    forged = {"when": {"$datetime": "not a time"}, "n": [{"$decimal": [1]}], "d": Decimal(1)}

    assert from_json(stored(forged)) == forged

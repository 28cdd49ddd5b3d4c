"""The store's JSON columns go through msgspec (store.engine.json_text / json_value), with the
json module behind it for what msgspec refuses: nothing the json module read before is refused
now, on SQLite or PostgreSQL."""

from __future__ import annotations

import math

import pytest
from sqlalchemy import Connection, select, text

from service.store import task_runs
from service.store.database import Store
from service.store.engine import json_text, json_value
from service.store.schema import task_runs as runs


def test_json_values_msgspec_refuses_are_read_as_the_json_module_reads_them() -> None:
    assert json_value('{"big": 1.5e400}') == {"big": math.inf}  # PostgreSQL's numeric can
    assert math.isnan(json_value("[NaN]")[0])  # the json module wrote NaN before
    assert json_value(b'{"n": 123456789012345678901234567890}') == {
        "n": 123456789012345678901234567890
    }
    with pytest.raises(ValueError, match="Expecting property name"):
        json_value("{not json")  # what neither reads: the json module's error, as before


def test_json_text_falls_back_for_what_msgspec_will_not_encode() -> None:
    assert json_text({"é": [1, 2.5, None]}) == '{"é":[1,2.5,null]}'
    assert json_text(["\ud800"]) == '["\\ud800"]'  # a lone surrogate: as the json module writes it


def test_a_json_column_holding_what_msgspec_refuses_still_reads(store: Store) -> None:
    store.run(task_runs.record_pending, "t-json", "docproc.document.process", queue="q")
    cast = "CAST(:raw AS JSON)" if store.engine.dialect.name == "postgresql" else ":raw"

    def rewrite(connection: Connection) -> None:
        connection.execute(
            text(f"UPDATE task_runs SET retry_history = {cast} WHERE task_id = 't-json'"),
            {"raw": '[{"delay": 1.5e400}, "é"]'},
        )

    def history(connection: Connection) -> object:
        column = runs.c.retry_history
        return connection.execute(select(column).where(runs.c.task_id == "t-json")).scalar_one()

    assert store.run(history) == []
    store.run(rewrite)
    assert store.run(history) == [{"delay": math.inf}, "é"]

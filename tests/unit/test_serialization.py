from __future__ import annotations

import pytest
from kombu.exceptions import ContentDisallowed
from kombu.serialization import dumps, loads, prepare_accept_content

from service import serialization
from service.worker.app import register_serializer


def test_task_bodies_round_trip_through_kombu_under_their_own_content_type() -> None:
    register_serializer()
    body = [["doc-1"], {"force": True, "size": 3}, {"callbacks": None, "errbacks": None}]

    content_type, encoding, data = dumps(body, serializer=serialization.NAME)

    assert content_type == serialization.CONTENT_TYPE
    assert encoding == "utf-8"
    assert (
        loads(data, content_type, encoding, accept=prepare_accept_content(serialization.ACCEPTED))
        == body
    )


def test_plain_json_from_stock_clients_is_accepted_and_pickle_is_not() -> None:
    register_serializer()
    _, _, data = dumps({"a": 1}, serializer="json")
    assert loads(
        data, "application/json", "utf-8", accept=prepare_accept_content(serialization.ACCEPTED)
    ) == {"a": 1}

    _, _, pickled = dumps({"a": 1}, serializer="pickle")
    with pytest.raises(ContentDisallowed):
        loads(
            pickled,
            "application/x-python-serialize",
            "binary",
            accept=prepare_accept_content(serialization.ACCEPTED),
        )

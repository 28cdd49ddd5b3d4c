"""`task_protocol.problem` answers for any headers and body: what cannot be checked is a reason,
never an exception out of the worker's main process (or the DLQ consumer's)."""

from __future__ import annotations

from typing import Any

import pytest

from service.task_protocol import MAX_NESTING, UNREADABLE_PROPERTIES, problem, shown

TASK = {"task": "docproc.canary.succeed", "id": "a-task-id"}
BODY = b"[[], {}, {}]"


def nested(depth: int) -> list[Any]:
    """A list `depth` lists deep: repr() and pickle overflow Python's stack long before."""
    outer: list[Any] = []
    inner = outer
    for _ in range(depth - 1):
        inner.append([])
        inner = inner[0]
    return outer


class Unprintable:
    def __repr__(self) -> str:
        raise ValueError("no repr")


DEEP = nested(100_000)

HOSTILE: dict[str, tuple[Any, bytes, Any]] = {
    "a JSON body 5,000 deep": (TASK, b"[" * 5000 + b"]" * 5000, "application/json"),
    "a task name 100,000 deep": (TASK | {"task": DEEP}, BODY, "application/json"),
    "a task id 100,000 deep": (TASK | {"id": DEEP}, BODY, "application/json"),
    "retries 100,000 deep": (TASK | {"retries": DEEP}, BODY, "application/json"),
    "an eta 100,000 deep": (TASK | {"eta": DEEP}, BODY, "application/json"),
    "an expiry 100,000 deep": (TASK | {"expires": DEEP}, BODY, "application/json"),
    "time limits 100,000 deep": (TASK | {"timelimit": DEEP}, BODY, "application/json"),
    "a header of its own 100,000 deep": (TASK | {"x-mine": {"a": DEEP}}, BODY, None),
    "an unreadable header's error 100,000 deep": (
        {UNREADABLE_PROPERTIES: {"error": DEEP}},
        BODY,
        None,
    ),
    "a task name whose repr raises": (TASK | {"task": Unprintable()}, BODY, "application/json"),
    "retries past str()'s digits": (TASK | {"retries": 10**5000}, BODY, "application/json"),
    "a content type that cannot be looked up": (TASK, BODY, ["application/json"]),
}


@pytest.mark.parametrize(("headers", "body", "content_type"), HOSTILE.values(), ids=HOSTILE)
def test_whatever_a_message_holds_problem_says_why_it_is_not_a_task(
    headers: Any, body: bytes, content_type: Any
) -> None:
    wrong = problem(headers, body, content_type)

    assert isinstance(wrong, str)
    assert len(wrong) < 300


def test_a_header_may_nest_as_far_as_the_bound() -> None:
    assert problem(TASK | {"x-mine": nested(MAX_NESTING)}, BODY, "application/json") is None
    wrong = problem(TASK | {"x-mine": nested(MAX_NESTING + 1)}, BODY, "application/json")
    assert wrong == f"header 'x-mine' nests more than {MAX_NESTING} levels deep"


def test_a_body_too_deep_for_the_decoder_is_said_to_be() -> None:
    wrong = problem(TASK, b"[" * 5000 + b"]" * 5000, "application/json")
    assert wrong == "the body nests too deep to be read: not a task message"


@pytest.mark.parametrize("value", [DEEP, "x" * 10_000, list(range(10_000)), Unprintable()])
def test_a_value_is_shown_within_its_width(value: Any) -> None:
    assert len(shown(value)) <= 80
    assert len(shown(value, 200)) <= 200

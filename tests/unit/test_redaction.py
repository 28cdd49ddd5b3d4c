"""Passwords out of logs and messages (`service.redaction`): whatever the password holds, and
in time proportional to the line, however it is made."""

from __future__ import annotations

import time

import pytest

from service.redaction import redact


@pytest.mark.parametrize(
    ("given", "said"),
    [
        ("amqp://docproc:P@ssw0rd@rabbit/vh", "amqp://docproc:***@rabbit/vh"),
        ("amqp://docproc:Ab3/xYz9+q=@rabbit:5672/vh", "amqp://docproc:***@rabbit:5672/vh"),
        ("amqp://u:p@n1/vh;amqp://u:q@n2/vh", "amqp://u:***@n1/vh;amqp://u:***@n2/vh"),
        ("amqp://u:p@n1;amqp://u:q@n2", "amqp://u:***@n1;amqp://u:***@n2"),
        ("postgresql+psycopg://u:p%40ss@h/db", "postgresql+psycopg://u:***@h/db"),
        (
            "at http://guest:guest@localhost:15672, then",
            "at http://guest:***@localhost:15672, then",
        ),
        ("amqp://guest@host:5672", "amqp://guest@host:5672"),
        ("http://127.0.0.1:15672/api/queues/%2F", "http://127.0.0.1:15672/api/queues/%2F"),
    ],
)
def test_the_whole_password_is_masked_and_nothing_else(given: str, said: str) -> None:
    assert redact(given) == said


@pytest.mark.parametrize(
    "line",
    [
        "a" * 200_000 + "@",  # a long word: each of its letters was tried as a scheme's first
        "a://b:" * 30_000 + "@",
        "a://" * 50_000 + "@",
        ("x" * 5_000 + "://b:@") * 40,
    ],
    ids=["word", "user-password", "schemes", "long-schemes"],
)
def test_a_long_line_is_read_in_time_proportional_to_it(line: str) -> None:
    """A 40,000-letter word with an "@" took 23 s before; 200,000 letters would take ten
    minutes of the process that logged it. The bound is generous for a noisy machine: a
    quadratic pass over these takes minutes."""
    started = time.process_time()
    redact(line)
    assert time.process_time() - started < 5

"""Log lines hold what strangers sent (a task's id and headers, a request's path): whatever that
is, each record is one JSON object or one readable line, and a terminal shows it as it is."""

from __future__ import annotations

import io
import json
import logging

import pytest
from celery.app.task import Context
from loguru import logger

from service.logs import correlated, plain_line, setup_logging
from service.worker.lifecycle import correlation_of

# Bytes ED B3 BF in a header, as py-amqp decodes them (surrogatepass).
SURROGATE_ID = "cid-\udcff-evil"
# A task id that retitles the window, turns the screen red and forges a line of the API's.
FORGING_ID = "t1\x1b]0;PWNED\x07\x1b[31m\n23:59:59 api    ERROR   forged"


class Unprintable:
    def __str__(self) -> str:
        raise RuntimeError("no text")


def json_lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_a_surrogate_in_the_message_or_extras_still_leaves_one_json_line_per_record(
    capsys: pytest.CaptureFixture[str],
) -> None:
    stream = io.StringIO()
    setup_logging("INFO", component="worker", log_format="json", stream=stream)

    with correlated(SURROGATE_ID):
        logging.getLogger("celery.worker.strategy").info("Task %s received", SURROGATE_ID)
        logger.bind(header={"x": SURROGATE_ID}, odd=Unprintable()).warning("bound")
    logger.info("after")

    received, bound, after = json_lines(stream)
    assert received["message"] == "Task cid-\\udcff-evil received"
    assert received["correlation_id"] == "cid-\\udcff-evil"
    assert received["logger"] == "celery.worker.strategy"
    assert bound["message"] == "bound"
    assert "\\udcff" in str(bound["header"])
    assert bound["odd"] == "<Unprintable whose str() failed>"
    assert after["message"] == "after"
    assert "Logging error" not in capsys.readouterr().err


def test_a_line_said_from_a_signal_handler_survives_a_surrogate_too() -> None:
    setup_logging("INFO", component="worker", log_format="json", stream=io.StringIO())

    line = plain_line(f"Warm shutdown {SURROGATE_ID}")

    assert line.endswith("\n")
    assert line.count("\n") == 1
    assert json.loads(line)["message"] == "Warm shutdown cid-\\udcff-evil"


def test_a_human_line_said_from_a_signal_handler_is_escaped_too() -> None:
    setup_logging("INFO", component="worker", log_format="human", stream=io.StringIO())

    line = plain_line(f"Warm shutdown {FORGING_ID}")

    assert line.endswith(
        "Warm shutdown t1\\x1b]0;PWNED\\x07\\x1b[31m\\n23:59:59 api    ERROR   forged\n"
    )
    assert line.count("\n") == 1


def test_a_human_line_escapes_what_would_retitle_recolour_or_forge_a_line() -> None:
    stream = io.StringIO()
    setup_logging("INFO", component="worker", log_format="human", stream=stream)

    logging.getLogger("celery.worker.strategy").info("Task %s[%s] received", "t", FORGING_ID)
    logger.info("said\u2028over\u2029lines\x85\x7f\ttabbed {}", SURROGATE_ID)

    received, said = stream.getvalue().splitlines()
    assert received.endswith(
        "Task t[t1\\x1b]0;PWNED\\x07\\x1b[31m\\n23:59:59 api    ERROR   forged] received"
    )
    assert said.endswith("said\\u2028over\\u2029lines\\x85\\x7f\\ttabbed cid-\\xff-evil")
    assert said.isprintable()


def test_a_human_traceback_keeps_its_lines_and_escapes_what_it_quotes() -> None:
    stream = io.StringIO()
    setup_logging("INFO", component="worker", log_format="human", stream=stream)

    try:
        try:
            raise ValueError(f"bad task {FORGING_ID}")
        except ValueError as exc:
            raise RuntimeError(f"gave up on {FORGING_ID}") from exc
    except RuntimeError:
        logger.exception("extraction failed")

    first, *lines = stream.getvalue().splitlines()
    assert first.endswith("ERROR   extraction failed")
    assert lines.count("Traceback (most recent call last):") == 2
    assert any(line.lstrip().startswith("File ") for line in lines)
    assert "The above exception was the direct cause of the following exception:" in lines
    forged = "t1\\x1b]0;PWNED\\x07\\x1b[31m\\n23:59:59 api    ERROR   forged"
    assert f"ValueError: bad task {forged}" in lines
    assert lines[-1] == f"RuntimeError: gave up on {forged}"
    assert all(line.isprintable() for line in lines)


def access(method: str, path: str, status: int = 200) -> None:
    """A line as uvicorn's access logger writes it."""
    logging.getLogger("uvicorn.access").info(
        '%s - "%s %s HTTP/%s" %d', "127.0.0.1:50000", method, path, "1.1", status
    )


def test_probes_of_health_and_ready_are_at_debug_other_requests_at_info() -> None:
    stream = io.StringIO()
    setup_logging("DEBUG", component="api", log_format="json", stream=stream)

    access("GET", "/ready")
    access("GET", "/ready", 503)
    access("HEAD", "/health")
    access("GET", "/health?probe=1")
    access("GET", "/readyz")
    access("POST", "/ready", 405)
    access("GET", "/documents")

    levels = [(line["message"], line["level"]) for line in json_lines(stream)]
    assert levels == [
        ('127.0.0.1:50000 - "GET /ready HTTP/1.1" 200', "DEBUG"),
        ('127.0.0.1:50000 - "GET /ready HTTP/1.1" 503', "DEBUG"),
        ('127.0.0.1:50000 - "HEAD /health HTTP/1.1" 200', "DEBUG"),
        ('127.0.0.1:50000 - "GET /health?probe=1 HTTP/1.1" 200', "DEBUG"),
        ('127.0.0.1:50000 - "GET /readyz HTTP/1.1" 200', "INFO"),
        ('127.0.0.1:50000 - "POST /ready HTTP/1.1" 405', "INFO"),
        ('127.0.0.1:50000 - "GET /documents HTTP/1.1" 200', "INFO"),
    ]


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("req-42:a.b_c", "req-42:a.b_c"),
        ("x" * 128, "x" * 128),
        (SURROGATE_ID, "root-1"),
        (FORGING_ID, "root-1"),
        ("ends-in-a-newline\n", "root-1"),
        ("x" * 129, "root-1"),
        ("", "root-1"),
        (b"bytes", "root-1"),
        (None, "root-1"),
    ],
)
def test_the_worker_takes_a_correlation_header_only_when_the_api_would(
    header: object, expected: str
) -> None:
    request = Context({"x-correlation-id": header, "root_id": "root-1"})

    assert correlation_of(request, "task-1") == expected


def test_without_an_acceptable_header_or_a_root_the_task_is_its_own_correlation() -> None:
    request = Context({"x-correlation-id": SURROGATE_ID, "root_id": None})

    assert correlation_of(request, "task-1") == "task-1"

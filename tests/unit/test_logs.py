from __future__ import annotations

import io
import json
import logging

from loguru import logger

from service.logs import correlated, setup_logging


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_library_logs_leave_as_json_lines_with_their_logger_name() -> None:
    stream = io.StringIO()
    setup_logging("INFO", component="test", stream=stream)

    logging.getLogger("celery.worker.strategy").info("Task %s received", "t-1")
    logging.getLogger("kombu").debug("below the level")

    [line] = lines(stream)
    assert line["message"] == "Task t-1 received"
    assert line["logger"] == "celery.worker.strategy"
    assert line["level"] == "INFO"
    assert line["component"] == "test"


def test_the_correlation_id_is_bound_to_every_line_inside_its_block() -> None:
    stream = io.StringIO()
    setup_logging("INFO", component="test", stream=stream)

    with correlated("req-42"):
        logger.info("inside")
        logging.getLogger("aio_pika").warning("also inside")
    logger.info("outside")

    inside, also, outside = lines(stream)
    assert inside["correlation_id"] == "req-42"
    assert also["correlation_id"] == "req-42"
    assert "correlation_id" not in outside


def test_an_exception_is_logged_with_its_type_and_traceback_in_the_same_line() -> None:
    stream = io.StringIO()
    setup_logging("INFO", component="test", stream=stream)

    try:
        raise ValueError("bad page")
    except ValueError:
        logger.exception("extraction failed")

    [line] = lines(stream)
    assert line["error_type"] == "ValueError"
    assert line["error"] == "bad page"
    assert "Traceback" in str(line["traceback"])

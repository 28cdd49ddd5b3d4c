"""Celery's Consumer, changed so that a message that cannot be decoded is dead-lettered."""

from __future__ import annotations

import logging

from celery.worker.consumer import Consumer
from kombu.message import Message
from loguru import logger

_stdlib_log = logging.getLogger(__name__)


class DeadLetteringConsumer(Consumer):
    """Rejects undecodable messages without requeue, so that RabbitMQ dead-letters them intact.

    Celery acks them ("so it doesn't enter a loop"), which loses the message. Unknown tasks and
    invalid messages are already rejected without requeue by Celery itself.
    """

    def on_decode_error(self, message: Message, exc: Exception) -> None:
        logger.bind(
            content_type=message.content_type,
            content_encoding=message.content_encoding,
            error_type=type(exc).__name__,
        ).error("cannot decode a message, dead-lettering it: {}", exc)
        errors = self.connection_errors  # type: ignore[attr-defined]  # missing from the stub
        message.reject_log_error(_stdlib_log, errors, requeue=False)

"""Celery's Consumer, changed so that no message can stop the worker, and none is lost.

- A message that is not a valid task request (service.task_protocol) is rejected without requeue
  before Celery builds a request from it — RabbitMQ dead-letters it intact — instead of raising
  in the worker's main process (a body `{"task": ...}` without an id did: KeyError('id')).
- A message that cannot be decoded is rejected the same way; Celery would ack it ("so it doesn't
  enter a loop"), which loses it. Unknown tasks and disallowed content are rejected by Celery.
- Anything else that goes wrong while a message becomes a request rejects that message only.
- Task events (Flower's) are sent without publisher confirms. The app's confirms are for the
  worker's own task publishes (a retry is confirmed before its original is acked); applied to
  events, the main process waited for the broker's confirm of three events a task, between
  handing out tasks and acking them, and the pool processes idled.
Log lines name the message (task, id, content type, size), never its body.
"""

from __future__ import annotations

import logging
from typing import Any

from celery.worker.consumer import Consumer
from kombu.message import Message
from loguru import logger

from service.task_protocol import problem

_stdlib_log = logging.getLogger(__name__)


def _described(message: Message) -> Any:
    headers = message.headers if isinstance(message.headers, dict) else {}
    return logger.bind(
        task=str(headers.get("task"))[:200],
        task_id=str(headers.get("id"))[:200],
        content_type=message.content_type,
        size=len(message.body or b""),
    )


class DeadLetteringConsumer(Consumer):
    """Dead-letters what cannot become a task request; never dies of a message."""

    def _reject(self, message: Message) -> None:
        errors = self.connection_errors  # type: ignore[attr-defined]  # missing from the stub
        message.reject_log_error(_stdlib_log, errors, requeue=False)

    def on_decode_error(self, message: Message, exc: Exception) -> None:
        _described(message).bind(error_type=type(exc).__name__).error(
            "cannot decode a message, dead-lettering it: {}", exc
        )
        self._reject(message)

    def on_unknown_task(self, body: Any, message: Message, exc: Exception) -> None:
        """Celery logs the whole body of an unknown task's message; we log its name."""
        _described(message).error("no such task here, dead-lettering it: {}", exc)
        self._reject(message)

    def on_invalid_task(self, body: Any, message: Message, exc: Exception) -> None:
        """Disallowed content (pickle) or an invalid message, without its body in the log."""
        _described(message).error("not a valid task message, dead-lettering it: {}", exc)
        self._reject(message)

    def create_task_handler(self, *args: Any, **kwargs: Any) -> Any:
        handle = super().create_task_handler(*args, **kwargs)

        def on_task_received(message: Message) -> Any:
            raw = message.body
            body = raw.encode("utf-8") if isinstance(raw, str) else bytes(raw or b"")
            wrong = problem(message.headers, body, message.content_type)
            if wrong is not None:
                _described(message).error("not a task request, dead-lettering it: {}", wrong)
                self._reject(message)
                return None
            try:
                return handle(message)
            except Exception as exc:
                # Celery's own handling failed on this message: it goes, the worker stays.
                _described(message).opt(exception=exc).error(
                    "the message could not become a task request, dead-lettering it"
                )
                if not message.acknowledged:
                    self._reject(message)
                return None

        return on_task_received

    def connection_for_write(self, url: str | None = None, heartbeat: float | None = None) -> Any:
        """The connection of the event dispatcher, the only one Celery's consumer asks for here.

        An event is a monitoring record, sent best-effort like Celery's own (it is dropped when
        the connection is down); a lost one misleads Flower for a moment, never loses work.
        """
        return self.ensure_connected(
            self.app.connection_for_write(
                url=url, heartbeat=heartbeat, transport_options={"confirm_publish": False}
            )
        )

"""Celery's Consumer, changed so that no message can stop the worker, and none is lost.

- A message that is not a valid task request (service.task_protocol) is rejected without requeue
  before Celery builds a request from it — RabbitMQ dead-letters it intact — instead of raising
  in the worker's main process (a body `{"task": ...}` without an id did: KeyError('id')).
- A message that cannot be decoded is rejected the same way; Celery would ack it ("so it doesn't
  enter a loop"), which loses it. Unknown tasks and disallowed content are rejected by Celery.
- Anything else that goes wrong while a message is judged or becomes a request rejects that
  message only, unread: never an "Unrecoverable error" that stops the worker, which would meet
  the message again once restarted (a JSON body nested 5,000 deep did, from msgspec).
- A body kombu would inflate past what the worker checks, or decode with a codec that inflates
  (its content encoding), is dead-lettered as it came: service.worker.bodies.
- A task whose `eta` is more than HOLD_LIMIT ahead goes back to the broker's delay queues for
  the rest of its wait (Celery's native delayed delivery, as Celery's own clients send one), its
  message acked once the copy is confirmed. Held in the worker, as Celery holds it, it took one
  of the few deliveries a quorum queue lets a worker have unacked (its prefetch is static): two
  messages with an eta a day ahead — a stock client's `countdown=86400`, or a hostile one's —
  stopped all processing for that day. An eta beyond what the delay queues can hold (2 ** 28 s)
  is dead-lettered. The copy is the message as it came: its body still compressed when it came
  so (kombu's inflated body under its `compression` header was dead at its next delivery), no
  content type or encoding added to one that had none.
- Task events (Flower's) are sent without publisher confirms. The app's confirms are for the
  worker's own task publishes (a retry is confirmed before its original is acked); applied to
  events, the main process waited for the broker's confirm of three events a task, between
  handing out tasks and acking them, and the pool processes idled. While RabbitMQ blocks their
  connection (a memory or disk alarm) they are dropped: service.worker.events.
Log lines name the message (task, id, content type, size), never its body.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from celery.worker.consumer import Consumer
from kombu.message import Message
from kombu.transport.native_delayed_delivery import calculate_routing_key
from loguru import logger

from service.task_contract import DEATH_HEADERS
from service.task_protocol import problem, shown
from service.topology import DELAY_LEVELS, WORK_QUEUES, delay_level_name
from service.worker import bodies, control, events

HOLD_LIMIT = 5.0
"""Seconds ahead an `eta` may be for the worker to hold its message until then, as Celery does: a
retry through the delay queues arrives up to a second early."""
HAND_BACK_TIMEOUT = 5.0
"""Seconds the worker's main loop waits to publish a delayed copy and for its confirm: it runs in
the loop that hands out every task and acks them."""
_KEPT_PROPERTIES = ("correlation_id", "reply_to", "priority", "message_id", "timestamp", "type")
"""What a delayed copy keeps of its message's properties (not its TTL: the wait is the copy's)."""

_stdlib_log = logging.getLogger(__name__)


def _described(message: Message) -> Any:
    headers = message.headers if isinstance(message.headers, dict) else {}
    return logger.bind(
        task=_named(headers.get("task")),
        task_id=_named(headers.get("id")),
        content_type=message.content_type,
        size=len(message.body or b""),
    )


def _named(value: Any) -> str:
    """A header as a log line names it: a nested one's repr() overflowed Python's stack."""
    return value[:200] if isinstance(value, str) else shown(value, 200)


class DeadLetteringConsumer(Consumer):
    """Dead-letters what cannot become a task request; never dies of a message."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # This process is a worker: its hello and replies never wait for a confirm.
        if isinstance(self.app.control, control.Control):
            self.app.control.publish_unconfirmed()

    def on_close(self) -> None:
        self._drop_blocked_events()  # before Celery's restart closes it
        super().on_close()

    def shutdown(self) -> None:
        self._drop_blocked_events()
        super().shutdown()

    def _drop_blocked_events(self) -> None:
        """The events connection, dropped without its closing handshake while RabbitMQ blocks it:
        Celery closes it when the consumer restarts and when the worker stops, and a blocked
        broker reads no close — the worker would wait for the alarm to clear."""
        dispatcher = getattr(self, "event_dispatcher", None)  # set by Celery's Events step
        connection = getattr(dispatcher, "connection", None)
        gate = events.gate_of(connection)
        if connection is None or gate is None or gate.blocked is None:
            return
        logger.info("dropping the task events' connection, which RabbitMQ blocks")
        try:
            connection.collect()
        except Exception as exc:  # Celery's close comes next, and ignores its errors
            logger.warning("could not drop the task events' connection: {!r}", exc)

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
            try:
                raw = message.body
                body = raw.encode("utf-8") if isinstance(raw, str) else bytes(raw or b"")
                wrong = problem(message.headers, body, message.content_type)
                if wrong is not None:
                    _described(message).error("not a task request, dead-lettering it: {}", wrong)
                    self._reject(message)
                    return None
                wait = _wait_of(message.headers)
                if wait is not None and self._delayed(message, wait):
                    return None
                return handle(message)
            except Exception as exc:
                # Judging it or Celery's own handling failed on this message: it goes, unread,
                # and the worker stays.
                _described(message).opt(exception=exc).error(
                    "the message could not become a task request, dead-lettering it: {}",
                    shown(exc, 200),
                )
                if not message.acknowledged:
                    self._reject(message)
                return None

        return on_task_received

    def _delayed(self, message: Message, wait: float) -> bool:
        """Give a message whose eta is `wait` seconds ahead to the broker's delay queues (True),
        or dead-letter it when the delay queues cannot hold it that long (True); False when it
        stays with Celery (no delay queues — classic queues, whose prefetch Celery raises for
        each message it holds —, a queue not docproc's, or no confirm for the copy)."""
        queue = _queue_of(message)
        if queue is None or self.app.conf.broker_native_delayed_delivery_queue_type != "quorum":
            return False
        described = _described(message).bind(seconds=round(wait))
        if math.ceil(wait) >= 2**DELAY_LEVELS:
            described.error(
                "the task's eta is further ahead than the broker's delay queues hold (2**{} s); "
                "dead-lettering it",
                DELAY_LEVELS,
            )
            self._reject(message)
            return True
        properties = message.properties or {}
        kept = {name: properties[name] for name in _KEPT_PROPERTIES if name in properties}
        try:
            with self.app.producer_or_acquire() as producer, _dropped_on_failure(producer):
                # Through the channel, not kombu's publish: that serializes a body without a
                # content type, and adds a content encoding to one without.
                channel = producer.channel
                copy = channel.prepare_message(
                    bodies.arrived(message),  # with its `compression` header: as it came
                    kept.pop("priority", None),
                    message.content_type,
                    message.content_encoding,
                    # Without the deaths of its way here (through the delay queues, perhaps):
                    # RabbitMQ would take its next pass through them for a loop, and drop it.
                    {
                        name: value
                        for name, value in (message.headers or {}).items()
                        if name not in DEATH_HEADERS
                    },
                    kept | {"delivery_mode": 2},
                )
                channel.basic_publish(
                    copy,
                    exchange=delay_level_name(DELAY_LEVELS - 1),
                    routing_key=calculate_routing_key(math.ceil(wait), queue),
                    # Never the loop's wait without end: a blocked broker sends no confirm.
                    timeout=HAND_BACK_TIMEOUT,
                    confirm_timeout=HAND_BACK_TIMEOUT,
                )
        except Exception as exc:  # the broker away or blocked: Celery holds it, as before
            # A copy may have gone out all the same (a confirm that did not come in time): two
            # deliveries of one task, which docproc's tasks take as one (processed once).
            described.warning("cannot hand a delayed task back to the broker ({}); holding it", exc)
            return False
        described.info("the task's eta is ahead: handed back to the broker's delay queues")
        message.ack()
        return True

    def connection_for_write(self, url: str | None = None, heartbeat: float | None = None) -> Any:
        """The connection of the event dispatcher, the only one Celery's consumer asks for here.

        An event is a monitoring record, sent best-effort like Celery's own (it is dropped when
        the connection is down, or blocked: service.worker.events); a lost one misleads Flower
        for a moment, never loses work.
        """
        return self.ensure_connected(
            events.gated(
                lambda callbacks: self.app.connection_for_write(
                    url=url,
                    heartbeat=heartbeat,
                    transport_options={"confirm_publish": False, **callbacks},
                )
            )
        )


@contextlib.contextmanager
def _dropped_on_failure(producer: Any) -> Iterator[None]:
    """A producer's connection that failed is dropped, not closed: the pool closes a connection
    it replaces with a handshake — the channel's close, then waiting for close-ok with no
    timeout — and a blocked broker reads nothing until its alarm clears. The hand-back's timeout
    was spent by then, and the worker's loop waited the whole alarm in that close."""
    try:
        yield
    except BaseException:
        try:
            producer.connection.collect()
        except Exception as exc:  # the failure that brought us here is the one to raise
            logger.warning("could not drop the hand-back's connection: {!r}", exc)
        raise


def _wait_of(headers: Any) -> float | None:
    """Seconds until the message's `eta`, when more than HOLD_LIMIT."""
    eta = headers.get("eta") if isinstance(headers, dict) else None
    if not isinstance(eta, str):
        return None
    try:
        moment = datetime.fromisoformat(eta)
    except ValueError:
        return None  # task_protocol refused it already
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)  # Celery's own, with enable_utc
    wait = (moment - datetime.now(UTC)).total_seconds()
    return wait if wait > HOLD_LIMIT else None


def _queue_of(message: Message) -> str | None:
    """The work queue a delivery came from: its routing key's last word (the delay queues prefix
    it with the bits of a delay), for a message routed by docproc's bindings."""
    routing_key = str((message.delivery_info or {}).get("routing_key") or "")
    queue = routing_key.rsplit(".", 1)[-1]
    return queue if queue in WORK_QUEUES else None

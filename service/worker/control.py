"""Remote control (Celery's mailbox) that never makes a worker wait for RabbitMQ's confirm.

A worker's mailbox publishes its hello to the other workers when its consumer starts (Mingle,
which also syncs the ids of revoked tasks) and its replies to inspect and control commands
(Flower's, `celery inspect`). Celery publishes both through the app's producer pool, whose
connections confirm every publish (the worker's retries need that) with no timeout; during a
memory or disk alarm RabbitMQ sends no confirm, and the worker's one loop — which hands out and
acks every task — waited on it until the alarm cleared: a worker started (or reconnected) during
an alarm did not start.

These messages need no confirm: a hello unanswered within its second is a worker "all alone" to
Celery, and a reply is awaited by its caller with a timeout of its own. In a worker process (its
consumer calls `publish_unconfirmed`) they go through a producer pool of their own, without
confirms: written, not waited for. Other processes of the app — Flower, `celery control`, beat —
keep the confirmed pool: a revoke an operator sends is confirmed before it is reported sent.
"""

from __future__ import annotations

from typing import Any

from celery.app.control import Control as CeleryControl
from kombu import pidbox, pools
from kombu.utils.functional import lazy


class Control(CeleryControl):
    """`app.control`, whose mailbox can publish without publisher confirms."""

    _unconfirmed = False

    def Mailbox(self, namespace: str, **options: Any) -> pidbox.Mailbox:  # type: ignore[override]  # noqa: N802  # Celery's name
        """Celery's mailbox, its producer pool chosen when first used."""
        options["producer_pool"] = lazy(self._producer_pool)
        return pidbox.Mailbox(namespace, **options)

    def publish_unconfirmed(self) -> None:
        """From now on, in this process, the mailbox publishes without confirms."""
        self._unconfirmed = True
        # Chosen again at its next use, as Celery does after a fork (the stubs lack `mailbox`).
        del self.mailbox.producer_pool  # type: ignore[attr-defined]

    def _producer_pool(self) -> Any:
        if not self._unconfirmed:
            return self.app.amqp.producer_pool
        # kombu keeps one pool for each connection's parameters, new after a fork, as Celery's.
        pool = pools.producers[
            self.app.connection_for_write(transport_options={"confirm_publish": False})
        ]
        pool.limit = self.app.pool.limit
        return pool

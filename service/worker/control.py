"""Remote control (Celery's mailbox) that never waits for RabbitMQ's confirm.

The mailbox publishes a worker's hello to the others when its consumer starts (Mingle, which also
syncs the ids of revoked tasks) and its replies to inspect and control commands (Flower's, `celery
inspect`). Celery publishes both through the app's producer pool, whose connections confirm every
publish (the worker's retries need that) with no timeout; during a memory or disk alarm RabbitMQ
sends no confirm, and the worker's one loop — which hands out and acks every task — waited on it
until the alarm cleared: a worker started (or reconnected) during an alarm did not start, and one
that answered Flower during an alarm stopped.

These messages need no confirm: a hello unanswered within its second is a worker "all alone" to
Celery, and a reply is awaited by its caller with a timeout of its own. Here they go through a
producer pool of their own, without confirms: written, not waited for.
"""

from __future__ import annotations

from typing import Any

from celery.app.control import Control as CeleryControl
from kombu import pidbox, pools
from kombu.utils.functional import lazy


class Control(CeleryControl):
    """`app.control`, whose mailbox publishes without publisher confirms."""

    def Mailbox(self, namespace: str, **options: Any) -> pidbox.Mailbox:  # type: ignore[override]  # noqa: N802  # Celery's name
        """Celery's mailbox, given the unconfirmed pool in place of the app's."""
        options["producer_pool"] = lazy(self._unconfirmed_pool)
        return pidbox.Mailbox(namespace, **options)

    def _unconfirmed_pool(self) -> Any:
        # kombu keeps one pool for each connection's parameters, new after a fork, as Celery's.
        pool = pools.producers[
            self.app.connection_for_write(transport_options={"confirm_publish": False})
        ]
        pool.limit = self.app.pool.limit
        return pool

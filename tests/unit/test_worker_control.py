"""A worker's remote control publishes without confirms (service.worker.control); its tasks'
publishes keep them, and so does the mailbox of every other process of the app (Flower,
`celery control`). The broker's side — a worker started during a memory alarm — is in
tests/integration/test_blocked_broker.py."""

from __future__ import annotations

from service.worker.app import create_celery
from service.worker.control import Control


def confirms(pool: object) -> bool:
    return bool(pool.connections.connection.transport_options["confirm_publish"])  # type: ignore[attr-defined]


def test_a_client_mailbox_confirms_a_workers_does_not_and_tasks_do() -> None:
    app = create_celery()
    assert isinstance(app.control, Control)
    assert confirms(app.control.mailbox.producer_pool)  # a client: a revoke is confirmed

    app.control.publish_unconfirmed()  # what the worker's consumer does as it is made
    assert not confirms(app.control.mailbox.producer_pool)
    assert confirms(app.amqp.producer_pool)  # the worker's retries and hand-backs

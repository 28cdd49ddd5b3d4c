"""The worker's remote control publishes without confirms (service.worker.control); its tasks'
publishes keep them. The broker's side — a worker started during a memory alarm — is in
tests/integration/test_blocked_broker.py."""

from __future__ import annotations

from service.worker.app import create_celery


def test_the_mailbox_publishes_without_confirms_and_tasks_with() -> None:
    app = create_celery()
    mailbox_pool = app.control.mailbox.producer_pool
    assert mailbox_pool.connections.connection.transport_options["confirm_publish"] is False
    assert mailbox_pool.limit == app.pool.limit
    assert app.amqp.producer_pool.connections.connection.transport_options["confirm_publish"]
    assert mailbox_pool is not app.amqp.producer_pool

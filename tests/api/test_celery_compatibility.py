"""The API publishes with aio-pika, yet its task messages are Celery's own (protocol 2)."""

from __future__ import annotations

import aio_pika
import pytest
from celery import Celery

from service.broker.publisher import task_message
from service.logs import CORRELATION_HEADER
from service.task_contract import PROCESS_DOCUMENT
from service.worker.app import create_celery
from tests.api.conftest import take
from tests.support import Vhost

pytestmark = pytest.mark.rabbitmq


async def test_the_api_message_carries_the_header_set_of_celerys_apply_async(
    api_vhost: Vhost, channel: aio_pika.abc.AbstractChannel
) -> None:
    app = create_celery(api_vhost.settings())
    try:
        app.send_task(
            PROCESS_DOCUMENT,
            kwargs={"document_id": "d-1"},
            headers={CORRELATION_HEADER: "c-1"},
        )
    finally:
        app.close()
    celerys = await take(channel, "document_processing")
    exchange = await channel.get_exchange("docproc", ensure=False)
    await exchange.publish(
        task_message(PROCESS_DOCUMENT, "t-1", kwargs={"document_id": "d-1"}, correlation_id="c-1"),
        routing_key="document_processing",
    )
    ours = await take(channel, "document_processing")

    volatile = {"x-delivery-count"}  # added by the quorum queue on delivery
    assert set(ours.headers) - volatile == set(celerys.headers) - volatile
    for name in ("lang", "task", "retries", "timelimit", "shadow", "eta", "expires", "group"):
        assert ours.headers[name] == celerys.headers[name], name
    assert ours.content_type == celerys.content_type
    assert ours.content_encoding == celerys.content_encoding
    assert ours.delivery_mode == celerys.delivery_mode
    assert ours.correlation_id == "t-1"
    assert ours.body == celerys.body


def test_a_stock_celery_worker_configuration_accepts_the_message() -> None:
    """The content type and body decode with a plain Celery app's own registry."""
    from kombu.serialization import loads, prepare_accept_content

    from service import serialization
    from service.worker.app import register_serializer

    register_serializer()
    message = task_message(PROCESS_DOCUMENT, "t-2", kwargs={"document_id": "d-2"})
    stock = Celery()
    stock.conf.accept_content = ["json", serialization.NAME]
    args, kwargs, embed = loads(
        message.body,
        message.content_type,
        message.content_encoding,
        accept=prepare_accept_content(stock.conf.accept_content),
    )
    assert (args, kwargs) == ([], {"document_id": "d-2"})
    assert embed == {"callbacks": None, "errbacks": None, "chain": None, "chord": None}

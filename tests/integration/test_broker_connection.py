"""Reaching RabbitMQ: a list of nodes is walked until one answers, and no password is shown."""

from __future__ import annotations

import pytest

from service.broker.connection import connect
from service.broker.management import Management
from service.errors import BrokerUnavailable
from tests.support import Vhost, free_port

pytestmark = pytest.mark.rabbitmq


async def test_a_node_list_is_walked_until_one_answers(broker: Vhost) -> None:
    dead = f"amqp://guest:secret-1@127.0.0.1:{free_port()}/{broker.name}"
    settings = broker.settings(DOCPROC_BROKER_URL=f"{dead};{broker.url}")

    connection = await connect(settings, name="test")
    try:
        assert not connection.is_closed
    finally:
        await connection.close()


async def test_when_no_node_answers_the_error_names_each_without_its_password(
    broker: Vhost,
) -> None:
    ports = [free_port(), free_port()]
    nodes = ";".join(f"amqp://guest:secret-{p}@127.0.0.1:{p}/{broker.name}" for p in ports)
    settings = broker.settings(DOCPROC_BROKER_URL=nodes)

    with pytest.raises(BrokerUnavailable) as refused:
        await connect(settings, name="test")

    message = str(refused.value)
    assert all(f"127.0.0.1:{port}" in message for port in ports)
    assert "secret" not in message


async def test_the_management_api_of_a_cluster_is_asked_on_the_next_node_when_one_is_down(
    broker: Vhost,
) -> None:
    live = broker.rabbitmq.management_url
    async with Management(
        f"http://127.0.0.1:{free_port()};{live}",
        broker.name,
        (broker.rabbitmq.user, broker.rabbitmq.password),
    ) as management:
        overview = await management.overview()
        assert management.url == live.rstrip("/")
    assert "rabbitmq_version" in overview

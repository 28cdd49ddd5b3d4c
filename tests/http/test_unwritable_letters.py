"""A message the publisher cannot write as AMQP (`Unwritable`) certainly did not go out: the
letter is not left claimed — in doubt, which made each later re-publish and discard of it a 409
("being re-published"). A recording publisher stands for RabbitMQ (the publisher's own refusal:
tests/api/test_hostile_letters_api.py)."""

from __future__ import annotations

import aio_pika

from service.broker.publisher import Unwritable
from service.store.database import Store
from tests.api.test_dead_letters_api import bury, dead_message
from tests.http.conftest import Client
from tests.support import RecordingPublisher

UNWRITABLE = Unwritable("the message cannot be written as AMQP (RecursionError: nested too deep)")


async def test_a_single_republish_that_cannot_be_written_is_a_409_and_can_be_tried_again(
    client: Client, store: Store, publisher: RecordingPublisher
) -> None:
    [letter_id] = bury(store, dead_message(queue="retry_queue"))

    publisher.refusal = UNWRITABLE
    first = await client.post(f"/dead-letters/{letter_id}/republish")
    publisher.refusal = None
    second = await client.post(f"/dead-letters/{letter_id}/republish")

    assert first.status_code == 409, first.text
    assert first.json()["detail"] == f"dead letter {letter_id} was not re-published: {UNWRITABLE}"
    assert second.status_code == 200, second.text


class Unwriting(RecordingPublisher):
    """Connected, yet no message can be written."""

    async def publish(
        self, message: aio_pika.Message, routing_key: str, *, exchange: str = "docproc"
    ) -> None:
        raise UNWRITABLE

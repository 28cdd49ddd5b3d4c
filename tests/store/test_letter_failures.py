"""A dead letter's failure is the one that ended its attempt: the message carries an earlier
attempt's in its headers (every retry writes it: `base_task._headers`), and the worker's record
of the attempt that died says better — in whichever order the two arrive."""

from __future__ import annotations

from typing import Any

import msgspec

from service.deadletters.consumer import store_batch
from service.deadletters.parsing import RawMessage
from service.grouping import fingerprint
from service.store import dead_letters, outcomes, task_runs
from service.store.database import Store
from service.store.dead_letters import DeadLetter
from service.store.schema import utcnow
from service.task_contract import ERROR_MESSAGE_HEADER, ERROR_TYPE_HEADER, STORE_WAITS_HEADER
from tests.store.test_document_task_writes import accepted, start_of

NAME = "docproc.document.process"
SEARCH_ERROR = {
    ERROR_TYPE_HEADER: "SearchError",
    ERROR_MESSAGE_HEADER: "the full-text index is unavailable",
}


def running_again(store: Store) -> str:
    """A document task started again (its retry's delivery), by its run's id."""
    document_id, task_id = accepted(store)
    start = msgspec.structs.replace(start_of(document_id, task_id), queue="retry_queue")
    store.run_alone(outcomes.document_loaded, document_id, start)
    return task_id


def dies(store: Store, task_id: str, reason: str, **headers: Any) -> DeadLetter:
    """The retry's message dead-lettered from retry_queue — its headers the retry's (its previous
    failure) — and stored as the DLQ consumer stores it; the letter as then recorded."""
    death = {"count": 1, "reason": reason, "queue": "retry_queue", "time": utcnow()}
    message = RawMessage(
        body=b"[[], {}, {}]",
        headers={"task": NAME, "id": task_id, "retries": 1, "x-death": [death], **headers},
        properties={},
    )
    store.run(store_batch, [message])
    return the_letter(store, task_id)


def the_letter(store: Store, task_id: str) -> DeadLetter:
    def read(connection: Any) -> DeadLetter:
        record_id = dead_letters.latest_for_task(connection, task_id)
        assert record_id is not None
        letter = dead_letters.get(connection, record_id, with_body=False)
        assert letter is not None
        return letter

    return store.run(read)


def fails(store: Store, task_id: str, error_type: str, message: str, traceback: str) -> None:
    """The worker records the attempt's failure (`_settle`, before or after the reject)."""
    store.run(
        outcomes.task_failed,
        task_id,
        NAME,
        state="FAILURE",
        error_type=error_type,
        message=message,
        traceback=traceback,
    )


def dead_run(store: Store, task_id: str) -> tuple[str, str | None]:
    run = store.run(task_runs.get, task_id)
    assert run is not None
    return run.state, run.error_type


def test_a_letter_says_the_failure_that_killed_the_attempt_not_the_store_wait_before_it(
    store: Store,
) -> None:
    """Attempt one met a store outage and waited for the store through retry_queue (its headers:
    StoreUnavailable); attempt two found the file corrupt, recorded CorruptFile and rejected the
    message. The letter said the outage, and was grouped with the outage's letters."""
    task_id = running_again(store)
    fails(store, task_id, "CorruptFile", "not a valid PDF", "Traceback ...")
    letter = dies(
        store,
        task_id,
        "rejected",
        **{
            ERROR_TYPE_HEADER: "StoreUnavailable",
            ERROR_MESSAGE_HEADER: "the store is unavailable: connection refused",
            STORE_WAITS_HEADER: 1,
        },
    )

    assert dead_run(store, task_id) == ("DEAD", "CorruptFile")
    assert (letter.error_type, letter.error_message) == ("CorruptFile", "not a valid PDF")
    assert letter.fingerprint == fingerprint(
        NAME, "CorruptFile", "not a valid PDF", "Traceback ..."
    )


def test_a_letter_arriving_before_the_failure_is_recorded_takes_that_failure_and_its_group(
    store: Store,
) -> None:
    """The other order (a hard time limit is rejected before it is recorded): the letter comes
    first, carrying the retry's SearchError, and the worker's TimeLimitExceeded follows. The
    letter kept SearchError, and its group."""
    task_id = running_again(store)
    dies(store, task_id, "rejected", **SEARCH_ERROR)
    fails(store, task_id, "TimeLimitExceeded", "TimeLimitExceeded(60)", "Traceback ...")
    letter = the_letter(store, task_id)

    assert dead_run(store, task_id) == ("DEAD", "TimeLimitExceeded")
    assert letter.error_type == "TimeLimitExceeded"
    assert letter.fingerprint == fingerprint(
        NAME, "TimeLimitExceeded", "TimeLimitExceeded(60)", "Traceback ..."
    )


def test_a_letter_of_a_retry_that_died_at_the_delivery_limit_is_not_grouped_as_the_retry(
    store: Store,
) -> None:
    """Attempt one retried (SearchError in the retry's headers); attempt two killed its worker
    process at each delivery until the delivery limit. The run says the delivery limit
    (test_task_runs); the letter said SearchError, grouped with the index outages."""
    task_id = running_again(store)
    letter = dies(store, task_id, "delivery_limit", **SEARCH_ERROR)

    assert dead_run(store, task_id) == ("DEAD", "delivery_limit")
    assert letter.error_type is None, (letter.error_type, letter.reason)
    assert letter.fingerprint == fingerprint(NAME, "delivery_limit", None, None)


def test_a_later_attempts_failure_is_not_given_to_a_letter_re_published_since(
    store: Store,
) -> None:
    """A letter that died at the delivery limit says no failure; re-published, its task's next
    attempt fails — that failure is the new letter's, not the old one's."""
    task_id = running_again(store)
    old = dies(store, task_id, "delivery_limit")
    store.run(dead_letters.mark_republished, old.id)
    fails(store, task_id, "CorruptFile", "not a valid PDF", "Traceback ...")

    assert the_letter(store, task_id).error_type is None

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from service.store import task_runs
from service.store.database import Store


def started(store: Store, task_id: str = "t-1", retries: int = 0) -> None:
    store.run(
        task_runs.record_started,
        task_runs.Start(
            task_id=task_id,
            task_name="docproc.document.process",
            retries=retries,
            queue="document_processing",
            worker="w@host",
            correlation_id="c-1",
            document_id="d-1",
        ),
    )


def test_a_run_moves_through_its_states_with_progress(store: Store) -> None:
    store.run(task_runs.record_pending, "t-1", "docproc.document.process", document_id="d-1")
    assert (run := store.run(task_runs.get, "t-1")) is not None
    assert run.state == "PENDING"

    started(store)
    store.run(task_runs.record_progress, "t-1", step="extract", steps_done=1, steps_total=4)
    run = store.run(task_runs.get, "t-1")
    assert run is not None
    assert (run.state, run.step, run.steps_done, run.steps_total, run.percent) == (
        "PROCESSING",
        "extract",
        1,
        4,
        25.0,
    )
    assert run.elapsed is not None

    store.run(task_runs.record_success, "t-1")
    run = store.run(task_runs.get, "t-1")
    assert run is not None
    assert (run.state, run.percent, run.steps_done) == ("SUCCESS", 100.0, 4)
    assert run.finished_at is not None
    assert run.started_at is not None
    assert run.finished_at >= run.started_at
    assert run.worker == "w@host"
    assert run.correlation_id == "c-1"


def test_retries_are_recorded_with_their_delays_and_next_time(store: Store) -> None:
    started(store)
    for attempt, delay in enumerate((1.0, 2.0, 4.0), start=1):
        store.run(
            task_runs.record_retry,
            "t-1",
            retries=attempt,
            delay=delay,
            error_type="SearchError",
            message=f"index down {attempt}",
        )
        started(store, retries=attempt)

    run = store.run(task_runs.get, "t-1")
    assert run is not None
    assert run.retries == 3
    assert [entry.delay for entry in run.retry_history] == [1.0, 2.0, 4.0]
    assert all(entry.at.tzinfo is not None for entry in run.retry_history)
    assert run.retry_history[-1].message == "index down 3"


def test_a_failure_keeps_its_error_and_traceback_and_dead_keeps_them(store: Store) -> None:
    started(store)
    store.run(
        task_runs.record_failure,
        "t-1",
        "docproc.document.process",
        state="FAILURE",
        error_type="CorruptFile",
        message="not a valid PDF",
        traceback="Traceback ...",
    )
    store.run(
        task_runs.record_failure,
        "t-1",
        "docproc.document.process",
        state="DEAD",
        error_type=None,
        message=None,
    )

    run = store.run(task_runs.get, "t-1")
    assert run is not None
    assert (run.state, run.error_type, run.error_message, run.traceback) == (
        "DEAD",
        "CorruptFile",
        "not a valid PDF",
        "Traceback ...",
    )


def test_a_dead_task_never_seen_before_gets_a_run(store: Store) -> None:
    store.run(
        task_runs.record_failure,
        "t-9",
        "some.task",
        state="DEAD",
        error_type="delivery_limit",
        message="redelivered too often",
    )

    run = store.run(task_runs.get, "t-9")
    assert run is not None
    assert run.state == "DEAD"


def test_pending_again_resets_a_run_for_a_fresh_attempt(store: Store) -> None:
    started(store, retries=2)
    store.run(task_runs.record_failure, "t-1", "x", state="DEAD", error_type="E", message="m")

    store.run(task_runs.record_pending, "t-1", "docproc.document.process")

    run = store.run(task_runs.get, "t-1")
    assert run is not None
    assert (run.state, run.retries, run.error_type, run.finished_at) == ("PENDING", 0, None, None)


def test_finished_runs_expire_and_running_ones_stay(store: Store) -> None:
    started(store, "done")
    store.run(task_runs.record_success, "done")
    started(store, "running")

    expired = store.run(task_runs.expire, datetime.now(UTC) + timedelta(seconds=1))

    assert expired == 1
    assert store.run(task_runs.get, "done") is None
    assert store.run(task_runs.get, "running") is not None
    counts = store.run(task_runs.count_by_state)
    assert counts["STARTED"] == 1
    assert counts["SUCCESS"] == 0

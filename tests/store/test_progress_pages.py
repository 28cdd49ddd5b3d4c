"""The page the pipeline reads shows in a task's progress, beside its step."""

from __future__ import annotations

from service.indexing import STEPS
from service.pipeline import extract, steps
from service.store import task_runs
from service.store.database import Store
from service.worker.progress import ProgressTracker
from tests import hostile_files


def test_the_page_being_read_shows_in_the_progress_of_the_extract_step(store: Store) -> None:
    store.run(task_runs.record_pending, "t-pages", "docproc.document.process", document_id="d-1")
    tracker = ProgressTracker(store, "t-pages", STEPS, min_interval=0)
    tracker.begin("load")
    tracker.begin("extract")

    with steps.pages_watched(tracker.page):
        extract(hostile_files.pdf_of_pages(12))

    run = store.run(task_runs.get, "t-pages")
    assert run is not None
    assert (run.step, run.steps_done, run.steps_total) == ("extract: page 12 of 12", 1, 4)


def test_pages_are_written_no_more_often_than_steps(store: Store) -> None:
    store.run(task_runs.record_pending, "t-quiet", "docproc.document.process", document_id="d-1")
    tracker = ProgressTracker(store, "t-quiet", STEPS, min_interval=3600)
    tracker.begin("load")
    tracker.begin("extract")  # within the interval: not written either

    tracker.page(1, 2)

    run = store.run(task_runs.get, "t-quiet")
    assert run is not None
    assert run.step == "load"

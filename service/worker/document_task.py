"""The document task: `service.indexing` under Celery, each step recorded as progress.

It records its own start and success, with the writes that load the document and store its text
(two writes fewer per document than the generic signals in worker.lifecycle)."""

from __future__ import annotations

from typing import Any

from celery import Celery, Task
from celery.exceptions import SoftTimeLimitExceeded

from service.errors import InvalidTaskArguments, ProcessingError
from service.indexing import STEPS, index_document
from service.pipeline import steps
from service.task_contract import PROCESS_DOCUMENT
from service.worker.docproc_celery import app_of
from service.worker.lifecycle import start_of
from service.worker.progress import ProgressTracker

PROCESS = PROCESS_DOCUMENT


def register(app: Celery) -> None:
    @app.task(name=PROCESS, bind=True, shared=False, records_own_run=True)
    def process(self: Task[Any, Any], document_id: str) -> dict[str, Any]:
        """Make one document searchable. Permanent errors dead-letter it, transient ones retry."""
        if not isinstance(document_id, str) or not 0 < len(document_id) <= 64:
            # A malformed argument is the message's fault: no retry will fix it.
            raise InvalidTaskArguments(
                f"document_id is {type(document_id).__name__} {document_id!r:.60}, not an id"
            )
        store, task_id = app_of(self).store, str(self.request.id)
        settings = app_of(self).settings
        progress = ProgressTracker(store, task_id, STEPS, first_recorded=True)
        # Pages as the pipeline reads them, in the progress of its extract step.
        with steps.pages_watched(progress.page):
            try:
                return index_document(
                    store,
                    document_id,
                    settings,
                    progress.begin,
                    start=start_of(self, task_id, document_id, STEPS),
                    # Asked for with the outcome, once every step is known.
                    step_times=progress.step_times,
                )
            except (SoftTimeLimitExceeded, ProcessingError) as exc:
                limit = time_limit_in(exc, settings.soft_time_limit)
                if limit is None:
                    raise
                raise limit from exc


class SoftTimeLimit(SoftTimeLimitExceeded):
    """Celery's soft time limit, with a message that says which setting it is."""

    error_type = "SoftTimeLimitExceeded"

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "the soft time limit"


def time_limit_in(exc: BaseException, soft_time_limit: float) -> SoftTimeLimit | None:
    """The soft time limit, said in words, when it is what ended the work.

    The pipeline turns whatever a reader raises into CorruptFile, and Celery raises the soft
    limit wherever the task happens to be — inside pypdf, say — so it is sought in the causes.
    """
    cause: BaseException | None = exc
    for _ in range(100):  # a chain can be made to loop
        if cause is None or isinstance(cause, SoftTimeLimitExceeded):
            break
        cause = cause.__cause__ or cause.__context__
    if not isinstance(cause, SoftTimeLimitExceeded):
        return None
    return SoftTimeLimit(
        f"processing took longer than CELERY_SOFT_TIME_LIMIT={soft_time_limit:g} s"
    )

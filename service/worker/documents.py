"""The document task: `service.processing` under Celery, each step recorded as progress."""

from __future__ import annotations

from typing import Any

from celery import Celery, Task

from service.errors import InvalidTaskArguments
from service.processing import STEPS, process_document
from service.tasks import PROCESS_DOCUMENT
from service.worker.progress import ProgressTracker

PROCESS = PROCESS_DOCUMENT


def register(app: Celery) -> None:
    @app.task(name=PROCESS, bind=True, shared=False)
    def process(self: Task[Any, Any], document_id: str) -> dict[str, Any]:
        """Make one document searchable. Permanent errors dead-letter it, transient ones retry."""
        if not isinstance(document_id, str) or not 0 < len(document_id) <= 64:
            # A malformed argument is the message's fault: no retry will fix it.
            raise InvalidTaskArguments(
                f"document_id is {type(document_id).__name__} {document_id!r:.60}, not an id"
            )
        store = self.app.store  # type: ignore[attr-defined]
        progress = ProgressTracker(store, str(self.request.id), STEPS)
        return process_document(store, document_id, self.app.settings, progress.begin)  # type: ignore[attr-defined]

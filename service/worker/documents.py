"""The document task: load the bytes, extract, chunk, index; each step recorded as progress."""

from __future__ import annotations

from typing import Any

from celery import Celery, Task
from loguru import logger

from service import pipeline
from service.errors import DocumentNotFound, TooLarge
from service.store import documents
from service.store.documents import ChunkRow, Extraction
from service.tasks import PROCESS_DOCUMENT
from service.worker.progress import ProgressTracker

PROCESS = PROCESS_DOCUMENT
STEPS = ("load", "extract", "chunk", "index")


def register(app: Celery) -> None:
    @app.task(name=PROCESS, bind=True)
    def process(self: Task[Any, Any], document_id: str) -> dict[str, Any]:
        """Make one document searchable. Permanent errors dead-letter it, transient ones retry."""
        settings = self.app.settings  # type: ignore[attr-defined]
        store = self.app.store  # type: ignore[attr-defined]
        progress = ProgressTracker(store, str(self.request.id), STEPS)

        progress.begin("load")
        upload = store.run(documents.get_upload, document_id)
        if upload is None:
            raise DocumentNotFound(f"no document {document_id} in the store")
        if upload.processed:
            # A second delivery of a task whose outcome is committed (a publish whose confirm
            # was lost, then swept): at-least-once delivery, processed once.
            logger.info("document {} is already processed; duplicate delivery skipped", document_id)
            return {"document_id": document_id, "skipped": "already processed"}
        if len(upload.content) > settings.max_upload_bytes:
            raise TooLarge(
                f"{len(upload.content)} bytes, more than DOCPROC_MAX_UPLOAD_BYTES="
                f"{settings.max_upload_bytes}"
            )

        progress.begin("extract")
        extracted = pipeline.extract(upload.content, upload.filename)

        progress.begin("chunk")
        chunks = pipeline.chunk_text(
            extracted.text, size=settings.chunk_size, overlap=settings.chunk_overlap
        )

        progress.begin("index")
        store.run(
            documents.store_extraction,
            document_id,
            Extraction(
                detected_type=extracted.detected_type,
                title=extracted.title,
                encoding=extracted.encoding,
                page_count=extracted.page_count,
                text=extracted.text,
                chunks=[
                    ChunkRow(position=c.position, start=c.start, end=c.end, text=c.text)
                    for c in chunks
                ],
            ),
        )
        return {"document_id": document_id, "chunks": len(chunks)}

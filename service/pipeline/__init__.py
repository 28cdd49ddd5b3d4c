"""Bytes in; text, metadata and chunks out. Plain functions: no Celery, HTTP, broker or database.

`extract` detects the type from the content, reads the format, and normalises the text;
`chunk_text` cuts that text into overlapping pieces on paragraph and sentence boundaries.
"""

from service.pipeline.chunking import chunk_text
from service.pipeline.detection import detect_type
from service.pipeline.extraction import extract
from service.pipeline.limits import Limits
from service.pipeline.models import Chunk, DocumentType, Extracted
from service.pipeline.normalisation import normalise
from service.pipeline.ocr import Ocr

__all__ = [
    "Chunk",
    "DocumentType",
    "Extracted",
    "Limits",
    "Ocr",
    "chunk_text",
    "detect_type",
    "extract",
    "normalise",
]

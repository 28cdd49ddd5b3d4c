"""docproc's one exception hierarchy.

The middle of the code just raises these. They are mapped to exit codes at the CLI edge, to
problem+json at the HTTP edge, and to retry / reject at the worker edge, where `transient` decides:
a transient error is retried through `retry_queue`, anything else is dead-lettered at once.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence
from typing import NoReturn

from service.redaction import redact


class DocprocError(Exception):
    """Base of every error docproc raises on purpose."""

    transient: bool = False


class ConfigError(DocprocError):
    """A setting has a value that is not allowed; the message names the variable and the fix."""


class BrokerUnavailable(DocprocError):
    """RabbitMQ could not be reached."""

    transient = True


class Unconfirmed(BrokerUnavailable):
    """No confirm came within the wait, and the message was written on a connection still up: it
    may yet be confirmed. `outcome` settles when it is (None), or when RabbitMQ refuses or
    returns it, or the connection is lost (the error)."""

    def __init__(self, message: str, outcome: asyncio.Future[None]) -> None:
        super().__init__(message)
        self.outcome = outcome


class NotSent(BrokerUnavailable):
    """RabbitMQ could not be reached, and the message certainly did not go out (no connection
    to send it on, or RabbitMQ refused it): unlike a confirm that never came."""


class Unroutable(DocprocError):
    """RabbitMQ returned a published message: no queue is bound where it was sent."""


class TopologyMismatch(DocprocError):
    """The broker holds a queue or exchange whose declaration differs from ours."""

    def __init__(self, name: str, differences: Sequence[str], fix: str) -> None:
        self.name = name
        self.differences = tuple(differences)
        self.fix = fix
        super().__init__(f"{name}: {'; '.join(self.differences)}. Fix: {fix}")


class BadRequest(DocprocError):
    """The request itself is not valid: the message names the field and what is allowed."""


class InvalidQuery(BadRequest):
    """A search query with nothing to find; the message states the syntax."""


class NotFound(DocprocError):
    """What was asked for does not exist (a document, a task, a dead letter)."""


class Conflict(DocprocError):
    """The request does not fit the state of what it names (retrying a task that succeeded)."""


class Caution(Conflict):
    """A Conflict its caller may overrule with `force=true`, once it has read why (a letter
    re-published before, dead at the delivery limit, in doubt): its problem carries the why
    alone as `caution`, which the console shows before it asks whether to force."""

    def __init__(self, caution: str, overrule: str) -> None:
        super().__init__(f"{caution}. {overrule}")
        self.caution = caution


class ProcessingError(DocprocError):
    """A document could not be processed."""


class UnsupportedType(ProcessingError):
    """The document's content is of a type docproc cannot extract."""


class CorruptFile(ProcessingError):
    """The document claims a type its bytes do not hold."""


class TooLarge(ProcessingError):
    """The document exceeds a configured limit."""


class EmptyDocument(ProcessingError):
    """The document holds no text."""


class OcrUnavailable(ProcessingError):
    """A document needs OCR and Tesseract or its language data is missing here: the message
    says what to install (the document can be re-published once it is)."""


class InvalidTaskArguments(ProcessingError):
    """A task message whose arguments are not what the task takes."""


class DocumentNotFound(ProcessingError):
    """A task names a document the store does not hold."""


class TransientProcessingError(ProcessingError):
    """Processing failed for a reason that may clear on its own."""

    transient = True


class DatabaseError(DocprocError):
    """A statement failed in the store (a conflict, an injected fault); worth retrying."""

    transient = True


class StoreRejected(DatabaseError):
    """The store refused a value (too long, a NUL, out of range): retrying will not help."""

    transient = False


class StoreUnavailable(DatabaseError):
    """The store cannot be reached at all (down, refusing connections, locked): work waits for
    it rather than spending its retries."""


class SearchError(DocprocError):
    """The full-text index failed; worth retrying."""

    transient = True


def error_type_of(exc: BaseException) -> str:
    """The name a failure is recorded under: its class, or the type it stands in for."""
    return str(getattr(exc, "error_type", None) or type(exc).__name__)


def exit_status(error: DocprocError) -> int:
    """The process exit status for an error that ends a command (sysexits.h values)."""
    if isinstance(error, ConfigError | TopologyMismatch):
        return 78  # EX_CONFIG
    if isinstance(error, BrokerUnavailable):
        return 69  # EX_UNAVAILABLE
    return 1


def abort(error: DocprocError) -> NoReturn:
    """End the process with one line on stderr naming what is wrong and the fix; no traceback."""
    print(f"docproc: {redact(str(error))}", file=sys.stderr, flush=True)
    raise SystemExit(exit_status(error))

"""Intake: accept a document durably, then get its task to the broker — never lost, never twice.

The accept transaction is the promise: once the document and its PENDING run are committed the
client gets 202, whatever happens next. Uploads that arrive together are committed together
(`GroupCommit`); each still gets its 202 only once the transaction holding it is committed.
Publishing follows, with a confirm; when it cannot be had (broker down, blocked, or the message
returned), the document waits in `Intake`'s list and goes out as soon as the publisher is
connected again — within a second or two of the broker's return — and beat's sweeper catches
what a process that died never published; the relay and the sweeper claim a document before
publishing it (`documents.claim_to_publish`), so that only one of them does. A publish whose
confirm is late keeps its claim renewed until it ends (`documents.renew_claims`): the sweeper
publishes no second message meanwhile. A client's Idempotency-Key makes a retried upload the
same upload.

Confirmed documents are marked published in batches (one UPDATE for all confirmed meanwhile):
the mark only keeps the sweeper from publishing a message twice, and the worker sets it too when
the task starts, so a mark lost to a crash costs at most a duplicate message, which the worker
skips (a document is processed once). A mark the store refuses is tried again for a few seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
from collections.abc import Sequence
from datetime import datetime

import msgspec
from loguru import logger
from sqlalchemy import Connection

from service import pipeline
from service.broker.connection import until
from service.broker.publisher import TaskPublisher, task_message
from service.errors import (
    BrokerUnavailable,
    Conflict,
    DatabaseError,
    EmptyDocument,
    Unconfirmed,
    Unroutable,
)
from service.ids import new_id
from service.store import documents, idempotency, task_runs
from service.store.database import RECORD_PATIENCE, AsyncStore
from service.store.group_commit import GroupCommit
from service.store.schema import utcnow
from service.task_contract import PROCESS_DOCUMENT, queue_for

RELAY_PAUSE = 1.0
"""Seconds between two attempts to publish what is waiting while the broker is connected."""


class Upload(msgspec.Struct, frozen=True, kw_only=True):
    """A document as it arrived, checked and hashed."""

    filename: str
    content_type: str | None
    content: bytes
    sha256: str
    correlation_id: str
    idempotency_key: str | None = None


class Receipt(msgspec.Struct, frozen=True, kw_only=True):
    """What the client is told: the document and its task; whether its message is queued; and
    whether this upload repeats an earlier one under the same Idempotency-Key."""

    document_id: str
    task_id: str
    queued: bool
    replayed: bool = False
    duplicate_of: str | None = None


INLINE_INSPECT_BYTES = 64 * 1024
"""Uploads up to this size are inspected on the event loop (tens of µs, less than a thread's
hand-over); larger ones in a thread."""


def inspect(content: bytes, filename: str, limits: pipeline.Limits) -> str:
    """Refuse what the pipeline could never read (415) or would refuse as too large (413: a ZIP
    bomb, an office package beyond the limit on its inflated size), and hash the rest."""
    if not content:
        raise EmptyDocument("the uploaded file is empty")
    pipeline.detect_type(content, filename, limits)
    return hashlib.sha256(content).hexdigest()


async def inspect_upload(content: bytes, filename: str, limits: pipeline.Limits) -> str:
    """`inspect`, off the event loop when the file is large enough for it to matter."""
    if len(content) <= INLINE_INSPECT_BYTES:
        return inspect(content, filename, limits)
    return await asyncio.to_thread(inspect, content, filename, limits)


class Accepting(msgspec.Struct, frozen=True):
    """An upload, and the ids it is accepted under."""

    upload: Upload
    document_id: str
    task_id: str


def accept(connection: Connection, upload: Upload, document_id: str, task_id: str) -> Receipt:
    """`accept_all` of one upload."""
    [receipt] = accept_all(connection, [Accepting(upload, document_id, task_id)])
    return receipt


def accept_all(connection: Connection, batch: Sequence[Accepting]) -> list[Receipt]:
    """The documents, their PENDING runs and their idempotency keys, in one transaction (one
    statement a table for the whole batch, and one for its duplicate check).

    An Idempotency-Key already used for the same bytes within the window names that upload
    instead (nothing is stored for it); used for other bytes, it is a Conflict. A key twice in
    the batch names its first upload, as it would have one a moment earlier. A document names
    the earliest with the same bytes — stored before, or earlier in the batch.
    """
    earliest = documents.earliest_with(connection, {a.upload.sha256 for a in batch})
    firsts: dict[str, Accepting] = {}
    for accepting in batch:
        if accepting.upload.idempotency_key is not None:
            firsts.setdefault(accepting.upload.idempotency_key, accepting)
    now = utcnow()
    taken = idempotency.claim_all(
        connection,
        [
            idempotency.Claim(key, first.upload.sha256, first.document_id, first.task_id)
            for key, first in firsts.items()
        ],
        expired_before=now - idempotency.WINDOW,
    )
    receipts = []
    new: list[Accepting] = []
    for accepting in batch:
        upload = accepting.upload
        if upload.idempotency_key is not None:
            earlier = taken.get(upload.idempotency_key)
            first = firsts[upload.idempotency_key]
            if earlier is None and first is not accepting:
                earlier = idempotency.KeyUse(
                    key=upload.idempotency_key,
                    sha256=first.upload.sha256,
                    document_id=first.document_id,
                    task_id=first.task_id,
                    created_at=now,
                )
            if earlier is not None:
                receipts.append(_replayed(connection, upload, earlier))
                continue
        same_content = earliest.get(upload.sha256)
        if same_content is None:
            earliest[upload.sha256] = accepting.document_id  # for later copies in this batch
        receipts.append(
            Receipt(
                document_id=accepting.document_id,
                task_id=accepting.task_id,
                queued=False,
                duplicate_of=same_content,
            )
        )
        new.append(accepting)
    documents.insert_documents(
        connection,
        [
            documents.NewDocument(
                id=accepting.document_id,
                filename=accepting.upload.filename,
                content_type=accepting.upload.content_type,
                content=accepting.upload.content,
                sha256=accepting.upload.sha256,
                task_id=accepting.task_id,
                correlation_id=accepting.upload.correlation_id,
            )
            for accepting in new
        ],
    )
    task_runs.record_pending_new(
        connection,
        PROCESS_DOCUMENT,
        [(a.task_id, a.document_id, a.upload.correlation_id) for a in new],
        queue=queue_for(PROCESS_DOCUMENT),
    )
    return receipts


def _replayed(connection: Connection, upload: Upload, earlier: idempotency.KeyUse) -> Receipt:
    """The receipt of the earlier upload the key names; a Conflict when its bytes differ."""
    if earlier.sha256 != upload.sha256:
        raise Conflict(
            f"Idempotency-Key {upload.idempotency_key!r} was used at "
            f"{earlier.created_at.isoformat()} for other content (document "
            f"{earlier.document_id}); use a new key for a different file"
        )
    document = documents.get(connection, earlier.document_id)
    return Receipt(
        document_id=earlier.document_id,
        task_id=earlier.task_id,
        queued=document is not None and document.published_at is not None,
        replayed=True,
        duplicate_of=None if document is None else _earlier_copy(connection, document),
    )


def _earlier_copy(connection: Connection, document: documents.Document) -> str | None:
    """The earliest document stored with the same content before this one, as its first answer
    named it (`duplicate_of`)."""
    first = documents.earliest_with(connection, {document.sha256}).get(document.sha256)
    if first is None or first == document.id:
        return None
    found = documents.get(connection, first)
    return first if found is not None and found.created_at <= document.created_at else None


class Waiting(msgspec.Struct, frozen=True):
    """A document accepted and not queued: its task, and the claim on it this API holds (None:
    the accept's)."""

    task_id: str
    correlation_id: str
    held: datetime | None = None


class Intake:
    """Accepts uploads and keeps publishing those that could not be queued at once."""

    def __init__(self, store: AsyncStore, publisher: TaskPublisher) -> None:
        self.store = store
        self.publisher = publisher
        self.waiting: dict[str, Waiting] = {}
        """Documents accepted but not queued, to be published again."""
        self.settling: dict[str, datetime | None] = {}
        """Documents whose publish waits for its confirm → their claim as last stamped (None:
        the accept's), renewed meanwhile (`_renew`)."""
        self.renewal = documents.CLAIM_RENEWAL.total_seconds()
        self._claims = asyncio.Lock()
        """Held by a renewal from its write to its bookkeeping, and by the relay's claim: else a
        relay claiming under the stamp a renewal is replacing lost its own claim."""
        self.wake = asyncio.Event()
        self.confirmed: list[str] = []
        """Documents queued, not yet marked published."""
        self._confirmed_wake = asyncio.Event()
        self._accepting = GroupCommit(store, accept_all)
        """Uploads, accepted in groups under load."""

    async def submit(self, upload: Upload) -> Receipt:
        document_id, task_id = new_id(), new_id()
        receipt = await self._accepting(
            Accepting(upload, document_id, task_id), len(upload.content)
        )
        if receipt.replayed:
            return receipt
        queued = await self.publish(document_id, task_id, upload.correlation_id)
        return msgspec.structs.replace(receipt, queued=queued)

    async def publish(
        self, document_id: str, task_id: str, correlation_id: str, held: datetime | None = None
    ) -> bool:
        """Publish the document's task under the claim `held` (None: the accept's); True once
        RabbitMQ confirmed it. Else the document waits to be published again (`waiting`) —
        unless its confirm may yet come: the publish is left to end, its claim renewed meanwhile,
        and the document waits only if it ends refused or lost (`_settled`)."""
        try:
            await self.publisher.publish_settling(
                task_message(
                    PROCESS_DOCUMENT,
                    task_id,
                    kwargs={"document_id": document_id},
                    correlation_id=correlation_id,
                ),
                routing_key=queue_for(PROCESS_DOCUMENT),
            )
        except Unconfirmed as exc:
            logger.warning("document {} accepted, its confirm not come yet: {}", document_id, exc)
            self.settling[document_id] = held
            exc.outcome.add_done_callback(
                functools.partial(self._settled, document_id, task_id, correlation_id)
            )
            return False
        except (BrokerUnavailable, Unroutable) as exc:
            logger.warning("document {} accepted but not queued yet: {}", document_id, exc)
            self._wait(document_id, Waiting(task_id, correlation_id, held))
            return False
        self._queued(document_id)
        return True

    def _settled(
        self, document_id: str, task_id: str, correlation_id: str, outcome: asyncio.Future[None]
    ) -> None:
        """A publish whose confirm was late has ended: queued, or to be published again under
        the claim it held (lost to another publisher if it lapsed: the relay then leaves it)."""
        held = self.settling.pop(document_id, None)
        if outcome.cancelled() or outcome.exception() is not None:
            self._wait(document_id, Waiting(task_id, correlation_id, held))
            return
        logger.bind(document_id=document_id, task_id=task_id).info(
            "a document's confirm came late: it is queued"
        )
        self._queued(document_id)

    def _wait(self, document_id: str, waiting: Waiting) -> None:
        self.waiting[document_id] = waiting
        self.wake.set()

    def _queued(self, document_id: str) -> None:
        self.confirmed.append(document_id)
        self._confirmed_wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Relay what waits for the broker, mark what was queued, and keep the claims of
        publishes waiting for their confirm, until `stop`."""
        async with asyncio.TaskGroup() as group:
            group.create_task(self._relay(stop), name="intake-relay")
            group.create_task(self._mark(stop), name="intake-marks")
            group.create_task(self._renew(stop), name="intake-claims")

    async def _renew(self, stop: asyncio.Event) -> None:
        """Every `renewal` seconds, renew the claims of the publishes waiting for a confirm
        (`documents.renew_claims`). A claim lost meanwhile — its document published, or its
        claim lapsed through a store outage and taken — is no longer renewed; one the store
        cannot renew now is tried again at the next turn."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.renewal)
            if stop.is_set() or not self.settling:
                continue
            async with self._claims:
                held, now = dict(self.settling), utcnow()
                try:
                    renewed = await self.store.write(documents.renew_claims, held, now)
                except DatabaseError as exc:
                    logger.warning("could not renew {} claims to publish: {}", len(held), exc)
                    continue
                for document_id in held:
                    self._renewed(document_id, document_id in renewed, now)

    def _renewed(self, document_id: str, renewed: bool, now: datetime) -> None:
        """Keep the stamp of a renewed claim where the document is now: still settling, or
        waiting to be published again (its publish ended during the renewal)."""
        waiting = self.waiting.get(document_id)
        if document_id in self.settling:
            if renewed:
                self.settling[document_id] = now
            else:
                del self.settling[document_id]
                logger.bind(document_id=document_id).info(
                    "a publish waiting for its confirm no longer holds its claim"
                )
        elif waiting is not None and renewed:
            self.waiting[document_id] = msgspec.structs.replace(waiting, held=now)

    async def _mark(self, stop: asyncio.Event) -> None:
        """Mark confirmed documents published: all that were confirmed while the last batch was
        being written, in one statement. Best effort, as the module says."""
        while True:
            await until(self._confirmed_wake.wait(), stop)
            self._confirmed_wake.clear()
            batch, self.confirmed = self.confirmed, []
            if batch:
                try:
                    await self.store.record(RECORD_PATIENCE, documents.mark_published, *batch)
                except DatabaseError as exc:
                    logger.warning(
                        "{} documents queued; could not mark them so: {}", len(batch), exc
                    )
            if stop.is_set() and not self.confirmed:
                return

    async def _relay(self, stop: asyncio.Event) -> None:
        """Publish what is waiting whenever the publisher (re)connects, and every RELAY_PAUSE
        while something waits and the broker is there."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    until(self.wake.wait(), stop), RELAY_PAUSE if self.waiting else None
                )
            self.wake.clear()
            if stop.is_set() or not self.waiting or not self.publisher.connected:
                continue
            for document_id in list(self.waiting):
                claimed_at = utcnow()
                try:
                    async with self._claims:
                        waiting = self.waiting[document_id]  # its stamp as last renewed
                        claimed = await self.store.write(
                            documents.claim_to_publish,
                            document_id,
                            claimed_at,
                            accepted_here=True,
                            held=waiting.held,
                        )
                except DatabaseError as exc:
                    logger.warning("documents waiting to be queued wait for the store: {}", exc)
                    break
                if not claimed:  # published meanwhile, or beat's sweeper has it
                    del self.waiting[document_id]
                    continue
                del self.waiting[document_id]  # `publish` puts it back if it is to wait again
                task_id, correlation_id = waiting.task_id, waiting.correlation_id
                if not await self.publish(document_id, task_id, correlation_id, claimed_at):
                    if document_id in self.waiting:  # certainly not out: else the claim holds
                        with contextlib.suppress(DatabaseError):  # else the claim expires
                            await self.store.write(documents.release_claim, document_id, claimed_at)
                    break
                logger.bind(document_id=document_id, task_id=task_id).info(
                    "queued a document accepted while the broker was away"
                )

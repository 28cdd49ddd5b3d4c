"""The DLQ consumer: drains `docproc.dead_letter` into the store, exactly once per message.

N dead messages become N records, identical ones included, whenever the consumer is killed —
also between its commit and its ack. Identical messages cannot be told apart, and a message
redelivered after a crash is marked redelivered whether or not it was committed; so each batch
goes through this protocol (store.ledger keeps the books):

1. consume until a batch is in hand, then cancel the consumer: no delivery is outstanding
   beyond the batch (RabbitMQ sends nothing after cancel-ok);
2. one transaction stores the batch and a ledger row per record (a redelivered message whose
   key has a row is that record coming back, and takes the row instead of being stored again);
3. ack the batch, and make a synchronous call on the channel: the ack has been processed;
4. delete this channel's rows; consume again.

Killed before 2, the batch comes back and is new; between 2 and 3, it comes back and matches its
rows; after 3, nothing comes back and the rows are stale (rows the store fails to delete at 4 are
stale too, and known to be: the next channel deletes them before anything else). Which of the two
is told at the start of every channel: once no other consumer holds the queue (so all it held is
back; a classic queue does not count a consumer cancelled with its batch in hand, so while another
process's rows are in the ledger the peek also waits until HANDOVER_WAIT has passed since the
lease was taken), the first message is peeked — a redelivered one means a batch came back (rows
kept), anything else means none did (rows dropped). RabbitMQ delivers returned messages before
fresh ones, and a lease in the store keeps a single consumer active (another waits as standby),
so that holds. The peeked message goes with the channel's first batch (or alone: see the budget
below).

When the store fails, the channel is closed so that the batch goes back to the queue, and
consuming resumes once the store answers again. A lost broker is reconnected to with growing
pauses, so a broker restart is survived the same way.

A batch also has a budget of bytes (`DOCPROC_DEAD_LETTER_BATCH_BYTES`): RabbitMQ counts its
prefetch in messages (it ignores a prefetch size), and a message may be as large as the broker
allows (128 MiB by default), so 250 of them could exhaust the consumer's memory, which would meet
them again after its restart. When what the channel holds unacked passes the budget, its
deliveries are refused as they come and the channel is closed, handing all of them back — nothing
of them was stored — and the next channel consumes as many at a time as the budget holds of the
largest seen (one at the least), growing again while batches stay under half the budget; the
hand-over's peeked message, which a get holds beside the prefetch, is then a batch of its own.
Letters handed back come again marked redelivered, though no batch of theirs was committed: one
window is left open, a process killed between the ack of a batch and the delete of its rows
(step 4, one write) while letters it handed back wait in the queue. The next consumer's peek
then finds one of them and keeps the stale rows, and a letter identical to one of that batch is
taken for it: one record fewer.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import time
import uuid
from collections.abc import Sequence

import msgspec
from aio_pika.abc import AbstractChannel, AbstractConnection
from aiormq.abc import AbstractChannel as Underlay
from aiormq.abc import DeliveredMessage
from loguru import logger
from pamqp.commands import Basic
from sqlalchemy import Connection, String

from service import telemetry
from service.broker.connection import BROKER_ERRORS, connect_until, until
from service.deadletters import frames
from service.deadletters.parsing import RawMessage, escaped, message_key, read
from service.errors import DatabaseError, DocprocError, StoreUnavailable
from service.logs import correlated
from service.settings import Settings
from service.store import dead_letters, leases, ledger, outcomes
from service.store.database import AsyncStore
from service.store.dead_letters import NewDeadLetter
from service.store.schema import dead_letters as dead_letter_table
from service.topology import DEAD_LETTER_QUEUE

LEASE = "dlq-consumer"
LEASE_TTL = 30.0
"""Seconds a lease outlives its holder's last renewal; a standby takes over after that."""
HANDOVER_WAIT = 150.0
"""How long to wait for an earlier consumer's channel to be gone before peeking (RabbitMQ notices
a vanished peer within two heartbeats, 60 s each by default)."""
QUICK_LOSS = 5.0
"""Seconds: a connection lost sooner than this after it was made is made again after a pause,
growing to `retry_max` while it goes on (a message that ends every connection at once)."""
BATCH_SIZE = 250
"""Dead messages stored in one transaction at most; also the channel's prefetch (a batch is
every unacked delivery of the channel) while the batches stay within their bytes (`Budget`)."""
BATCH_BYTES = 64 * 1024 * 1024
"""Bytes of bodies a batch holds at most (`DOCPROC_DEAD_LETTER_BATCH_BYTES`; the module
docstring)."""
FAULTS = ("before-commit", "after-commit", "after-ack")
"""Where `DOCPROC_FAULT_INJECTION=dlq:<point>` kills the consumer (tests only)."""


class Budget:
    """What one channel holds unacked against the byte budget of a batch. `take` says whether
    a delivery fits: the first always does (a message larger than the budget is stored alone);
    once one does not, the budget is spent and nothing more is taken on this channel, which must
    then be closed to hand its deliveries back."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.count = 0
        self.bytes = 0
        self.largest = 0
        self.spent = False

    def take(self, size: int) -> bool:
        if self.spent:
            return False
        self.count += 1
        self.bytes += size
        self.largest = max(self.largest, size)
        if self.count > 1 and self.bytes > self.limit:
            self.spent = True
        return not self.spent

    def prefetch(self, current: int, ceiling: int) -> int:
        """The prefetch of the channel after this one: as many of the largest delivery seen as
        the budget holds once it is spent; else doubled, up to `ceiling`, while the batch took
        under half of it."""
        if self.spent:
            return max(1, min(current, self.limit // self.largest))
        if 2 * self.bytes <= self.limit:
            return min(ceiling, 2 * current)
        return current

    def settle(self) -> None:
        """The channel's deliveries were acked: it holds nothing."""
        self.count = self.bytes = self.largest = 0


class LeaseLost(DocprocError):
    """Another DLQ consumer holds the lease: this one must not store."""

    transient = True


def raw_message(message: DeliveredMessage) -> RawMessage:
    """A delivery as the store keeps it. Its properties are read as aio-pika reads them (the
    records stored before this consumer read deliveries off aiormq, a layer below aio-pika, and
    re-publishing gives them back to aio-pika): persistence 1 and priority 0 when unset, an empty
    text as unset, the expiration in seconds."""
    p = message.header.properties
    properties = {
        "content_type": p.content_type,
        "content_encoding": p.content_encoding,
        "delivery_mode": int(p.delivery_mode or 1),
        "priority": int(p.priority or 0),
        "correlation_id": p.correlation_id or None,
        "reply_to": p.reply_to or None,
        "expiration": _seconds(p.expiration),
        "message_id": p.message_id or None,
        "timestamp": p.timestamp,
        "type": p.message_type or None,
        "user_id": p.user_id or None,
        "app_id": p.app_id or None,
    }
    return RawMessage(
        body=message.body,
        headers=dict(p.headers or {}),
        properties={name: value for name, value in properties.items() if value is not None},
        routing_key=message.routing_key,
        redelivered=bool(message.redelivered),
    )


def _seconds(expiration: str | None) -> float | str | None:
    """A per-message TTL (milliseconds, as text) in seconds; kept as it came if not a number."""
    try:
        return None if expiration is None else float(expiration) / 1000
    except ValueError:
        return expiration


def store_batch(
    connection: Connection,
    raws: Sequence[RawMessage],
    *,
    session: str | None = None,
    book: str | None = None,
    quarantine: bool = False,
) -> list[tuple[str, bool]]:
    """Store a batch in one transaction; (record id, created) for each message.

    With a `session` (the consumer's, holding the lease), the batch goes through the ledger, its
    rows under `book` (the consumer's channel; `session` if not given): redelivered messages
    take the rows of records committed but not acked, and the batch's own records get rows.
    `quarantine` stores each message in its safest form (see `quarantined`).
    """
    if session is not None and not leases.holds(connection, LEASE, session):
        raise LeaseLost("another DLQ consumer holds the lease")
    book = book or session
    letters = [quarantined(read(raw)) if quarantine else read(raw) for raw in raws]
    results: list[tuple[str, bool] | None] = [None] * len(raws)
    if book is not None:
        returned = [n for n, raw in enumerate(raws) if raw.redelivered]
        taken = ledger.take(connection, [letters[n].message_key for n in returned])
        for n, record_id in zip(returned, taken, strict=True):
            if record_id is not None:
                results[n] = (record_id, False)
        if len(returned) < len(raws):
            # A fresh message: every returned one came before it, so rows that earlier channels
            # left are stale (this channel's own go once its ack is in).
            ledger.clear_others(connection, book)
    new = [n for n, result in enumerate(results) if result is None]
    for n, record_id in zip(
        new, outcomes.letters_arrived(connection, [letters[n] for n in new]), strict=True
    ):
        results[n] = (record_id, True)
    stored = [result for result in results if result is not None]
    if book is not None:
        ledger.record(
            connection,
            book,
            [
                (record_id, letter.message_key)
                for (record_id, _), letter in zip(stored, letters, strict=True)
            ],
        )
    return stored


def _clear_holding(connection: Connection, session: str) -> None:
    """Drop every row of the ledger, if `session` still holds the lease: one that lost it while
    it was cut off would drop the rows of the consumer that took it over."""
    if not leases.holds(connection, LEASE, session):
        raise LeaseLost("another DLQ consumer holds the lease")
    ledger.clear(connection)


def _ascii(text: str | None, limit: int | None = None) -> str | None:
    """`text` escaped to ASCII, cut to `limit` characters: escaping makes a text longer (an emoji
    becomes ten characters), and a text read to its column's length then overflowed it — the
    quarantined form refused too (PostgreSQL), and the letter, with every one behind it, went
    back to the queue for ever."""
    if text is None:
        return None
    return text.encode("ascii", "backslashreplace").decode("ascii")[:limit]


_LENGTHS = {
    column.name: column.type.length
    for column in dead_letter_table.c
    if isinstance(column.type, String) and column.type.length is not None
}
"""The length each text column of a dead letter holds at most."""


_INT_MAX = 2**31 - 1
"""The largest count every store keeps (an INTEGER column on PostgreSQL)."""


def quarantined(letter: NewDeadLetter) -> NewDeadLetter:
    """A letter the store refused, in the form it cannot refuse: every text escaped to ASCII,
    headers, properties and arguments kept as one escaped text each. The body stays as it came,
    byte for byte; the record says what was done."""
    kept = {
        "headers": letter.headers,
        "properties": letter.properties,
        "args": letter.args,
        "kwargs": letter.kwargs,
    }
    texts = {
        name: _ascii(getattr(letter, name), _LENGTHS.get(name))
        for name in (
            "content_type",
            "content_encoding",
            "exchange",
            "task_name",
            "task_id",
            "root_id",
            "parent_id",
            "correlation_id",
            "error_type",
            "error_message",
            "republished_from",
        )
    }
    return msgspec.structs.replace(
        letter,
        **texts,
        **{name: {"unreadable": escaped(value)} for name, value in kept.items()},
        # Counts as the message says them may lie beyond the store's integers (PostgreSQL's
        # are 32-bit): what they said stays in the escaped headers.
        death_count=min(max(letter.death_count, 0), _INT_MAX),
        retries=letter.retries if 0 <= (letter.retries or 0) <= _INT_MAX else None,
        reason=_ascii(letter.reason, _LENGTHS["reason"]) or "unknown",
        queue=_ascii(letter.queue, _LENGTHS["queue"]) or "unknown",
        routing_keys=[_ascii(key) or "" for key in letter.routing_keys],
        problems=[
            *(letter.problems or []),
            "the store refused this record as read; every field was escaped to ASCII, and "
            "counts beyond the store's integers dropped",
        ],
    )


class DeadLetterConsumer:
    def __init__(
        self,
        settings: Settings,
        store: AsyncStore,
        *,
        batch_size: int = BATCH_SIZE,
        batch_bytes: int = BATCH_BYTES,
        batch_wait: float = 0.02,
        retry_max: float = 30.0,
        fault: str | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self._clear_owed = False
        """A hand-over's peek found no batch come back, and the ledger's clear is still to be
        made (`_hand_over`)."""
        self.batch_size = batch_size
        self.batch_bytes = batch_bytes
        self._prefetch = batch_size
        self._budget = Budget(batch_bytes)
        self.batch_wait = batch_wait
        self.retry_max = retry_max
        self.fault = fault
        # Host and pid first: a successor on the same host sees at once that its holder is gone.
        self.session = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
        self._settle_after = 0.0
        """Until when (monotonic) another process's rows wait to be settled: HANDOVER_WAIT
        after this one took the lease, unless it took it from a process known to be gone."""
        self._own_books: set[str] = set()
        """Every ledger session (`_book`) this process has used."""
        self._acked_books: set[str] = set()
        """Books whose batch's ack is in but whose rows the store has not dropped yet: stale,
        and dropped before the next channel peeks (`_drop_acked_rows`)."""
        self._book = self._new_book()
        """The ledger's session: one for each channel. The rows of a batch an earlier channel of
        this process committed, and whose ack was lost with it, are then another session's, as
        those of a process that died: taken by the letters coming back over as many batches as
        they take, and dropped only once a fresh letter comes — never by this channel's clear,
        after its first batch's ack."""
        self.stored = 0
        self._pause = 0.5
        self._inbox: asyncio.Queue[DeliveredMessage] = asyncio.Queue()
        self._lost = asyncio.Event()
        self._lease_lost = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        """Hold the lease (waiting as standby while another consumer does), consume until
        `stop` is set, then finish the batch in hand, give the lease back and return.

        The connection is re-made here rather than left to aio-pika's robust connection: its
        restore of a channel's consumer failed after a broker restart in our tests (the
        channel's close callback raised), leaving a consumer that waited forever. Messages
        whose properties cannot be read are stored all the same (`frames`).
        """
        frames.install()
        while not stop.is_set():
            if not await self._take_lease(stop):
                return
            renewing = asyncio.create_task(self._renew_lease(stop))
            try:
                await self._serve(stop)
            finally:
                renewing.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await renewing
            if self._lease_lost.is_set() and not stop.is_set():
                logger.warning("lost the lease to another DLQ consumer; standing by")
                self._lease_lost.clear()
        with contextlib.suppress(DatabaseError):
            await self.store.write(leases.release, LEASE, self.session)

    async def _take_lease(self, stop: asyncio.Event) -> bool:
        said = False
        while not stop.is_set():
            try:
                previous = await self.store.run(leases.last_holder, LEASE)
                if await self.store.write(leases.acquire, LEASE, self.session, LEASE_TTL):
                    logger.bind(session=self.session).info("holding the DLQ consumer lease")
                    # From a holder whose lease lapsed, perhaps: dead, or frozen with a batch in
                    # hand, its connection still open — unless its process is known to be gone.
                    lapsed = previous not in (None, self.session) and not _gone(str(previous))
                    self._settle_after = time.monotonic() + HANDOVER_WAIT if lapsed else 0.0
                    return True
                holder = await self.store.run(leases.holder, LEASE)
                if (
                    holder is not None
                    and _gone(holder)
                    and await self.store.write(
                        leases.take_over, LEASE, self.session, holder, LEASE_TTL
                    )
                ):
                    logger.bind(session=self.session, previous=holder).info(
                        "took the DLQ consumer lease over from a process that is gone"
                    )
                    self._settle_after = 0.0  # its connection went with its process
                    return True
                if not said:
                    logger.info("another DLQ consumer is active; standing by")
                    said = True
            except DatabaseError as exc:
                logger.warning("the store is unavailable, cannot take the lease: {}", exc)
            await until(asyncio.sleep(LEASE_TTL / 6), stop)
        return False

    def _new_book(self) -> str:
        book = uuid.uuid4().hex
        self._own_books.add(book)
        return book

    async def _renew_lease(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await until(asyncio.sleep(LEASE_TTL / 6), stop)
            try:
                held = await self.store.write(leases.acquire, LEASE, self.session, LEASE_TTL)
            except DatabaseError:
                continue  # the batch transaction checks the lease anyway
            if not held:
                self._lease_lost.set()
                self._lost.set()
                return

    async def _serve(self, stop: asyncio.Event) -> None:
        pause = 0.0
        while not stop.is_set() and not self._lease_lost.is_set():
            connection = await connect_until(
                self.settings, stop, name="dlq", pause_max=self.retry_max
            )
            if connection is None:
                return
            connected = time.monotonic()
            try:
                while not stop.is_set() and not self._lease_lost.is_set():
                    if not await self._consume(connection, stop) and not stop.is_set():
                        await self._wait_for_store(stop)
            except BROKER_ERRORS as exc:
                # What was delivered on the lost channel is back in the queue (unacked); the
                # next channel's handover sorts committed from uncommitted (module docstring).
                # A connection lost as soon as made is lost again if made at once: pauses grow.
                quick = time.monotonic() - connected < QUICK_LOSS
                pause = min(max(2 * pause, 0.5), self.retry_max) if quick else 0.0
                logger.warning("lost the broker ({!r}); reconnecting in {:g} s", exc, pause)
            finally:
                with contextlib.suppress(*BROKER_ERRORS):
                    await connection.close()
            if pause:
                await until(asyncio.sleep(pause), stop)

    async def _consume(self, connection: AbstractConnection, stop: asyncio.Event) -> bool:
        """Consume batch by batch until stopped (True) or until the store fails (False); the
        channel's unacked messages go back to the queue when it closes."""
        channel = await connection.channel()
        lost = asyncio.Event()
        channel.close_callbacks.add(lambda *_: lost.set())
        self._lost = lost
        self._inbox = asyncio.Queue()
        self._budget = budget = Budget(self.batch_bytes)
        self._book = self._new_book()
        try:
            await channel.set_qos(prefetch_count=self._prefetch)
            # Deliveries are read off aiormq, the layer below aio-pika: an aio-pika message of
            # each, and a task of its own on top of aiormq's, cost the consumer a quarter of
            # the CPU it spends receiving.
            underlay = await channel.get_underlay_channel()
            if not await self._drop_acked_rows() or not await self._hand_over(
                channel, underlay, stop
            ):
                return False
            # The peeked message is held beside the prefetch (a get is not counted in it). While
            # the budget has cut the prefetch, it is a batch of its own: the prefetch the budget
            # holds and this one would pass the budget again, and again. Else it goes with the
            # first batch.
            if self._prefetch < self.batch_size and not self._inbox.empty():
                peeked = [self._inbox.get_nowait()]
                if not await self._store(channel, underlay, peeked):
                    return False
            logger.info("consuming {}", DEAD_LETTER_QUEUE)
            inbox = self._inbox

            async def deliver(message: DeliveredMessage) -> None:
                if budget.take(len(message.body)):
                    inbox.put_nowait(message)

            while not stop.is_set() and not self._lease_lost.is_set():
                tag = f"docproc-dlq.{uuid.uuid4().hex}"
                await underlay.basic_consume(DEAD_LETTER_QUEUE, deliver, consumer_tag=tag)
                batch = await self._next_batch(stop)
                if not budget.spent:
                    await underlay.basic_cancel(tag)
                    batch += await self._stragglers()
                if budget.spent:
                    self._hand_back(budget)
                    return True  # closing the channel (below) hands every delivery back
                self._prefetch = budget.prefetch(self._prefetch, self.batch_size)
                if batch and not await self._store(channel, underlay, batch):
                    return False
            return True
        finally:
            # Closing the channel hands back what it holds unacked, batched or not.
            self._inbox = asyncio.Queue()
            with contextlib.suppress(*BROKER_ERRORS):
                await channel.close()

    async def _hand_over(
        self, channel: AbstractChannel, underlay: Underlay, stop: asyncio.Event
    ) -> bool:
        """Settle the ledger left by an earlier channel or process (module docstring): wait until
        no other consumer holds the queue, then peek. False when the store failed.

        A classic queue does not count a consumer cancelled while its channel still holds its
        batch: a holder frozen between its commit and its ack (a stopped process, a paused VM)
        for longer than its lease showed no consumer, and the peek cleared its rows before its
        batch came back — stored again when it did. So while another process's rows are in the
        ledger, the peek waits until HANDOVER_WAIT has passed since this process took the lease —
        by then RabbitMQ has closed a silent holder's connection, and its batch is back — unless
        it took the lease from a process known to be gone (on this host, no longer running)."""
        if time.monotonic() < self._settle_after:
            try:
                foreign = await self.store.run(ledger.left_by_others, self._own_books)
            except DatabaseError as exc:
                logger.warning("the store failed while taking over the ledger: {}", exc)
                return False
            wait = self._settle_after - time.monotonic()
            if foreign and wait > 0:
                logger.info(
                    "the ledger holds another DLQ consumer's rows: waiting {:.0f} s, until its "
                    "connection must be gone, before settling them",
                    wait,
                )
                await until(asyncio.sleep(wait), stop)
        deadline = time.monotonic() + HANDOVER_WAIT
        while not stop.is_set():
            declared = await channel.declare_queue(DEAD_LETTER_QUEUE, passive=True)
            consumers = declared.declaration_result.consumer_count
            if not consumers:
                break
            if time.monotonic() > deadline:
                logger.warning(
                    "{} still has {} other consumer(s) after {:g} s; going on (a foreign "
                    "consumer? identical dead letters it hands back may be merged)",
                    DEAD_LETTER_QUEUE,
                    consumers,
                    HANDOVER_WAIT,
                )
                break
            await until(asyncio.sleep(1.0), stop)
        got = await underlay.basic_get(DEAD_LETTER_QUEUE, no_ack=False)
        first = None if isinstance(got.delivery, Basic.GetEmpty) else got
        # The peek decides once: a message it sent back (the channel closed under a store
        # failure) comes again marked redelivered, like a batch that came back, and its rows
        # kept would take identical fresh messages for it. So the clear is made holding the
        # peeked message, until the store takes it; given up only to stop, it stays owed.
        if self._clear_owed or first is None or not first.redelivered:
            self._clear_owed = True
            while True:
                try:
                    await self.store.write(_clear_holding, self.session)
                    break
                except LeaseLost:  # a holder that has not noticed yet clears nobody's rows
                    self._lease_lost.set()
                    return True
                except DatabaseError as exc:
                    logger.warning("the store failed while taking over the ledger: {}", exc)
                    if stop.is_set():
                        return False
                    await self._wait_for_store(stop)
            self._clear_owed = False
        if first is not None:
            self._budget.take(len(first.body))  # the channel's first: it always fits
            self._inbox.put_nowait(first)
        return True

    async def _drop_acked_rows(self) -> bool:
        """Delete the rows of this process's batches whose ack is in (the store failed as they
        were deleted), before the hand-over peeks; False when the store failed. A letter handed
        back unstored (past the byte budget, or under a store failure) comes back marked
        redelivered, as a batch whose ack was lost does, and the peek would keep those rows: a
        letter identical to one of such a batch took its row — stored as that letter, one
        record fewer."""
        for book in sorted(self._acked_books):
            try:
                await self.store.write(ledger.clear, book)
            except DatabaseError as exc:
                logger.warning("the store failed while dropping acked rows: {}", exc)
                return False
            self._acked_books.discard(book)
        return True

    def _hand_back(self, budget: Budget) -> None:
        self._prefetch = budget.prefetch(self._prefetch, self.batch_size)
        logger.info(
            "{} dead letters came to more than {} bytes (the largest {}); handing them back "
            "and consuming {} at a time",
            budget.count,
            self.batch_bytes,
            budget.largest,
            self._prefetch,
        )

    async def _stragglers(self) -> list[DeliveredMessage]:
        """Deliveries that arrived before cancel-ok but are still on their way to the inbox
        (aiormq hands each to a task of its own): they belong to this batch."""
        for _ in range(3):
            await asyncio.sleep(0)
        late = []
        while not self._inbox.empty():
            late.append(self._inbox.get_nowait())
        return late

    async def _next_batch(self, stop: asyncio.Event) -> list[DeliveredMessage]:
        if not self._inbox.empty():
            first_message: DeliveredMessage | None = self._inbox.get_nowait()
        else:
            first_message = None
        if first_message is None:
            stopping = asyncio.ensure_future(stop.wait())
            losing = asyncio.ensure_future(self._lost.wait())
            first = asyncio.ensure_future(self._inbox.get())
            try:
                await asyncio.wait({stopping, losing, first}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                stopping.cancel()
                losing.cancel()
            if not first.done():
                first.cancel()
                if self._lost.is_set() and not self._lease_lost.is_set():
                    raise ConnectionError("the channel to RabbitMQ closed")
                return []
            first_message = first.result()
        batch = [first_message]
        deadline = time.monotonic() + self.batch_wait
        while len(batch) < self.batch_size and not self._budget.spent:
            if self._inbox.empty():
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self._inbox.get(), left))
                except TimeoutError:
                    break
            else:
                batch.append(self._inbox.get_nowait())
        return batch

    async def _store(
        self, channel: AbstractChannel, underlay: Underlay, batch: list[DeliveredMessage]
    ) -> bool:
        """Commit the batch with its ledger rows, ack it, make sure the ack was processed, then
        drop the rows; on a store failure, hand the batch back and say so."""
        raws = [raw_message(message) for message in batch]
        started_ns = time.time_ns()
        self._inject("before-commit")
        try:
            try:
                results = await self.store.write(
                    store_batch, raws, session=self.session, book=self._book
                )
            except (StoreUnavailable, LeaseLost):
                raise
            except Exception as refused:
                # Not an outage: the store refused something in this batch, or storing it broke
                # (a RecursionError, a bug). Store it letter by letter, quarantining the ones
                # that fail, rather than meet it again forever: the DLQ has no delivery limit,
                # and a batch that raised came back at every start, killing the process each
                # time, every letter behind it unstored.
                _failed(refused, "storing a batch failed ({}); storing it one by one")
                results = [result for raw in raws for result in await self._store_alone(raw)]
        except LeaseLost:
            self._lease_lost.set()
            return True
        except DatabaseError as exc:
            # Closing the channel (the caller does) hands the batch back to the queue.
            logger.warning("the store failed, handing {} dead letters back: {}", len(batch), exc)
            return False
        except Exception as exc:  # not even quarantined: handed back, and tried after a pause
            logger.opt(exception=exc).error(
                "storing a dead letter failed quarantined too, handing {} back: {!r}",
                len(batch),
                exc,
            )
            return False
        self._inject("after-commit")
        # The batch is every unacked delivery of this channel, in order: one ack covers it.
        last = batch[-1].delivery_tag
        assert last is not None  # a delivery (or a get) always has its tag
        await underlay.basic_ack(last, multiple=True)
        self._budget.settle()
        # The next consumer's prefetch; the call returns once the ack is in.
        await channel.set_qos(prefetch_count=self._prefetch)
        self._acked_books.add(self._book)
        self._inject("after-ack")
        try:
            await self.store.write(ledger.clear, self._book)
        except DatabaseError as exc:
            # Stale rows: the next channel's hand-over drops them before it peeks.
            logger.warning("the store failed after an ack: {}", exc)
            return False
        self._acked_books.discard(self._book)
        for raw, (record_id, created) in zip(raws, results, strict=True):
            with correlated(_correlation(raw)):
                logger.bind(dead_letter_id=record_id, created=created).debug("dead letter stored")
        telemetry.message_spans(
            "dead letter stored",
            started_ns,
            [
                (raw.headers, {"docproc.dead_letter_id": record_id, "docproc.created": created})
                for raw, (record_id, created) in zip(raws, results, strict=True)
            ],
        )
        logger.info("stored {} dead letters", len(batch))
        self.stored += len(batch)
        self._pause = 0.5
        return True

    async def _store_alone(self, raw: RawMessage) -> list[tuple[str, bool]]:
        try:
            return await self.store.write(store_batch, [raw], session=self.session, book=self._book)
        except (StoreUnavailable, LeaseLost):
            raise
        except Exception as refused:
            with logger.contextualize(message_key=message_key(raw)):
                _failed(refused, "storing a dead letter failed ({}); storing it quarantined")
            return await self.store.write(
                store_batch, [raw], session=self.session, book=self._book, quarantine=True
            )

    def _inject(self, point: str) -> None:
        if self.fault == point:
            logger.warning("fault injection: killing the DLQ consumer {}", point)
            os.kill(os.getpid(), signal.SIGKILL)

    async def _wait_for_store(self, stop: asyncio.Event) -> None:
        """Probe the store for writing, with growing pauses, until it takes writes again."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self._pause)
            self._pause = min(self._pause * 2, self.retry_max)
            try:
                await self.store.write(dead_letters.probe_writable)
            except DatabaseError as exc:
                logger.warning(
                    "the store is still unavailable, next try in {:.1f} s: {}", self._pause, exc
                )
            else:
                logger.info("the store takes writes again; resuming")
                return


def _gone(holder: str) -> bool:
    """Whether a lease holder ("host:pid:…") was a process of this host that no longer runs."""
    host, _, rest = holder.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _failed(exc: Exception, said: str) -> None:
    """Log a batch or letter the store refused (a warning), or whose storing broke (an error,
    with its traceback: a bug to fix)."""
    if isinstance(exc, DatabaseError):
        logger.warning(said, exc)
    else:
        logger.opt(exception=exc).error(said, repr(exc))


def _correlation(raw: RawMessage) -> str | None:
    value = raw.headers.get("x-correlation-id") or raw.properties.get("correlation_id")
    return str(value) if value is not None else None


async def serve(settings: Settings, *, fault: str | None = None) -> None:
    """The `docproc serve dlq` process: consume until SIGTERM or SIGINT, then drain and exit.
    `fault` names a point of the protocol where the process kills itself (tests only)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    store = AsyncStore(settings.resolved_database_url)
    try:
        consumer = DeadLetterConsumer(
            settings, store, batch_bytes=settings.dead_letter_batch_bytes, fault=fault
        )
        await consumer.run(stop)
        logger.info("stopped after storing {} dead letters", consumer.stored)
    finally:
        await store.close()

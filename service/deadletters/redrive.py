"""The redrive runner: works through redrive jobs at their rate, in the API process.

Each API process runs one. Jobs live in the store: a runner claims a job nobody owns (or whose
owner's heartbeat stopped), re-publishes its pending items at the job's rate, in groups of a tenth
of a second's worth (GROUP_LETTERS at the most), and records each group's outcomes, which beats
the heartbeat; between two groups of a slow job it beats it every BEAT. Cancelling is a state
change the runner sees when it records a group, or at its next beat while it waits for one.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import NamedTuple

import aio_pika
from loguru import logger
from sqlalchemy import Connection

from service.broker.publisher import TaskPublisher, Unwritable
from service.deadletters.republish import check, mark_handled, message_for, publish, run_versions
from service.errors import (
    BrokerUnavailable,
    Conflict,
    DatabaseError,
    DocprocError,
    NotSent,
    Unroutable,
)
from service.store import dead_letters, redrives
from service.store.database import RECORD_PATIENCE, AsyncStore
from service.store.dead_letters import DeadLetter
from service.store.redrives import Redrive
from service.store.schema import utcnow

HEARTBEAT_TIMEOUT = timedelta(seconds=15)
"""A job whose owner has not recorded progress for this long is taken over."""
BEAT = HEARTBEAT_TIMEOUT / 5
"""How often a runner beats the job's heartbeat when nothing else does — while it waits for the
next letter of a slow job, or for RabbitMQ to come back — so that the job never looks abandoned
while its owner lives. A fifth of the timeout: a beat, then a group's publishes (PUBLISH_TIMEOUT,
5 s) and its record's first attempts (RECORD_PATIENCE, 5 s), all fit within it, so no other
runner takes the job over while the outcome of letters that went out is still on its way. A
record the store refuses for longer is tried until it takes it (`_recorded`); another runner
could take the job over meanwhile only through the same store, in a write of its own. A group's
letters go out MAX_IN_FLIGHT at a time; so that its publishes fit too, only those handed out
within HAND_OUT_WINDOW go, the last of them confirmed (or given up) within HAND_OUT_WINDOW +
PUBLISH_TIMEOUT: 3 + 6 + 5 s, within the 15."""
HAND_OUT_WINDOW = 1.0
"""Seconds from a group's first publish in which its letters are handed out; the rest, not tried,
are given back, pending, for the next group. Normally a group of 256 is out in a tenth of that;
confirms slow enough to hold it longer (a broker under flow control) would otherwise keep the
group past the job's heartbeat (BEAT), and another runner would take over a live job."""
IDLE_PAUSE = 0.5
GROUP_LETTERS = 256
"""Letters read, claimed and recorded together at the most: a group costs three transactions
(on PostgreSQL ~16 ms of a 64-letter group's ~28) and ~6 ms of CPU whatever its size, so larger
groups go faster (`python -m bench redrive`, PostgreSQL: 1,889-1,896 letters a second at 64,
2,473-2,739 at 256; docs/performance.md). Its letters go out MAX_IN_FLIGHT at a time."""
MAX_IN_FLIGHT = 64
"""Publishes whose confirms are awaited together at the most. They bound what a lost connection
or a blocked broker leaves in doubt — letters that may have gone out stay claimed, for the
operator to decide — for once one publish of a group fails, its letters not yet sent are not
tried: they are given back, pending."""
PENDING_BATCH = 4 * GROUP_LETTERS
_TICK = timedelta(microseconds=1)
GROUP_BYTES = 64 * 1024 * 1024
"""Bytes of bodies a group holds at most (`DOCPROC_DEAD_LETTER_BATCH_BYTES`) — its letters are
read and their messages built all at once — and one letter whatever its size: a full group of
RabbitMQ's largest (128 MiB) would be 32 GiB in the API's memory."""


def grouped(pending: list[tuple[str, int]], most: int, budget: int) -> Iterator[list[str]]:
    """Ids in order, in groups of at most `most` letters and `budget` bytes of bodies (a letter
    larger than the budget alone)."""
    group: list[str] = []
    size = 0
    for dead_letter_id, body_size in pending:
        if group and (len(group) == most or size + body_size > budget):
            yield group
            group, size = [], 0
        group.append(dead_letter_id)
        size += body_size
    if group:
        yield group


class _Read(NamedTuple):
    """A group's letters as read: each letter, its run before re-publishing (`mark_handled`),
    and its `republished_at` when the job was made (`redrives.seen`)."""

    letters: dict[str, DeadLetter]
    runs: dict[str, datetime]
    seen: dict[str, datetime | None]


def _read(connection: Connection, job: Redrive, ids: list[str]) -> _Read:
    letters = dead_letters.get_many(connection, ids)
    return _Read(
        letters, run_versions(connection, letters.values()), redrives.seen(connection, job.id, ids)
    )


def _claim_stamp(read: _Read) -> datetime:
    """Now, unlike any stamp the job saw: its next pass must see its own claims (`_not_since`)
    and not take them again. (Not after the latest of them: one stamped by a host whose clock
    ran ahead dated every letter of the group with it.)"""
    stamp = utcnow()
    while stamp in read.seen.values():
        stamp += _TICK
    return stamp


def _not_since(letter: DeadLetter, seen: datetime | None) -> None:
    """A letter re-published after the job read it — by hand, or by another job over the same
    letters — went out then: the job does not send it again. Nor one claimed since and never
    recorded (a runner that stopped between its publish and its record: it may have gone out).
    Since: its `republished_at` is neither none nor what the job `seen`, as the claim sees it
    (`dead_letters.claim_for_redrive`) — compared with the job's `created_at`, a stamp from a
    host whose clock is behind looked older than the job. Nor one whose task succeeded since
    (its run would be made PENDING again, for a worker to skip as processed)."""
    if letter.republished_at is not None and letter.republished_at != seen:
        when = letter.republished_at.isoformat()
        if not letter.republish_count:
            raise Conflict(
                f"dead letter {letter.id} was taken for re-publishing at {when} (by this redrive "
                "before it stopped, or by another redrive or request) and is not recorded as "
                "re-published: it is going out, or went out without its confirm or its record; "
                "not again (re-publish it by hand, with force, if it never went out)"
            )
        raise Conflict(
            f"dead letter {letter.id} changed since this redrive read it (re-published, or taken "
            f"for re-publishing, last at {when}): not again"
        )
    if letter.superseded_at is not None:
        raise Conflict(
            f"dead letter {letter.id}: its task succeeded at {letter.superseded_at.isoformat()}; "
            "not re-published"
        )


_TAKEN = (
    "dead letter {} was taken for re-publishing by another redrive or request at the same "
    "moment: not again"
)


def _messages(
    ids: list[str], read: _Read
) -> tuple[dict[str, aio_pika.Message], dict[str, str | None]]:
    """The message of each letter that may go out, and why each other may not."""
    messages: dict[str, aio_pika.Message] = {}
    outcomes: dict[str, str | None] = {}
    for dead_letter_id in ids:
        try:
            letter = check(read.letters.get(dead_letter_id), dead_letter_id)
            _not_since(letter, read.seen.get(dead_letter_id))
            messages[dead_letter_id] = message_for(letter)  # what cannot go out, said now
        except DocprocError as exc:
            outcomes[dead_letter_id] = str(exc)
    return messages, outcomes


class RedriveRunner:
    def __init__(
        self,
        store: AsyncStore,
        publisher: TaskPublisher,
        owner: str | None = None,
        *,
        group_bytes: int = GROUP_BYTES,
    ) -> None:
        self.store = store
        self.publisher = publisher
        self.group_bytes = group_bytes
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}"
        self.wake = asyncio.Event()
        self._beaten = time.monotonic()
        """When the job's heartbeat was last beaten (by a claim, a record or a beat), at the
        latest."""

    async def run(self, stop: asyncio.Event) -> None:
        """Claim and run jobs until `stop`. A job that breaks the runner (a bug) is logged and
        the runner goes on: its heartbeat lapses, so this or another API process takes the job
        over where it stood."""
        while not stop.is_set():
            try:
                self._beaten = time.monotonic()
                job = await self.store.write(
                    redrives.claim, self.owner, utcnow() - HEARTBEAT_TIMEOUT
                )
            except DatabaseError as exc:
                logger.warning("redrive runner cannot reach the store: {}", exc)
                job = None
            if job is None:
                await self._idle(stop)
                continue
            try:
                await self._work(job, stop)
            except DatabaseError as exc:
                logger.bind(redrive_id=job.id).warning("redrive {} paused: {}", job.id, exc)
                await self._idle(stop)
            except Exception:
                logger.bind(redrive_id=job.id).exception("redrive {} broke the runner", job.id)
                await self._idle(stop)

    async def _idle(self, stop: asyncio.Event) -> None:
        waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self.wake.wait())]
        await asyncio.wait(waits, timeout=IDLE_PAUSE, return_when=asyncio.FIRST_COMPLETED)
        for waiting in waits:
            waiting.cancel()
        self.wake.clear()

    async def _work(self, job: Redrive, stop: asyncio.Event) -> None:
        logger.bind(redrive_id=job.id).info(
            "redrive {}: {} matched, {} done, at {}/s",
            job.id,
            job.matched,
            job.published + job.failed,
            job.rate,
        )
        if job.state == "cancelling":
            await self.store.write(redrives.stopped, job.id)
            return
        interval = 1.0 / job.rate
        # A group: about a tenth of a second's worth of the rate.
        size = max(1, min(GROUP_LETTERS, int(job.rate / 10)))
        next_at = time.monotonic()
        while not stop.is_set():
            batch = await self.store.run(redrives.pending, job.id, PENDING_BATCH)
            if not batch:
                await self.store.write(redrives.finish, job.id)
                logger.bind(redrive_id=job.id).info("redrive {} finished", job.id)
                return
            for group in grouped(batch, size, self.group_bytes):
                state = await self._wait(job, next_at, stop)
                if state == "running" and not stop.is_set():
                    next_at = max(next_at + interval * len(group), time.monotonic() - interval)
                    state = await self._group(job, group, stop)
                if state == "cancelling":
                    await self.store.write(redrives.stopped, job.id)
                if state != "running" or stop.is_set():
                    logger.bind(redrive_id=job.id).info("redrive {} stops: {}", job.id, state)
                    return

    async def _recorded(
        self, record: Callable[[Connection], str | None], stop: asyncio.Event
    ) -> str | None:
        """`record`, what letters that went out became, tried until the store takes it: paused
        instead, the job would find those letters pending when it resumed, and publish them
        again. Given up only when the store refuses it for good, or the runner stops."""
        while True:
            try:
                return await self.store.record(RECORD_PATIENCE, record)
            except DatabaseError as exc:
                if not exc.transient or stop.is_set():
                    raise
                logger.warning(
                    "a redrive's letters went out and are not recorded yet ({}); still trying", exc
                )

    async def _wait(self, job: Redrive, until: float, stop: asyncio.Event) -> str | None:
        """Wait until `until` (the next group's time at the job's rate), waking at once for
        `stop`, and beat the job's heartbeat whenever BEAT has passed since it was last beaten —
        another API process would otherwise take a slow job over, or one waiting for RabbitMQ,
        and publish its letters again. A beat reads the job's state, so a cancel or a takeover
        is seen then, not only at the next letter. Returns the state."""
        state: str | None = "running"
        while state == "running" and not stop.is_set():
            now = time.monotonic()
            beat_at = self._beaten + BEAT.total_seconds()
            if now >= beat_at:
                self._beaten = now
                state = await self.store.write(redrives.beat, job.id, self.owner)
            elif now >= until:
                break
            else:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(until, beat_at) - now):
                        await stop.wait()
        return state

    async def _group(self, job: Redrive, ids: list[str], stop: asyncio.Event) -> str | None:
        """Re-publish a group of letters (MAX_IN_FLIGHT confirms awaited together), then record
        every outcome in one transaction: what is marked and what is counted never disagree."""
        if not self.publisher.connected:  # nothing claimed, nothing sent: the group waits
            return await self._wait_for_broker(job, BrokerUnavailable("RabbitMQ is not connected"))
        read = await self.store.run(_read, job, ids)
        messages, outcomes = _messages(ids, read)
        broker_down: BrokerUnavailable | None = None
        ready = list(messages)
        # Taken before anything goes out: another redrive, or a single re-publish, that read
        # these letters at the same moment publishes none of those this one took.
        claimed_at = _claim_stamp(read)
        claimed = await self._claimed(read.letters, ready, job, claimed_at) if ready else set()
        not_sent: list[str] = []
        outcomes.update(await self._why_not(read, [id_ for id_ in ready if id_ not in claimed]))

        in_flight = asyncio.Semaphore(MAX_IN_FLIGHT)
        hand_out_until = time.monotonic() + HAND_OUT_WINDOW

        async def one(dead_letter_id: str) -> None:
            nonlocal broker_down
            async with in_flight:
                # A letter of the group failed: the rest wait, untried, so that no more are
                # left in doubt. Or confirms are slow: the rest go with the next group, so that
                # the job's heartbeat is beaten in time (HAND_OUT_WINDOW).
                if broker_down is not None or time.monotonic() > hand_out_until:
                    not_sent.append(dead_letter_id)
                    return
                try:
                    await publish(
                        self.publisher,
                        read.letters[dead_letter_id],
                        message=messages[dead_letter_id],
                    )
                except NotSent as exc:
                    # Not the letter's fault, and it did not go out: pending, its claim given
                    # back.
                    not_sent.append(dead_letter_id)
                    broker_down = exc
                except BrokerUnavailable as exc:
                    # Not the letter's fault, but it may have gone out (a confirm that never
                    # came): it stays claimed, and fails now with why — left pending, a cancel
                    # before the job's next pass said so left it uncounted.
                    broker_down = exc
                    outcomes[dead_letter_id] = (
                        f"dead letter {dead_letter_id} was sent without a confirm ({exc}) and is "
                        "not recorded as re-published: it may have gone out; not again "
                        "(re-publish it by hand, with force, if it never went out)"
                    )
                except (Unroutable, Unwritable) as exc:
                    # Returned (it reached no queue), or never written: its claim given back.
                    not_sent.append(dead_letter_id)
                    outcomes[dead_letter_id] = str(exc)
                except DocprocError as exc:
                    outcomes[dead_letter_id] = str(exc)
                except Exception as exc:  # a message the AMQP library cannot write (forged)
                    logger.bind(dead_letter_id=dead_letter_id).warning(
                        "dead letter {} cannot be re-published: {!r}", dead_letter_id, exc
                    )
                    not_sent.append(dead_letter_id)
                    outcomes[dead_letter_id] = f"cannot be re-published: {exc!r}"
                else:
                    outcomes[dead_letter_id] = None

        await asyncio.gather(*(one(id_) for id_ in ready if id_ in claimed))

        # The same in each attempt to record it, and a stamp of its own (`mark_handled`).
        published_at = max(utcnow(), claimed_at + _TICK)

        def record(connection: Connection) -> str | None:
            published = [read.letters[id_] for id_, error in outcomes.items() if error is None]
            mark_handled(connection, published, read.runs, published_at)
            dead_letters.release_claims(
                connection,
                [(id_, read.letters[id_].republished_at) for id_ in not_sent],
                claimed_at,
            )
            return redrives.record_items(
                connection,
                redrive_id=job.id,
                owner=self.owner,
                outcomes=[
                    redrives.Outcome(id_, "published" if error is None else "failed", error)
                    for id_, error in outcomes.items()
                ],
            )

        state: str | None = "running"
        if outcomes or not_sent:
            # A refused write would pause the job with these letters pending: they would go out
            # again.
            began = time.monotonic()
            state = await self._recorded(record, stop)
            self._beaten = began
        if broker_down is not None and state == "running":
            state = await self._wait_for_broker(job, broker_down)
        return state

    async def _why_not(self, read: _Read, ids: list[str]) -> dict[str, str]:
        """Why each of these letters, read as the group's, was not claimed: changed since the
        group read it — discarded, superseded, purged, or taken by another redrive or request."""
        if not ids:
            return {}
        try:
            letters = await self.store.run(dead_letters.get_many, ids)
        except DatabaseError:
            letters = {}
        reasons = {}
        for id_ in ids:
            try:
                _not_since(check(letters.get(id_), id_), read.seen.get(id_))
            except DocprocError as exc:
                reasons[id_] = str(exc)
            else:
                reasons[id_] = _TAKEN.format(id_)
        return reasons

    async def _claimed(
        self,
        letters: dict[str, DeadLetter],
        ids: list[str],
        job: Redrive,
        claimed_at: datetime,
    ) -> set[str]:
        """`ids` claimed for this group (`claim_for_redrive`). When the store's answer is lost,
        the claim may have committed, and nothing of the group went out: the claims are given
        back before the job pauses, so that its next pass does not fail them as letters that may
        have gone out. (A store that refuses that too leaves them so: the operator then
        re-publishes them by hand.)"""
        try:
            return await self.store.write(dead_letters.claim_for_redrive, job.id, ids, claimed_at)
        except DatabaseError:
            claims = [(id_, letters[id_].republished_at) for id_ in ids]
            with contextlib.suppress(DatabaseError):
                await self.store.record(
                    RECORD_PATIENCE, dead_letters.release_claims, claims, claimed_at
                )
            raise

    async def _wait_for_broker(self, job: Redrive, down: BrokerUnavailable) -> str | None:
        """Say where the operator looks (the job's progress), not only in the log, that the job
        waits for RabbitMQ; pause; the job's state."""
        logger.warning("redrive {} waits for RabbitMQ: {}", job.id, down)
        self._beaten = time.monotonic()
        state = await self.store.write(
            redrives.beat, job.id, self.owner, waiting=f"{redrives.WAITING}: {down}"
        )
        await asyncio.sleep(1.0)
        return state

"""The redrive runner: works through redrive jobs at their rate, in the API process.

Each API process runs one. Jobs live in the store: a runner claims a job nobody owns (or whose
owner's heartbeat stopped), re-publishes its pending items one by one at the job's rate, and
records each outcome; cancelling is a state change the runner sees at its next item.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from datetime import timedelta

from loguru import logger
from sqlalchemy import Connection

from service.broker.publisher import Publisher
from service.deadletters.republish import republish
from service.errors import BrokerUnavailable, DatabaseError, DocprocError
from service.store import redrives
from service.store.database import AsyncStore
from service.store.redrives import Redrive
from service.store.schema import utcnow

HEARTBEAT_TIMEOUT = timedelta(seconds=15)
"""A job whose owner has not recorded progress for this long is taken over."""
IDLE_PAUSE = 0.5


class RedriveRunner:
    def __init__(self, store: AsyncStore, publisher: Publisher, owner: str | None = None) -> None:
        self.store = store
        self.publisher = publisher
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}"
        self.wake = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                job = await self.store.write(
                    redrives.claim, self.owner, utcnow() - HEARTBEAT_TIMEOUT
                )
            except DatabaseError as exc:
                logger.warning("redrive runner cannot reach the store: {}", exc)
                job = None
            if job is None:
                await self._idle(stop)
                continue
            await self._work(job, stop)

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
        next_at = time.monotonic()
        while not stop.is_set():
            batch = await self.store.run(redrives.pending, job.id, 50)
            if not batch:
                await self.store.write(redrives.finish, job.id)
                logger.bind(redrive_id=job.id).info("redrive {} finished", job.id)
                return
            for dead_letter_id in batch:
                delay = next_at - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                next_at = max(next_at + interval, time.monotonic() - interval)
                state = await self._one(job, dead_letter_id)
                if state == "cancelling":
                    await self.store.write(redrives.stopped, job.id)
                if state != "running" or stop.is_set():
                    logger.bind(redrive_id=job.id).info("redrive {} stops: {}", job.id, state)
                    return

    async def _one(self, job: Redrive, dead_letter_id: str) -> str | None:
        outcome: list[str | None] = []

        def count(connection: Connection) -> None:
            outcome.append(
                redrives.record_item(
                    connection,
                    redrive_id=job.id,
                    owner=self.owner,
                    dead_letter_id=dead_letter_id,
                    state="published",
                )
            )

        try:
            await republish(self.store, self.publisher, dead_letter_id, also=count)
        except BrokerUnavailable as exc:
            # Not the letter's fault: leave it pending and let the broker come back.
            logger.warning("redrive {} waits for RabbitMQ: {}", job.id, exc)
            await asyncio.sleep(1.0)
            return "running"
        except DocprocError as exc:
            return await self.store.write(
                redrives.record_item,
                redrive_id=job.id,
                owner=self.owner,
                dead_letter_id=dead_letter_id,
                state="failed",
                error=str(exc),
            )
        return outcome[0] if outcome else None

"""Group commit: items that arrive while a transaction runs go together in the next one.

Each upload used to be its own transaction: a hop to the writer thread, BEGIN, three statements,
COMMIT (on PostgreSQL a WAL flush) and a hop back. Under load most of that is the same for ten
uploads as for one. `GroupCommit` writes the first item at once, alone; whatever arrives while
that transaction runs is written in the next, in one call of the operation — so an idle service
waits for nothing and a busy one commits in groups. Every caller is answered only once its own
item is committed: the promise of each item is the same as if it had been written alone.

A batch that fails is written again one item at a time, so an item the store refuses (or a bug
one input triggers) fails alone, with its own error, never its neighbours'. When the store cannot
be reached the whole batch fails at once: trying each item again would only wait N times longer.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

from sqlalchemy import Connection

from service.errors import StoreUnavailable
from service.store.database import AsyncStore

T = TypeVar("T")
R = TypeVar("R")

BatchOperation = Callable[[Connection, Sequence[T]], Sequence[R]]


class _Waiting(Generic[T, R]):
    __slots__ = ("context", "future", "item", "size")

    def __init__(self, item: T, size: int, future: asyncio.Future[R]) -> None:
        self.item = item
        self.size = size
        self.future = future
        # The batch runs in the context of its first item's caller: its trace, its log fields.
        self.context = contextvars.copy_context()


class GroupCommit(Generic[T, R]):
    """`await group(item, size)`: the operation's result for `item`, once committed.

    `operation(connection, items)` returns one result per item, in order. A batch holds at most
    `most` items and `most_bytes` of their `size` (one item larger than that goes alone).
    """

    def __init__(
        self,
        store: AsyncStore,
        operation: BatchOperation[T, R],
        *,
        most: int = 64,
        most_bytes: int = 16 * 1024 * 1024,
    ) -> None:
        self.store = store
        self.operation = operation
        self.most = most
        self.most_bytes = most_bytes
        self._waiting: list[_Waiting[T, R]] = []
        self._writing: asyncio.Task[None] | None = None

    async def __call__(self, item: T, size: int = 0) -> R:
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._waiting.append(_Waiting(item, size, future))
        if self._writing is None:
            self._next()
        # A caller that stops waiting (its client went away) leaves its item in the batch: it is
        # committed or not with the others, as a cancelled `AsyncStore.write` would be.
        return await future

    def _next(self) -> None:
        """Start writing what waits, as one batch, in a task of its own: a cancelled caller must
        not take its neighbours' answers with it."""
        batch: list[_Waiting[T, R]] = []
        size = 0
        for waiting in self._waiting:
            if batch and (len(batch) == self.most or size + waiting.size > self.most_bytes):
                break
            batch.append(waiting)
            size += waiting.size
        del self._waiting[: len(batch)]
        self._writing = asyncio.get_running_loop().create_task(
            self._write(batch), name="group-commit", context=batch[0].context
        )

    async def _write(self, batch: list[_Waiting[T, R]]) -> None:
        try:
            try:
                results = await self.store.write(self.operation, [w.item for w in batch])
            except Exception as exc:
                if len(batch) == 1 or isinstance(exc, StoreUnavailable):
                    for waiting in batch:
                        _fail(waiting, exc)
                    return
                for waiting in batch:  # alone, so that only what failed fails
                    try:
                        [result] = await self.store.write(self.operation, [waiting.item])
                    except Exception as alone:
                        _fail(waiting, alone)
                    else:
                        _answer(waiting, result)
                return
            for waiting, result in zip(batch, results, strict=True):
                _answer(waiting, result)
        except asyncio.CancelledError:  # the loop is closing: nobody is left to answer
            for waiting in batch:
                waiting.future.cancel()
            raise
        finally:
            self._writing = None
            if self._waiting:
                self._next()


def _answer(waiting: _Waiting[T, R], result: R) -> None:
    if not waiting.future.done():  # done: its caller was cancelled
        waiting.future.set_result(result)


def _fail(waiting: _Waiting[T, R], exc: Exception) -> None:
    if not waiting.future.done():
        waiting.future.set_exception(exc)

"""A closed-loop load: `count` calls by `concurrency` callers, each call timed."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from bench.report import median, percentile
from bench.wire import Client


@dataclass(frozen=True)
class Load:
    count: int
    seconds: float
    latencies: list[float]
    cpu_seconds: float
    """CPU this (the client's) process used meanwhile."""

    @property
    def rate(self) -> float:
        return self.count / self.seconds if self.seconds > 0 else float("nan")

    @property
    def client_us(self) -> float:
        """The client's CPU per call, µs."""
        return self.cpu_seconds / self.count * 1e6

    @property
    def p50_ms(self) -> float:
        return percentile(self.latencies, 0.50) * 1000

    @property
    def p99_ms(self) -> float:
        return percentile(self.latencies, 0.99) * 1000


def latency(loads: list[Load]) -> str:
    """Median p50 and p99 latency of rounds, in ms."""
    p50 = median([load.p50_ms for load in loads])
    return f"{p50:.1f} / {median([load.p99_ms for load in loads]):.1f}"


def client_cpu(loads: list[Load]) -> float:
    """Median CPU of the client per call, µs."""
    return median([load.client_us for load in loads])


async def drive(count: int, concurrency: int, call: Callable[[int], Awaitable[None]]) -> Load:
    """Make calls 0..count-1, at most `concurrency` at a time; the first failure stops them all."""
    latencies: list[float] = []
    next_index = 0

    async def caller() -> None:
        nonlocal next_index
        while next_index < count:
            index = next_index
            next_index += 1
            started = time.perf_counter()
            await call(index)
            latencies.append(time.perf_counter() - started)

    started, cpu = time.perf_counter(), time.process_time()
    try:
        async with asyncio.TaskGroup() as group:
            for _ in range(min(concurrency, count)):
                group.create_task(caller())
    except ExceptionGroup as failed:
        raise failed.exceptions[0] from None  # one reason is enough to stop the run
    return Load(count, time.perf_counter() - started, latencies, time.process_time() - cpu)


async def http_load(
    url: str,
    count: int,
    concurrency: int,
    request: Callable[[Client, int], Awaitable[None]],
) -> Load:
    """`count` requests through a fresh client (uvicorn closes connections idle for 5 s, which
    a client kept across rounds would trip over), its connections opened before the clock runs."""
    async with Client(url, concurrency) as client:
        await drive(concurrency, concurrency, lambda index: request(client, index))
        return await drive(count, concurrency, lambda index: request(client, index))

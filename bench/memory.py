"""Memory: the DLQ consumer's resident set while it stores many dead letters — it must not grow
with their number. (Every other docproc process's peak RSS is recorded by the harness when it
stops, under the measure "memory".)

Dead letters are fed in steps of STEP while the consumer runs; after each step has been stored,
its RSS is read from /proc. The figures: RSS after 10,000, after all of them, and the growth per
10,000 from the first step to the last.
"""

from __future__ import annotations

import asyncio

import aio_pika

from bench.deadletters import load_dead_letters, next_batch, stored
from bench.harness import Session, eventually, rss_kb

STEP = 5_000
PER = 10_000
GROWTH_CEILING = 1.0
"""MiB per 10,000 dead letters: flat, give or take the allocator (100k would add 10 MiB)."""


async def measure(run: Session) -> None:
    total = max(run.options.memory_dead_letters, 2 * STEP)
    store = run.store()
    batch = next_batch(store)
    dlq, _ = await run.start_docproc("dlq")
    samples: list[tuple[int, float]] = []
    connection = await aio_pika.connect(run.broker_url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        fed = 0
        while fed < total:
            step = min(STEP, total - fed)
            await load_dead_letters(channel, batch, step, first=fed)
            fed += step

            async def caught_up(fed: int = fed) -> int | None:
                dlq.check()
                found, _ = await asyncio.to_thread(store.run, stored, batch)
                return found if found >= fed else None

            await eventually(caught_up, 30 + step / 50, f"{fed} dead letters stored", 0.2)
            samples.append((fed, rss_kb(dlq.pid) / 1024))
    finally:
        await connection.close()
        store.close()
        run.stop(dlq)
    report = run.report
    first_count, first_mib = samples[0]
    last_count, last_mib = samples[-1]
    at_per = next((sample for sample in samples if sample[0] >= PER), samples[-1])
    span = last_count - first_count
    growth = (last_mib - first_mib) / span * PER if span else 0.0
    trail = ", ".join(f"{count // 1000}k: {mib:.1f}" for count, mib in samples)
    report.read("memory", f"DLQ consumer RSS after {at_per[0]:,} dead letters", at_per[1], "MiB")
    report.read("memory", f"DLQ consumer RSS after {last_count:,} dead letters", last_mib, "MiB")
    report.read(
        "memory",
        f"DLQ consumer RSS growth per {PER:,} dead letters",
        growth,
        "MiB",
        f"VmRSS after each step, MiB — {trail}",
        ceiling=GROWTH_CEILING,
    )

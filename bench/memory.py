"""Memory: the DLQ consumer's resident set while it stores many dead letters — it must not grow
with their number. (Every other docproc process's peak RSS is recorded by the harness when it
stops, under the measure "memory".)

Dead letters are fed in steps of STEP while the consumer runs; after each step has been stored,
its RSS is read from /proc. The figures: RSS after 10,000, after all of them, and the growth per
10,000 from the second step to the last. The first step warms up what is bounded but grows as a
fresh store does — SQLite's page cache (2 MiB a connection), the allocator's arenas: a `--quick`
run (15,000 letters, the growth from the first step) once read 5k: 108.1, 10k: 110.2, 15k:
110.9 MiB — 2.8 MiB per 10,000 — where full runs read +0.2 to +0.4 MiB per 10,000 to 100,000.
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
    total = max(run.options.memory_dead_letters, 3 * STEP)
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
    first_count, first_mib = samples[1]  # after the warm-up step (module docstring)
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

"""Search: `GET /search` latency (p50, p99) and server CPU per query as the store grows — 10k,
100k and 1M chunks by default — and whether the best match ranks first.

The store is filled through its own tables, in bulk: document and chunk rows as
`store_extraction` writes them, the full-text index kept by the schema itself (FTS5 triggers on
SQLite; the generated tsvector column and its GIN index on PostgreSQL, vacuumed and analysed
after each fill as autovacuum would). The documents' original bytes and whole text are left out:
a search never reads them. The text is pseudo-words whose frequencies follow Zipf's law over a
fixed vocabulary, so that selective and common terms occur as in prose; each size is searched
with a mix of five kinds of query, in turn: a rare term, a common term, a two-word phrase, an OR
of two terms, a prefix — through the real API, as many at once as it runs.

The mark: p99 at the largest size at most 3 x p99 at the smallest. The ranking check: a document
planted last (an engine that stopped at the first matches would miss it), each of its chunks the
best match of one query of each kind, must come first for all five. Being the newest, it is
within the window of a query that matches more chunks than a search ranks (DOCPROC_SEARCH_WINDOW):
the check shows ranking within the window; the store's tests show what is left out of it. The
report counts, by kind, the answers that said so (`complete: false`).
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import random
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from urllib.parse import quote

import msgspec
from sqlalchemy import Connection, delete, insert, text
from sqlalchemy.engine import make_url

from bench.harness import BenchError, Process, Session, command_name, cpu_seconds
from bench.load import Load, drive
from bench.report import median, percentile
from bench.wire import Client
from service.api.routes.documents import MAX_CONCURRENT_SEARCHES
from service.store.database import Store
from service.store.schema import chunks, documents, utcnow

VOCABULARY = 50_000
SENTENCES = 200_000
"""Sentences of Zipf-drawn words that chunks are drawn from (drawing each chunk's words one by
one would take longer than inserting it); a word's share of chunks is the same either way."""
SENTENCES_PER_CHUNK = 11
"""About 1000 characters: docproc's default chunk size."""
CHUNKS_PER_DOCUMENT = 20
BATCH = 10_000
"""Chunks per transaction of the fill."""
QUERIES_PER_KIND = 40
WARM_UP = 4 * MAX_CONCURRENT_SEARCHES
LIMIT = 10
P99_CEILING = 3.0
KINDS = ("rare", "common", "phrase", "or", "prefix")
REPEAT = 30
"""Times a planted chunk says its query's words: more than any drawn chunk does."""

_CONSONANTS = "bcdfghjklmnprstvz"
_VOWELS = "aeiou"


def _pseudo_word(rng: random.Random) -> str:
    """A pronounceable non-word (kalomir, tesun): no stop word, stemmed alike by both engines."""
    syllables = rng.choice((2, 2, 3, 3, 4))
    body = "".join(rng.choice(_CONSONANTS) + rng.choice(_VOWELS) for _ in range(syllables))
    return body + rng.choice("klmnrst")


class Corpus:
    """A vocabulary ranked by frequency (Zipf, s = 1: the r-th word is used 1/r as often as the
    first), sentences drawn from it, chunks drawn from the sentences, and queries of each kind.
    Seeded: every run fills the same store and asks the same questions."""

    def __init__(self, seed: int = 15) -> None:
        self.rng = random.Random(seed)
        words: dict[str, None] = {}
        while len(words) < VOCABULARY:
            words.setdefault(_pseudo_word(self.rng), None)
        # Made in random order, so a word's rank says nothing about its letters (or its prefix).
        self.ranked = list(words)
        self.rank = {word: rank for rank, word in enumerate(self.ranked, start=1)}
        weights = list(itertools.accumulate(1 / rank for rank in self.rank.values()))
        self.sentences = [
            self.rng.choices(self.ranked, cum_weights=weights, k=self.rng.randint(6, 20))
            for _ in range(SENTENCES)
        ]
        self.used = {word for sentence in self.sentences for word in sentence}
        self.texts = [" ".join(sentence).capitalize() + "." for sentence in self.sentences]

    def chunk(self) -> str:
        return " ".join(self.rng.choices(self.texts, k=SENTENCES_PER_CHUNK))

    def _word(self, low: int, high: int) -> str:
        """A word ranked in [low, high) that the text holds."""
        while (word := self.ranked[self.rng.randrange(low - 1, high - 1)]) not in self.used:
            pass
        return word

    def _phrase(self) -> tuple[str, str]:
        """Two words side by side in some sentence, neither among the 50 commonest."""
        while True:
            words = self.rng.choice(self.sentences)
            at = self.rng.randrange(len(words) - 1)
            if min(self.rank[words[at]], self.rank[words[at + 1]]) > 50:
                return words[at], words[at + 1]

    def _prefix(self) -> str:
        """The first four letters of a word ranked 100-5,000 that none of the 100 commonest
        starts with."""
        while True:
            stem = self._word(100, 5_000)[:4]
            if not any(common.startswith(stem) for common in self.ranked[:100]):
                return stem

    def query(self, kind: str) -> tuple[str, str]:
        """A query of this kind, and the text of a chunk that matches it best."""
        if kind == "rare":  # in about 0.05% of chunks
            word = self._word(10_000, 30_000)
            return word, " ".join([word] * REPEAT)
        if kind == "common":  # in 20-45% of chunks
            word = self._word(20, 60)
            return word, " ".join([word] * REPEAT)
        if kind == "phrase":
            first, second = self._phrase()
            return f'"{first} {second}"', " ".join([first, second] * (REPEAT // 2))
        if kind == "or":  # each in 0.5-5% of chunks
            first, second = self._word(200, 2_000), self._word(200, 2_000)
            return f"{first} OR {second}", " ".join([first, second] * (REPEAT // 2))
        # Every word with the prefix: ts_rank adds up distinct matching words (bm25 counts all).
        stem = self._prefix()
        words = [word for word in self.ranked if word.startswith(stem)]
        return stem + "*", " ".join(words * (REPEAT // 3))


class _Completeness(msgspec.Struct):
    complete: bool


@dataclass
class Planted:
    """The document that must rank first: one chunk per kind of query."""

    queries: dict[str, str]
    texts: list[str]
    document_id: str = ""


def _document_row(document_id: str, chunk_count: int, now: datetime) -> dict[str, object]:
    return {
        "id": document_id,
        "filename": f"{document_id}.txt",
        "content_type": "text/plain",
        "detected_type": "text",
        "size": 0,
        "sha256": hashlib.sha256(document_id.encode()).hexdigest(),
        "content": b"",
        "task_id": document_id,
        "chunk_count": chunk_count,
        "created_at": now,
        "updated_at": now,
        "processed_at": now,
    }


def _chunk_rows(document_id: str, texts: Sequence[str]) -> list[dict[str, object]]:
    rows, start = [], 0
    for position, content in enumerate(texts):
        rows.append(
            {
                "document_id": document_id,
                "position": position,
                "start_offset": start,
                "end_offset": start + len(content),
                "content": content,
            }
        )
        start += len(content) + 1
    return rows


def _larger_pending_list(connection: Connection) -> None:
    """PostgreSQL: a fill's own transaction gathers more of the GIN index's new entries before
    merging them (the index is the product's; only how often this session merges changes)."""
    if connection.dialect.name == "postgresql":
        connection.execute(text("SET LOCAL gin_pending_list_limit = '64MB'"))
        connection.execute(text("SET LOCAL work_mem = '256MB'"))


def fill(connection: Connection, corpus: Corpus, count: int) -> None:
    """`count` chunks more, in documents of CHUNKS_PER_DOCUMENT."""
    _larger_pending_list(connection)
    now = utcnow()
    document_rows, chunk_rows = [], []
    for first in range(0, count, CHUNKS_PER_DOCUMENT):
        document_id = str(uuid.uuid4())
        texts = [corpus.chunk() for _ in range(min(CHUNKS_PER_DOCUMENT, count - first))]
        document_rows.append(_document_row(document_id, len(texts), now))
        chunk_rows += _chunk_rows(document_id, texts)
    connection.execute(insert(documents), document_rows)
    connection.execute(insert(chunks), chunk_rows)


def clear(connection: Connection) -> int:
    """Chunks that earlier measures of the run left are removed (index entries with them): the
    sizes are this measure's."""
    removed: int = connection.execute(delete(chunks)).rowcount
    return removed


def plant(connection: Connection, planted: Planted) -> None:
    """The planted document again, as the newest (the old one, its chunks and their index
    entries deleted by the schema's own cascade and triggers)."""
    if planted.document_id:
        connection.execute(delete(chunks).where(chunks.c.document_id == planted.document_id))
        connection.execute(delete(documents).where(documents.c.id == planted.document_id))
    planted.document_id = str(uuid.uuid4())
    connection.execute(
        insert(documents), [_document_row(planted.document_id, len(planted.texts), utcnow())]
    )
    connection.execute(insert(chunks), _chunk_rows(planted.document_id, planted.texts))


def settle(store: Store) -> None:
    """PostgreSQL: what autovacuum does after a bulk insert — merge the GIN pending list, gather
    statistics for the planner. (SQLite's FTS5 merges its segments as it inserts.)"""
    if store.engine.dialect.name != "postgresql":
        return
    with store.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        for table in ("chunks", "documents"):
            connection.execute(text(f"VACUUM ANALYZE {table}"))


class BackendCpu:
    """CPU of the PostgreSQL backends that serve the API, found by the application_name its
    database URL gives them and read from /proc: on PostgreSQL a search's work is theirs."""

    def __init__(self, store: Store, name: str) -> None:
        self.store = store
        self.name = name

    def _pids(self, connection: Connection) -> list[int]:
        found = connection.execute(
            text("SELECT pid FROM pg_stat_activity WHERE application_name = :name"),
            {"name": self.name},
        )
        return [int(pid) for pid in found.scalars()]

    def read(self) -> dict[int, float]:
        pids = self.store.run(self._pids)
        # Only a local server's backends can be read (and a remote pid is not a backend).
        return {pid: cpu_seconds(pid) for pid in pids if command_name(pid) == "postgres"}

    @staticmethod
    def spent(before: dict[int, float], after: dict[int, float]) -> float:
        return sum(seconds - before.get(pid, 0.0) for pid, seconds in after.items())


@dataclass
class Size:
    """What was found at one size of the store."""

    chunks: int
    fill_seconds: float
    loads: list[Load] = field(default_factory=list)
    by_kind: dict[str, list[float]] = field(default_factory=lambda: {k: [] for k in KINDS})
    api_us: list[float] = field(default_factory=list)
    database_us: list[float] = field(default_factory=list)
    stopped: int = 0
    windowed: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    misranked: list[str] = field(default_factory=list)

    @property
    def p99_ms(self) -> float:
        return median([load.p99_ms for load in self.loads])


async def measure(run: Session) -> None:
    sizes = sorted(set(run.options.search_chunks))
    corpus = await asyncio.to_thread(Corpus)
    queries = [corpus.query(kind)[0] for _ in range(QUERIES_PER_KIND) for kind in KINDS]
    best = {kind: corpus.query(kind) for kind in KINDS}
    planted = Planted({k: q for k, (q, _) in best.items()}, [t for _, t in best.values()])
    store = run.store()
    extra: dict[str, str] = {}
    backends: BackendCpu | None = None
    if store.engine.dialect.name == "postgresql":
        name = f"{run.vhost}-api"
        url = make_url(run.database_url).update_query_dict({"application_name": name})
        extra["DOCPROC_DATABASE_URL"] = url.render_as_string(hide_password=False)
        backends = BackendCpu(store, name)
    api, api_url = await run.start_docproc("api", **extra)
    assert api_url is not None
    found: list[Size] = []
    stored = 0
    try:
        removed = await asyncio.to_thread(store.run, clear)
        for size in sizes:
            started = time.perf_counter()
            while stored < size:
                batch = min(BATCH, size - stored)
                await asyncio.to_thread(store.run, fill, corpus, batch)
                stored += batch
            await asyncio.to_thread(store.run, plant, planted)
            await asyncio.to_thread(settle, store)
            at = Size(size, time.perf_counter() - started)
            found.append(at)
            api.check()
            at.misranked = await ranked_below_first(api_url, planted)
            await _search(run, api, api_url, at, queries, backends)
    finally:
        run.stop(api)
        store.close()
    _report(run, found, backends is not None)
    if removed:
        run.report.notes.append(f"search: first removed the {removed:,} chunks of earlier measures")


async def ranked_below_first(url: str, planted: Planted) -> list[str]:
    """The planted queries whose first hit is not the planted document."""
    missed = []
    async with Client(url, 1) as client:
        for kind, query in planted.queries.items():
            answer = await client.get(f"/search?q={quote(query)}&limit={LIMIT}")
            if answer.status != 200:
                raise BenchError(f"GET /search?q={query}: {answer.status} {answer.body[:500]!r}")
            items = msgspec.json.decode(answer.body)["items"]
            if not items or items[0]["document_id"] != planted.document_id:
                missed.append(f"{kind} {query!r}")
    return missed


async def _search(
    run: Session,
    api: Process,
    url: str,
    at: Size,
    queries: list[str],
    backends: BackendCpu | None,
) -> None:
    """Rounds of every query through the API, as many at once as it searches."""
    paths = [f"/search?q={quote(query)}&limit={LIMIT}" for query in queries]
    concurrency = MAX_CONCURRENT_SEARCHES

    async def ask(client: Client, index: int) -> None:
        kind = KINDS[index % len(KINDS)]
        started = time.perf_counter()
        answer = await client.get(paths[index % len(paths)])
        at.by_kind[kind].append(time.perf_counter() - started)
        if answer.status == 503:  # stopped at the API's deadline: a figure, not a failure
            at.stopped += 1
        elif answer.status != 200:
            raise BenchError(f"GET {paths[index % len(paths)]}: {answer.status} {answer.body!r}")
        elif not msgspec.json.decode(answer.body, type=_Completeness).complete:
            at.windowed[kind] += 1

    async def load(count: int) -> Load:
        # One drive on fresh connections: between two drives, connections that finished first
        # would wait idle on the slowest search (up to its 5 s deadline) and uvicorn closes
        # keep-alive connections idle for 5 s.
        async with Client(url, concurrency) as client:
            return await drive(count, concurrency, lambda index: ask(client, index))

    await load(WARM_UP)
    at.by_kind, at.stopped = {kind: [] for kind in KINDS}, 0
    at.windowed = dict.fromkeys(KINDS, 0)
    for _ in range(run.options.rounds):
        api_before = api.cpu()
        database_before = backends.read() if backends else {}
        done = await load(run.options.search_queries)
        at.api_us.append((api.cpu() - api_before) / done.count * 1e6)
        if backends is not None:
            spent = backends.spent(database_before, backends.read())
            at.database_us.append(spent / done.count * 1e6)
        at.loads.append(done)


def _ms(values: list[float], fraction: float) -> str:
    return f"{percentile(values, fraction) * 1000:.1f}"


def _report(run: Session, found: list[Size], postgres: bool) -> None:
    report, options = run.report, run.options
    engine = "PostgreSQL tsvector/GIN, ts_rank" if postgres else "SQLite FTS5, bm25"
    for at in found:
        n = f"{at.chunks:,}"
        kinds = ", ".join(f"{kind} {_ms(times, 0.5)}" for kind, times in at.by_kind.items())
        tails = ", ".join(f"{kind} {_ms(times, 0.99)}" for kind, times in at.by_kind.items())
        report.read(
            "search",
            f"p50 at {n} chunks",
            median([load.p50_ms for load in at.loads]),
            "ms",
            f"by kind: {kinds}; filled in {at.fill_seconds:.0f} s",
        )
        windowed = ", ".join(
            f"{kind} {at.windowed[kind]} of {len(at.by_kind[kind])}"
            for kind in KINDS
            if at.windowed[kind]
        )
        report.read(
            "search",
            f"p99 at {n} chunks",
            at.p99_ms,
            "ms",
            f"by kind: {tails}; past the window (`complete: false`): {windowed or 'none'}",
        )
        api_us, database_us = median(at.api_us), median(at.database_us) if postgres else 0.0
        client = median([load.client_us for load in at.loads])
        split = f"API {api_us:.0f} + PostgreSQL {database_us:.0f}" if postgres else "API process"
        report.read(
            "search",
            f"server CPU per query at {n} chunks",
            api_us + database_us,
            "µs",
            f"{split}; the client's {client:.0f}",
        )
        report.read(
            "search",
            f"best match not first at {n} chunks",
            len(at.misranked),
            "queries",
            ", ".join(at.misranked) or f"the planted document first for all {len(KINDS)} kinds",
            ceiling=0,
        )
        if at.stopped:
            report.read(
                "search",
                f"searches stopped at the deadline at {n} chunks",
                at.stopped,
                "",
                ceiling=0,
            )
    if len(found) > 1:
        first, last = found[0], found[-1]
        report.read(
            "search",
            f"p99 at {last.chunks:,} / p99 at {first.chunks:,} chunks",
            last.p99_ms / first.p99_ms,
            "x",
            ceiling=P99_CEILING,
        )
    report.notes.append(
        f"search: {engine}; {options.search_queries} queries a round ({', '.join(KINDS)} in "
        f"turn), {MAX_CONCURRENT_SEARCHES} at once (the API's limit), {LIMIT} hits each; "
        f"chunks of ~1000 characters from a {VOCABULARY:,}-word Zipf vocabulary"
    )

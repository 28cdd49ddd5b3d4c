"""Full-text search over chunks: FTS5 with bm25 on SQLite, tsvector with ts_rank on PostgreSQL.

The query comes parsed (service.search_syntax) and is rendered here for each engine, every word a
bound parameter or a quoted FTS5 string: no user text reaches either engine's syntax. Each search
runs under a deadline and can be cancelled from another task (the client went away): SQLite's
progress handler stops the statement, PostgreSQL's statement_timeout or a cancel request does.
A search ranks at most `window` matches, the newest, and says when there were more (WINDOW).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from datetime import datetime
from typing import Annotated, Any, TypedDict, Unpack

import msgspec
from sqlalchemy import Connection, Row, TextClause, bindparam, func, select, text
from sqlalchemy.exc import SQLAlchemyError

from service.errors import SearchError
from service.search_syntax import Query, Term
from service.store.database import as_struct
from service.store.schema import Timestamp, documents


class SearchHit(msgspec.Struct, frozen=True, kw_only=True):
    """One matching chunk, best first; the API answers with these as they are."""

    document_id: str
    filename: str
    title: str | None
    position: Annotated[int, msgspec.Meta(description="which chunk of the document")]
    score: float
    snippet: Annotated[str, msgspec.Meta(examples=["… the [lighthouse] stood …"])]
    sha256: Annotated[str, msgspec.Meta(description="the document's content hash")]
    duplicates: Annotated[
        list[str],
        msgspec.Meta(description="other documents with the same content, whose hit this is too"),
    ] = msgspec.field(default_factory=list)


class Filters(msgspec.Struct, frozen=True, kw_only=True):
    """What a search is narrowed to besides its words; None leaves a filter out."""

    detected_type: str | None = None
    language: str | None = None
    since: datetime | None = None
    """Documents dated at or after this: their own modification time, else their own creation
    time, else when docproc accepted them (schema.DATED_AT, which ix_documents_dated_at holds)."""


NO_FILTERS = Filters()

# Each filter as SQL over the documents' alias `d`; the date is schema.DATED_AT, spelled as its
# index is, so that both engines can use the index. Only what is set is added: an unfiltered
# search runs the statement it always ran.
_FILTERS = {
    "detected_type": "d.detected_type = :detected_type",
    "language": "d.language = :language",
    "since": "coalesce(d.modified_at, d.authored_at, d.created_at) >= :since",
}


def _where(filters: Filters) -> tuple[str, dict[str, Any]]:
    """The filters' SQL, each after an AND, and their parameters."""
    given = {name: getattr(filters, name) for name in _FILTERS}
    given = {name: value for name, value in given.items() if value is not None}
    return "".join(f"\n      AND {_FILTERS[name]}" for name in given), given


class Cancel:
    """Stops a search in flight: `set()` from any thread; the search ends with SearchError."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.backend_pid: int | None = None

    def set(self) -> None:
        self.event.set()


class Found(msgspec.Struct, frozen=True, kw_only=True):
    """What a search found: its hits, best first, and whether every match was ranked."""

    hits: list[SearchHit]
    complete: bool = True
    """False when more chunks matched than the search's window: the newest `window` of them
    (the chunks indexed last) were ranked, the older ones not looked at."""


SNIPPET_START = "["
SNIPPET_END = "]"
DEADLINE = 5.0
"""Seconds a search may take before it is stopped."""
WINDOW = 10_000
"""Matches a search ranks at most (DOCPROC_SEARCH_WINDOW). Ranking costs time in proportion to
the matches: a common word in a store of a million chunks matches hundreds of thousands, which
took seconds on SQLite and ran past the deadline on PostgreSQL. Past the window the newest
matches are ranked and the answer says so; more words, a phrase or a filter rank them all."""

# SQLite first finds the newest match left out, the one after the newest `window`: FTS5 walks its
# doclists newest first and stops there. No row (no more matches than the window): the search
# ranks them all; else the matches after it. Filters count: the window holds `window` matches
# that pass them.
_SQLITE_LEFT_OUT = """
    SELECT chunks_fts.rowid
    FROM chunks_fts{joins}
    WHERE chunks_fts MATCH :query{filters}
    ORDER BY chunks_fts.rowid DESC
    LIMIT 1 OFFSET :window
"""
_SQLITE_JOINS = """
    JOIN chunks c ON c.id = chunks_fts.rowid
    JOIN documents d ON d.id = c.document_id"""

# ORDER BY rank (FTS5's own column, bm25 by default), not ORDER BY bm25(chunks_fts): FTS5 then
# hands rows over best first, so the joins and the snippet are made for the `limit` rows kept
# only; sorted by SQLite instead, every match was joined and given a snippet before the sort.
_SQLITE = """
    SELECT c.document_id, d.filename, d.title, c.position, d.sha256,
           -chunks_fts.rank AS score,
           snippet(chunks_fts, 0, :start, :end, '…', 16) AS snippet
    FROM chunks_fts
    JOIN chunks c ON c.id = chunks_fts.rowid
    JOIN documents d ON d.id = c.document_id
    WHERE chunks_fts MATCH :query{filters}{window}
    ORDER BY chunks_fts.rank
    LIMIT :limit
"""

# PostgreSQL gathers and scores the newest `window` + 1 matches in one walk (the primary key
# backwards, checking each chunk's vector; or a rare term's few matches sorted: as its statistics
# say is cheaper); the best `limit` of the first `window` are then joined to their documents and
# given a snippet. `gathered` beyond `window` says the window was full: older matches were left
# out. Filters count, as on SQLite (their join is in the walk).
_POSTGRES = """
    WITH newest AS MATERIALIZED (
        SELECT c.id, c.document_id, c.position, ts_rank(c.search_vector, query.r) AS score
        FROM chunks c{joins}
        CROSS JOIN (SELECT {tsquery} AS q, {ranked} AS r) AS query
        WHERE c.search_vector @@ query.q{filters}
        ORDER BY c.id DESC
        LIMIT :window + 1
    ), best AS (
        SELECT id, score
        FROM (SELECT * FROM newest ORDER BY id DESC LIMIT :window) AS windowed
        ORDER BY score DESC, document_id, position
        LIMIT :limit
    )
    SELECT c.document_id, d.filename, d.title, c.position, d.sha256, best.score,
           ts_headline('english', c.content, query.r,
                       'StartSel=' || :start || ', StopSel=' || :end
                       || ', MaxWords=24, MinWords=8, MaxFragments=1') AS snippet,
           (SELECT count(*) FROM newest) AS gathered
    FROM best
    JOIN chunks c ON c.id = best.id
    JOIN documents d ON d.id = c.document_id
    CROSS JOIN (SELECT {ranked} AS r) AS query
    ORDER BY best.score DESC, c.document_id, c.position
"""
# For this transaction only, three settings:
# - The deadline.
# - A plan made for each search's own words. psycopg prepares a statement once a connection has
#   run it five times, and PostgreSQL then settles on a generic plan made without the words. That
#   plan cannot tell a common term from a rare one, and it sorted a common term's every match. A
#   common term at 100k chunks took 35 ms with its own plan and 250-330 ms with the generic one.
# - Random page reads priced as the cached reads they are (1.1, not the default 4, which is for
#   spinning disks). Once rows have been deleted, id order is not the table's order, and at the
#   default price the walk backwards lost to a scan of the whole table and a sort. A term in 30 %
#   of 100k chunks took 101 ms for that scan alone; the walk takes 35.
_POSTGRES_SETTINGS = text(
    "SELECT pg_backend_pid(), set_config('statement_timeout', :timeout, true),"
    " set_config('plan_cache_mode', 'force_custom_plan', true),"
    " set_config('random_page_cost', '1.1', true)"
)
_POSTGRES_JOINS = """
        JOIN documents d ON d.id = c.document_id"""


def fts5(query: Query) -> str:
    """The query in FTS5 syntax: every word a quoted string (its own syntax can't leak in)."""

    def term(t: Term) -> str:
        quoted = '"' + " ".join(t.words) + '"'
        return quoted + "*" if t.prefix else quoted

    clauses = [
        term(c[0]) if len(c) == 1 else "(" + " OR ".join(term(t) for t in c) + ")"
        for c in query.clauses
    ]
    rendered = "(" + " AND ".join(clauses) + ")"
    for t in query.excluded:
        rendered += f" NOT {term(t)}"
    return rendered


def tsquery(query: Query) -> tuple[str, str, dict[str, str]]:
    """The query as PostgreSQL tsquery expressions over bound parameters: the whole query, what
    a chunk must match; and its clauses without the exclusions, what ranks and highlights it
    (`ts_rank` of a query with `!!` scores every match 1e-20, and the order was lost)."""
    params: dict[str, str] = {}

    def term(t: Term) -> str:
        name = f"w{len(params)}"
        if t.prefix:
            # Also unstemmed, as 'simple' reads it: the English configuration drops a stop
            # word, and `over*`, `up*`, `under*` found nothing (overview, update, understand).
            params[name] = t.words[0] + ":*"
            return f"(to_tsquery('english', :{name}) || to_tsquery('simple', :{name}))"
        params[name] = " ".join(t.words)
        if t.said is None:
            return f"phraseto_tsquery('english', :{name})"
        # As PostgreSQL parses what was written ("example.com" is one token in the index), or
        # as its words ("e-mail" within "e-mail-address", kept as its parts): either matches.
        params[f"{name}s"] = t.said
        return f"(phraseto_tsquery('english', :{name}s) || phraseto_tsquery('english', :{name}))"

    clauses = ["(" + " || ".join(term(t) for t in c) + ")" for c in query.clauses]
    ranked = " && ".join(clauses)
    expression = ranked
    for t in query.excluded:
        expression += f" && !!{term(t)}"
    return expression, ranked, params


def _sqlite_driver(connection: Connection) -> Any:
    return connection.connection.driver_connection


def _install_deadline(connection: Connection, deadline: float, cancel: Cancel) -> None:
    def progress() -> int:
        return 1 if cancel.event.is_set() or time.monotonic() > deadline else 0

    _sqlite_driver(connection).set_progress_handler(progress, 10_000)


def _remove_deadline(connection: Connection) -> None:
    _sqlite_driver(connection).set_progress_handler(None, 10_000)


def _statement(sql: str, filters: Filters) -> TextClause:
    statement = text(sql)
    if filters.since is not None:
        statement = statement.bindparams(bindparam("since", type_=Timestamp()))
    return statement


def _sqlite_search(
    connection: Connection, query: Query, filters: Filters, where: str, params: dict[str, Any]
) -> tuple[Sequence[Row[Any]], bool]:
    params = params | {"query": fts5(query)}
    left_out_sql = _SQLITE_LEFT_OUT.format(joins=_SQLITE_JOINS if where else "", filters=where)
    left_out = connection.execute(_statement(left_out_sql, filters), params).scalar()
    bounded = "" if left_out is None else "\n      AND chunks_fts.rowid > :left_out"
    ranked = _statement(_SQLITE.format(filters=where, window=bounded), filters)
    return connection.execute(ranked, params | {"left_out": left_out}).all(), left_out is None


def _postgres_search(
    connection: Connection, query: Query, filters: Filters, where: str, params: dict[str, Any]
) -> tuple[Sequence[Row[Any]], bool]:
    expression, ranking, words = tsquery(query)
    joins = _POSTGRES_JOINS if where else ""
    sql = _POSTGRES.format(tsquery=expression, ranked=ranking, joins=joins, filters=where)
    rows = connection.execute(_statement(sql, filters), params | words).all()
    return rows, not rows or rows[0].gathered <= params["window"]


def search(
    connection: Connection,
    query: Query,
    limit: int = 10,
    *,
    filters: Filters = NO_FILTERS,
    cancel: Cancel | None = None,
    deadline: float = DEADLINE,
    window: int = WINDOW,
) -> Found:
    """Chunks that match `query`, best first, each with a highlighted snippet: of all matches,
    or of the newest `window` when more match."""
    cancel = cancel or Cancel()
    where, params = _where(filters)
    params |= {"window": window, "limit": limit, "start": SNIPPET_START, "end": SNIPPET_END}
    try:
        if connection.dialect.name == "sqlite":
            _install_deadline(connection, time.monotonic() + deadline, cancel)
            try:
                rows, complete = _sqlite_search(connection, query, filters, where, params)
            finally:
                _remove_deadline(connection)
        else:
            cancel.backend_pid = connection.execute(
                _POSTGRES_SETTINGS, {"timeout": str(int(deadline * 1000))}
            ).scalar_one()
            rows, complete = _postgres_search(connection, query, filters, where, params)
    except SQLAlchemyError as exc:
        if cancel.event.is_set():
            raise SearchError("the search was cancelled: its client went away") from exc
        reason = str(getattr(exc, "orig", None) or exc).splitlines()[0]
        if "interrupt" in reason or "statement timeout" in reason or "canceling" in reason:
            raise SearchError(
                f"the search took longer than {deadline:g} s and was stopped; narrow it "
                "(more words, a phrase)"
            ) from exc
        raise SearchError(f"search failed: {reason}") from exc
    return Found(hits=[as_struct(row, SearchHit) for row in rows], complete=complete)


MAX_DUPLICATES = 100
"""Other documents with its content a hit names at most."""
WIDENINGS = 2
"""Times a search is made again, four times as wide, when identical uploads took its places."""


class Options(TypedDict, total=False):
    """`search`'s keyword arguments, as `search_collapsed` passes them on."""

    filters: Filters
    cancel: Cancel | None
    deadline: float
    window: int


def search_collapsed(
    connection: Connection, query: Query, limit: int = 10, **options: Unpack[Options]
) -> Found:
    """`search`, with identical uploads (one SHA-256) found once: the best hit of each chunk of a
    content, naming the other documents that hold it — `limit` such hits when there are as
    many. Identical copies score alike and take the places of a search's first rows (seven
    copies of a document filled a search for its two best chunks with copies of the first):
    it is made again, wider, while they leave it short."""
    ends = time.monotonic() + options.get("deadline", DEADLINE)
    fetch = limit * 3
    for _ in range(WIDENINGS + 1):
        options["deadline"] = max(ends - time.monotonic(), 0.001)
        found = search(connection, query, fetch, **options)
        hits = _collapse(found.hits, limit)
        if len(hits) >= limit or len(found.hits) < fetch:
            break
        fetch *= 4
    copies = _copies(connection, {hit.sha256 for hit in hits})
    return Found(
        hits=[
            msgspec.structs.replace(
                hit,
                duplicates=[
                    other for other in copies.get(hit.sha256, []) if other != hit.document_id
                ][:MAX_DUPLICATES],
            )
            for hit in hits
        ],
        complete=found.complete,
    )


def _collapse(hits: list[SearchHit], limit: int) -> list[SearchHit]:
    """The best hit of each (content, chunk), at most `limit`, best first."""
    kept: dict[tuple[str, int], SearchHit] = {}
    for hit in hits:
        key = (hit.sha256, hit.position)
        if key not in kept:
            kept[key] = hit
            if len(kept) == limit:
                break
    return list(kept.values())


def _copies(connection: Connection, sha256s: set[str]) -> dict[str, list[str]]:
    """The documents of each content, oldest first, at most MAX_DUPLICATES + 1 a content."""
    if not sha256s:
        return {}
    d = documents.c
    ranked = select(
        d.sha256,
        d.id,
        func.row_number().over(partition_by=d.sha256, order_by=(d.created_at, d.id)).label("n"),
    ).where(d.sha256.in_(sorted(sha256s)))
    inner = ranked.subquery()
    rows = connection.execute(
        select(inner.c.sha256, inner.c.id)
        .where(inner.c.n <= MAX_DUPLICATES + 1)
        .order_by(inner.c.sha256, inner.c.n)
    ).all()
    found: dict[str, list[str]] = {}
    for sha256, document_id in rows:
        found.setdefault(str(sha256), []).append(str(document_id))
    return found


def cancel_backend(connection: Connection, pid: int) -> None:
    """Ask PostgreSQL to stop the statement another connection is running (a cancelled search)."""
    connection.execute(text("SELECT pg_cancel_backend(:pid)"), {"pid": pid})

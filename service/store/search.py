"""Full-text search over chunks: FTS5 with bm25 on SQLite, tsvector with ts_rank on PostgreSQL."""

from __future__ import annotations

import re

import msgspec
from sqlalchemy import Connection, text
from sqlalchemy.exc import SQLAlchemyError

from service.errors import SearchError
from service.store.database import as_struct


class SearchHit(msgspec.Struct, frozen=True, kw_only=True):
    document_id: str
    filename: str
    title: str | None
    position: int
    score: float
    snippet: str


# FTS5 query syntax (quotes, NEAR, column filters, *) is not for users: search words, all of them.
_WORD = re.compile(r"\w+", re.UNICODE)

SNIPPET_START = "["
SNIPPET_END = "]"

_SQLITE = text(
    """
    SELECT c.document_id, d.filename, d.title, c.position,
           -bm25(chunks_fts) AS score,
           snippet(chunks_fts, 0, :start, :end, '…', 16) AS snippet
    FROM chunks_fts
    JOIN chunks c ON c.id = chunks_fts.rowid
    JOIN documents d ON d.id = c.document_id
    WHERE chunks_fts MATCH :query
    ORDER BY bm25(chunks_fts)
    LIMIT :limit
    """
)

_POSTGRES = text(
    """
    SELECT c.document_id, d.filename, d.title, c.position,
           ts_rank(c.search_vector, q) AS score,
           ts_headline('english', c.content, q,
                       'StartSel=' || :start || ', StopSel=' || :end
                       || ', MaxWords=24, MinWords=8, MaxFragments=1') AS snippet
    FROM chunks c
    JOIN documents d ON d.id = c.document_id,
         plainto_tsquery('english', :query) AS q
    WHERE c.search_vector @@ q
    ORDER BY score DESC, c.document_id, c.position
    LIMIT :limit
    """
)


def search(connection: Connection, query: str, limit: int = 10) -> list[SearchHit]:
    """Chunks that contain every word of `query`, best first, each with a highlighted snippet."""
    words = _WORD.findall(query)
    if not words:
        return []
    if connection.dialect.name == "sqlite":
        statement, terms = _SQLITE, " ".join(f'"{word}"' for word in words)
    else:
        statement, terms = _POSTGRES, " ".join(words)
    try:
        rows = connection.execute(
            statement,
            {"query": terms, "limit": limit, "start": SNIPPET_START, "end": SNIPPET_END},
        ).all()
    except SQLAlchemyError as exc:
        raise SearchError(f"search failed: {exc}") from exc
    return [as_struct(row, SearchHit) for row in rows]

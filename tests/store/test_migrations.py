"""The migrations build exactly the tables the code reads (store.schema), on both stores."""

from __future__ import annotations

from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import text

from service.store.database import Store
from service.store.schema import metadata

# The full-text index is dialect-specific and lives only in the migrations.
FULL_TEXT = ("chunks_fts", "search_vector", "ix_chunks_search_vector")


def _ours(obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any) -> bool:
    return not (name or "").startswith(FULL_TEXT) and name != "alembic_version"


# SQLite's reflection leaves expression indexes out (ix_documents_dated_at), and alembic skips
# them, both saying so; PostgreSQL compares it.
@pytest.mark.filterwarnings("ignore:Skipped unsupported reflection of expression-based index")
@pytest.mark.filterwarnings("ignore:autogenerate skipping metadata-specified expression-based")
def test_the_migrated_schema_is_the_schema_the_code_reads(store: Store) -> None:
    with store.engine.connect() as connection:
        context = MigrationContext.configure(
            connection, opts={"include_object": _ours, "compare_type": True}
        )
        differences = compare_metadata(context, metadata)

    assert differences == []


def test_the_expression_index_exists_on_both_stores(store: Store) -> None:
    with store.engine.connect() as connection:
        listing = (
            "SELECT name FROM sqlite_master WHERE type = 'index'"
            if connection.dialect.name == "sqlite"
            else "SELECT indexname FROM pg_indexes WHERE tablename = 'documents'"
        )
        names = set(connection.execute(text(listing)).scalars())

    assert "ix_documents_dated_at" in names


@pytest.mark.postgres
def test_on_postgresql_the_search_vector_stays_in_its_row(postgres_url: str) -> None:
    """Ranking reads every match's tsvector: from the row, not from the TOAST table."""
    store = Store(postgres_url)
    try:
        store.migrate()
        with store.engine.connect() as connection:
            storage = connection.execute(
                text(
                    "SELECT attstorage FROM pg_attribute "
                    "WHERE attrelid = 'chunks'::regclass AND attname = 'search_vector'"
                )
            ).scalar_one()
    finally:
        store.close()

    assert storage == "m"  # MAIN: compressed in the row, out of it only as a last resort

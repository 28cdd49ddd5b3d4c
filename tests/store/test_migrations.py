"""The migrations build exactly the tables the code reads (store.schema), on both stores."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from sqlalchemy import insert, text, update

from service.deadletters.consumer import store_batch
from service.store import dead_letters as letters
from service.store import migrations
from service.store.database import Store
from service.store.schema import dead_letters, metadata, redrives
from tests.store.test_dead_letters import message

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


def test_a_redrive_made_before_0010_keeps_what_its_claim_would_have_taken(store: Store) -> None:
    """0010 gives each pending item of a running job the stamp its letter had when the job was
    made, as far as the old comparison with the job's `created_at` can tell: a letter
    re-published before the job is still taken, one re-published after it is not."""
    now = datetime.now(UTC)
    stored = store.run(store_batch, [message(n, now) for n in range(3)])
    fresh, before, after = [record_id for record_id, _ in stored]
    made = now - timedelta(minutes=5)
    with store.engine.begin() as connection:
        config = Config()
        config.set_main_option("script_location", str(migrations.HERE))
        config.attributes["connection"] = connection
        command.downgrade(config, "0009")
        for letter_id, republished in ((before, made - timedelta(minutes=1)), (after, now)):
            connection.execute(
                update(dead_letters)
                .where(dead_letters.c.id == letter_id)
                .values(republished_at=republished, republish_count=1)
            )
        connection.execute(
            insert(redrives).values(
                id="job",
                filters={},
                rate=1.0,
                state="running",
                matched=3,
                published=0,
                failed=0,
                created_at=made,
                updated_at=made,
            )
        )
        for position, letter_id in enumerate((fresh, before, after)):
            connection.execute(
                text(
                    "INSERT INTO redrive_items (redrive_id, dead_letter_id, position, state)"
                    " VALUES ('job', :id, :position, 'pending')"
                ),
                {"id": letter_id, "position": position},
            )
        command.upgrade(config, "head")

    claimed = store.run(letters.claim_for_redrive, "job", [fresh, before, after], now)
    assert claimed == {fresh, before}

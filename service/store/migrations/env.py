"""Alembic's entry: migrations run on the connection `service.store.migrations.upgrade` hands in."""

from alembic import context

from service.store.schema import metadata

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()

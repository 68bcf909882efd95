"""Alembic environment: migrate the connection `Database.upgrade` hands over.

`Database.upgrade` builds the config in code and passes its open connection (in
`config.attributes["connection"]`, inside a transaction holding the migration
lock), so there is no `alembic.ini` and no URL here. Autogenerate, for writing a
new revision, works the same way from a short script:

    config = Config(); config.set_main_option("script_location", "accounts/migrations")
    with Database(url).engine.begin() as conn:
        config.attributes["connection"] = conn
        command.revision(config, "what changed", autogenerate=True)

This module must not: configure logging (the process that runs it owns logging).
"""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from accounts.models import Base

connection = context.config.attributes.get("connection")
if not isinstance(connection, Connection):
    raise RuntimeError("run the accounts migrations through accounts.db.Database.upgrade()")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",  # SQLite alters by copying
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()

"""Alembic migrations of the accounts database, run by `accounts.db.Database.upgrade`."""

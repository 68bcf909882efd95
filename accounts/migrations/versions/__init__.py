"""One module per schema revision, oldest first (Alembic finds them by `revision`)."""

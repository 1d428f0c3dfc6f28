"""Alembic migrations, configured from code by `app.store.db.alembic_config` (no alembic.ini)."""

"""Alembic migrations, configured from code by `app.db.alembic_config` (no alembic.ini)."""

"""Alembic revision scripts, applied in order by geo.core.db.migrate."""

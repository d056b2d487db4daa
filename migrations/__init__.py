"""Alembic migrations for the Makazi schema (shipped in the package; see geo.core.db)."""

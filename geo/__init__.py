"""Makazi's domain: tables, geometry rules, spatial SQL, GPX, import and export.

Nothing in this package imports FastAPI; the HTTP layer lives in ``app``.
"""

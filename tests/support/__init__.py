"""Test-only helpers: the bound test database, the live server and its launcher."""

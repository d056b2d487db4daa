"""Tests of the field app (/field)."""

"""Helpers for driving the pages in Chromium under their content security policy."""

from __future__ import annotations

import time
from typing import Any

__all__ = ["wait_until"]


def wait_until(page: Any, expression: str, timeout_ms: float = 30_000) -> Any:
    """Poll ``expression`` (a JS function or expression) until it is truthy; its value.

    Playwright's ``wait_for_function`` evaluates its predicate with ``eval`` inside the
    page, which the pages' policy (no ``unsafe-eval``) forbids; ``page.evaluate`` runs
    through the DevTools protocol instead, so the page keeps its real policy in tests.
    """
    deadline = time.monotonic() + timeout_ms / 1000
    while True:
        value = page.evaluate(expression)
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{expression} stayed false for {timeout_ms / 1000:g} s")
        time.sleep(0.05)

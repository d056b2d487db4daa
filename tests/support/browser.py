"""Helpers for driving the pages in Chromium under their content security policy."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

__all__ = ["CHROMIUM", "CHROMIUM_ARGS", "TAP_PX", "small_targets", "wait_until"]

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
"""Debian's Chromium, which Playwright drives (no browser is ever downloaded); None if absent."""
if CHROMIUM is None and Path("/usr/bin/chromium").exists():
    CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


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


TAP_PX = 44
"""Least width and height of what a thumb taps (WCAG 2.5.5; Apple's and Android's guides)."""


def small_targets(page: Any, selector: str) -> list[str]:
    """The visible elements matching ``selector`` narrower or lower than ``TAP_PX``, with sizes."""
    return list(
        page.evaluate(
            """([selector, least]) => Array.from(document.querySelectorAll(selector))
              .filter((e) => e.offsetParent !== null)
              .map((e) => [e.textContent.trim() || e.id || e.className, e.getBoundingClientRect()])
              .filter(([, r]) => r.width < least || r.height < least)
              .map(([name, r]) => `${name}: ${Math.round(r.width)}x${Math.round(r.height)}`)""",
            [selector, TAP_PX],
        )
    )

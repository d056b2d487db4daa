"""The ``makazi`` command line, one module per command group.

Each command prints what it did on stdout and, when it fails, exactly one
line on stderr and a non-zero exit status: no tracebacks for the person at the
terminal (set ``MAKAZI_LOG_LEVEL=debug`` to see them).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import NoReturn

from app.cli import analyse, atlas, db, demo, exports, imports, serve, tokens, traces

__all__ = ["main"]

log = logging.getLogger("makazi")


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one line on stderr, like every other failure."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="makazi", description="Makazi: mapping service for informal settlements.")
    sub = parser.add_subparsers(dest="command", required=True)
    for group in (serve, db, tokens, demo, exports, traces, analyse, imports, atlas):
        group.add_parsers(sub)
    return parser


def _one_line(exc: BaseException) -> str:
    from sqlalchemy.exc import OperationalError

    if isinstance(exc, OperationalError):
        detail = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        return f"cannot reach the database: {detail}"
    text = str(exc).strip().splitlines()
    return text[0] if text else exc.__class__.__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``makazi`` console script."""
    args = _parser().parse_args(argv)
    level = os.environ.get("MAKAZI_LOG_LEVEL", "info").upper()
    logging.basicConfig(level=getattr(logging, level, logging.INFO), format="%(message)s")
    if level != "DEBUG":
        # Libraries' chatter is not the command's output: httpx logs every request (which
        # breaks the progress bar of `trace upload`), pyogrio says "Created N records" and
        # warns about GDAL's field handling. MAKAZI_LOG_LEVEL=debug shows all of it.
        for name in ("alembic", "httpx", "httpcore", "pyogrio"):
            logging.getLogger(name).setLevel(logging.WARNING)
        warnings.filterwarnings("ignore", category=RuntimeWarning, module=r"pyogrio(\.|$)")
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if level == "DEBUG":
            log.exception("makazi failed")
        print(f"makazi: {_one_line(exc)}", file=sys.stderr)
        return 1

"""``makazi demo``: synthetic settlements into the database."""

from __future__ import annotations

import argparse
import time
from typing import Any

from app.cli.common import (
    load_settings,
    open_engine,
)

__all__ = ["add_parsers"]


def cmd_demo(args: argparse.Namespace) -> int:
    from geo.demo.generator import generate
    from geo.demo.loader import load

    settings = load_settings()
    started = time.monotonic()
    data = generate(args.structures, seed=args.seed)
    with open_engine(settings) as engine, engine.begin() as conn:
        counts = load(conn, data)
    took = time.monotonic() - started
    print(", ".join(f"{value} {key}" for key, value in counts.items()) + f" in {took:.1f} s")
    return 0


def add_parsers(sub: Any) -> None:
    """``demo``."""
    demo = sub.add_parser("demo", help="generate synthetic settlements into the database")
    demo.add_argument("--structures", type=int, default=20_000)
    demo.add_argument("--seed", type=int, default=7)
    demo.set_defaults(func=cmd_demo)

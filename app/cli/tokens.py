"""``makazi token …``: API tokens."""

from __future__ import annotations

import argparse
from typing import Any

from app.cli.common import (
    CommandError,
    load_settings,
    open_engine,
)

__all__ = ["add_parsers"]


def cmd_token(args: argparse.Namespace) -> int:
    from geo.core.auth import ROLES, create_token

    if args.role not in ROLES:
        raise CommandError(f"unknown role {args.role!r}; one of {', '.join(ROLES)}")
    with open_engine(load_settings()) as engine, engine.begin() as conn:
        token = create_token(conn, name=args.name, role=args.role)
    print(token)
    return 0


def add_parsers(sub: Any) -> None:
    """``token create``."""
    token = sub.add_parser("token", help="API tokens")
    token_sub = token.add_subparsers(dest="token_action", required=True)
    create = token_sub.add_parser("create", help="create a token and print it")
    create.add_argument("--name", required=True)
    create.add_argument("--role", required=True)
    create.set_defaults(func=cmd_token)

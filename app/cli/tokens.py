"""``makazi token create|list|revoke``: API tokens."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from typing import Any

from app.cli.common import CommandError, load_settings, open_engine

__all__ = ["add_parsers"]


def cmd_token(args: argparse.Namespace) -> int:
    from geo.core.auth import ROLES, create_token

    if args.role not in ROLES:
        raise CommandError(f"unknown role {args.role!r}; one of {', '.join(ROLES)}")
    with open_engine(load_settings()) as engine, engine.begin() as conn:
        token = create_token(
            conn, name=args.name, role=args.role, expires_in_days=args.expires_in_days
        )
    print(token)
    return 0


def _when(moment: datetime | None) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if moment is not None else "-"


def cmd_list(args: argparse.Namespace) -> int:
    from geo.core.auth import list_tokens

    with open_engine(load_settings()) as engine, engine.connect() as conn:
        tokens = list_tokens(conn)
    for info in tokens:
        fields = [info.created_at, info.last_used_at, info.revoked_at]
        if args.long:
            fields.append(info.expires_at)
        print("\t".join([info.name, info.role, *(_when(moment) for moment in fields)]))
    return 0


def cmd_revoke(args: argparse.Namespace) -> int:
    from geo.core.auth import revoke_token

    with open_engine(load_settings()) as engine, engine.begin() as conn:
        revoke_token(conn, name=args.name)
    print(f"revoked {args.name}; it stops working at once")
    return 0


def add_parsers(sub: Any) -> None:
    """``token create``, ``token list``, ``token revoke``."""
    token = sub.add_parser("token", help="API tokens")
    token_sub = token.add_subparsers(dest="token_action", required=True)
    create = token_sub.add_parser("create", help="create a token and print it (once)")
    create.add_argument("--name", required=True)
    create.add_argument("--role", required=True)
    create.add_argument(
        "--expires-in-days",
        type=float,
        metavar="DAYS",
        help="the token stops working this many days from now (default: never)",
    )
    create.set_defaults(func=cmd_token)
    listing = token_sub.add_parser(
        "list",
        help="one line per token: name, role, created, last used, revoked (tab-separated, UTC; "
        "- for none)",
    )
    listing.add_argument("-l", "--long", action="store_true", help="add when each token expires")
    listing.set_defaults(func=cmd_list)
    revoke = token_sub.add_parser("revoke", help="revoke the live token called NAME")
    revoke.add_argument("name", metavar="NAME")
    revoke.set_defaults(func=cmd_revoke)

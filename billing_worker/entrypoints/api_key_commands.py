"""``api-key create|revoke|list``: the keys the HTTP API accepts."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from billing_worker.config import Settings
from billing_worker.entrypoints.cli_support import (
    CommandFailed,
    command_database,
    configured_pricebook,
    table,
    write_json,
)

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


def add_api_key_commands(commands: Any) -> None:
    """Register ``api-key``."""
    api_key = commands.add_parser("api-key", help="create, revoke or list HTTP API keys")
    actions = api_key.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = actions.add_parser("create", help="make a key and print it once (it is stored hashed)")
    create.add_argument("name", help="what the key is for, e.g. chat-backend")
    create.add_argument(
        "--scope",
        required=True,
        choices=["read", "ingest", "write", "admin"],
        help="read: every GET; ingest: POST /v1/events; write: read, ingest and changes; "
        "admin: write and invoice status moves",
    )
    create.add_argument("--json", action="store_true", help="machine-readable output")
    revoke = actions.add_parser("revoke", help="revoke a key (API replicas stop taking it)")
    revoke.add_argument("name")
    listed = actions.add_parser("list", help="every key: name, scope, created, revoked")
    listed.add_argument("--json", action="store_true", help="machine-readable output")


async def run_api_key_command(args: argparse.Namespace, settings: Settings) -> int:
    """Dispatch ``api-key``; return the exit status."""
    import re  # noqa: PLC0415 - keep --help fast

    from billing_worker.adapters.postgres.api_keys import (  # noqa: PLC0415
        KeyNameTaken,
        PostgresApiKeys,
    )

    book = configured_pricebook(settings)
    out = sys.stdout
    writes = args.action != "list"
    async with command_database(settings, book, writes=writes) as engine:
        keys = PostgresApiKeys(engine)
        if args.action == "list":
            listed = await keys.listed()
            if args.json:
                write_json(out, {"keys": listed})
            else:
                table(
                    out,
                    ["name", "scope", "key id", "created", "revoked"],
                    [[k["name"], k["scope"], k["key_id"], k["created_at"], k["revoked_at"] or "-"]
                     for k in listed] or [["(none)", "", "", "", ""]],
                )  # fmt: skip
            return 0
        if args.action == "revoke":
            if not await keys.revoke(args.name, settings.clock()):
                raise CommandFailed(f"no live API key named {args.name!r}", 1)
            out.write(f"revoked {args.name}\n")
            return 0
        if not re.match(NAME_PATTERN, args.name):
            raise CommandFailed(f"a key name is 1-64 letters, digits, _ . - : not {args.name!r}")
        try:
            key = await keys.create(args.name, args.scope, settings.clock())
        except KeyNameTaken as exc:
            raise CommandFailed(str(exc), 1) from exc
        if args.json:
            write_json(out, {"name": args.name, "scope": args.scope, "key": key})
        else:
            out.write(f"{key}\n")
            sys.stderr.write(
                f"api key {args.name} ({args.scope}): shown once; store it as a secret\n"
            )
        return 0

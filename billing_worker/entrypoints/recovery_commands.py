"""Operator tools to recover: ``dlq`` (dead letters), ``verify`` and ``rebuild`` (the
projections against the append-only ledgers).

Exit status: 0 done (``verify``: no difference), 1 something is wrong (differences, a
replay not confirmed), 2 bad input or a server that can't be reached (the message names
the setting).
"""

from __future__ import annotations

import argparse
import re
from typing import Any

from billing_worker.config import Settings
from billing_worker.entrypoints.cli_support import fail

REASON_PATTERN = re.compile(r"^[a-z][a-z0-9_]*(:[a-z][a-z0-9_]*)?$")
BROKER_TIMEOUT_SECONDS = 10.0


def add_recovery_commands(commands: Any) -> None:
    """Register ``dlq``, ``verify`` and ``rebuild``."""
    dlq = commands.add_parser(
        "dlq", help="inspect dead letters by reason, replay them after a fix, or purge them"
    )
    actions = dlq.add_subparsers(dest="action", required=True, metavar="ACTION")
    helps = {
        "list": "count dead letters by reason and routing key, oldest and newest",
        "show": "the dead letters themselves: reason, detail, headers, body",
        "replay": "republish dead letters where they first went (the worker deduplicates)",
        "purge": "delete dead letters for good (needs --yes)",
    }
    for action, text in helps.items():
        sub = actions.add_parser(action, help=text)
        sub.add_argument(
            "--queue",
            default="usage",
            help="usage (default) or stripe, namespaced by BILLING_NAMESPACE like the "
            "worker's queues; or a full queue name, used as given (its .dlq is read)",
        )
        sub.add_argument("--reason", type=_reason, help="only dead letters with this reason")
        sub.add_argument("--json", action="store_true", help="machine-readable output")
        if action in ("show", "replay"):
            sub.add_argument("--limit", type=_positive, help="at most this many (from the head)")
        if action == "replay":
            sub.add_argument(
                "--dry-run", action="store_true", help="say what would be replayed; change nothing"
            )
        if action == "purge":
            sub.add_argument("--yes", action="store_true", help="really delete them")

    verify = commands.add_parser(
        "verify", help="recompute every projection from the ledgers; exit 1 on any difference"
    )
    verify.add_argument("--account", help="only this account")
    verify.add_argument("--json", action="store_true", help="machine-readable output")
    rebuild = commands.add_parser(
        "rebuild",
        help="repair projections from the ledgers, one locked transaction per account "
        "(safe while the worker runs); without --yes, only say what it would change",
    )
    rebuild.add_argument("--account", help="only this account")
    rebuild.add_argument("--yes", action="store_true", help="write the repairs")
    rebuild.add_argument("--json", action="store_true", help="machine-readable output")


def _reason(text: str) -> str:
    if not REASON_PATTERN.match(text):
        raise argparse.ArgumentTypeError(
            f"not a reason code: {text!r} (like unknown_event_type or broker:delivery_limit)"
        )
    return text


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


async def run_recovery_command(args: argparse.Namespace, settings: Settings) -> int:
    """Dispatch ``dlq``, ``verify`` or ``rebuild``; return the exit status."""
    if args.command == "dlq":
        return await _dlq(args, settings)
    from billing_worker.entrypoints.projection_commands import (  # noqa: PLC0415 - fast --help
        run_projection_command,
    )

    return await run_projection_command(args, settings)


async def _dlq(args: argparse.Namespace, settings: Settings) -> int:
    import aio_pika  # noqa: PLC0415 - keep --help fast

    from billing_worker.adapters.amqp.dlq import (  # noqa: PLC0415
        DeadLetterQueueMissing,
        resolve_source,
    )
    from billing_worker.adapters.amqp.frame_decoding import (  # noqa: PLC0415
        install_total_decoders,
    )
    from billing_worker.adapters.amqp.topology import Topology  # noqa: PLC0415
    from billing_worker.entrypoints.dlq_commands import (  # noqa: PLC0415
        UnknownReason,
        check_reason,
        run_dlq_command,
    )

    source = resolve_source(Topology(settings.namespace), args.queue)
    url = settings.amqp_url.get_secret_value()
    # dead letters are where undecodable headers end up: read them, don't choke on them
    install_total_decoders()
    try:
        connection = await aio_pika.connect(url, timeout=BROKER_TIMEOUT_SECONDS)
    except (OSError, TimeoutError, aio_pika.exceptions.AMQPError) as exc:
        return fail(f"cannot reach the broker (BILLING_AMQP_URL={redacted_amqp(url)}): {exc}")
    try:
        await check_reason(connection, source, args.reason)
        return await run_dlq_command(args, connection, source)
    except DeadLetterQueueMissing as exc:
        namespace = settings.namespace or "(none)"
        return fail(
            f"no dead-letter queue {exc} on the broker: check --queue {args.queue!r} and "
            f"BILLING_NAMESPACE (now {namespace})"
        )
    except UnknownReason as exc:
        return fail(str(exc))
    except (OSError, TimeoutError, aio_pika.exceptions.AMQPError) as exc:
        return fail(f"the broker connection failed (BILLING_AMQP_URL={redacted_amqp(url)}): {exc}")
    finally:
        await connection.close()


def redacted_amqp(url: str) -> str:
    """The broker URL with its password masked."""
    from yarl import URL  # noqa: PLC0415 - keep --help fast

    parsed = URL(url)
    return str(parsed.with_password("***")) if parsed.password else url

"""The ``billing-worker`` command: ``run`` the worker, ``migrate`` the database, relay Stripe
webhooks (``stripe-relay``)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Coroutine, Sequence
from typing import Any

import structlog

from billing_worker import __version__
from billing_worker.adapters.observability.logging import configure_logging
from billing_worker.config import ConfigError, Settings, load_settings
from billing_worker.domain.pricebook import PriceBook

log = structlog.get_logger(__name__)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser, one sub-command per job."""
    parser = argparse.ArgumentParser(
        prog="billing-worker",
        description="Usage metering and billing worker. Configured by BILLING_* variables.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser(
        "run", help="create and migrate the database, then consume until SIGTERM/SIGINT"
    )
    commands.add_parser("migrate", help="create the database if missing and apply migrations")
    commands.add_parser(
        "stripe-relay",
        help="serve POST /stripe/webhook and forward each Stripe delivery, unchanged, to "
        "RabbitMQ (BILLING_STRIPE_RELAY_HOST/PORT/MAX_BODY_BYTES); until SIGTERM/SIGINT",
    )
    from billing_worker.bench.command import add_arguments  # noqa: PLC0415

    bench = commands.add_parser(
        "bench",
        help="measure throughput against the raw broker ceiling, or latency, on scratch "
        "namespaces and databases of the configured servers",
    )
    add_arguments(bench)
    from billing_worker.chaos.command import add_arguments as add_chaos_arguments  # noqa: PLC0415

    chaos = commands.add_parser(
        "chaos",
        help="kill workers, restart private RabbitMQ and PostgreSQL servers, race replicas "
        "and duplicates under load, then check that nothing was lost or doubled",
    )
    add_chaos_arguments(chaos)
    from billing_worker.entrypoints.operator import add_operator_commands  # noqa: PLC0415

    add_operator_commands(commands)
    asyncapi = commands.add_parser(
        "asyncapi", help="print the AsyncAPI 3.0 document of every channel and message"
    )
    asyncapi.add_argument("--output", metavar="FILE", help="write it to FILE instead")
    from billing_worker.entrypoints.invoicing_commands import (  # noqa: PLC0415
        add_invoicing_commands,
    )

    add_invoicing_commands(commands)
    from billing_worker.entrypoints.demo import add_demo_command  # noqa: PLC0415

    add_demo_command(commands)
    from billing_worker.entrypoints.recovery_commands import (  # noqa: PLC0415
        add_recovery_commands,
    )

    add_recovery_commands(commands)
    return parser


def _run(settings: Settings) -> int:
    from billing_worker.entrypoints.worker import serve  # noqa: PLC0415 - keep --help fast

    book = load_configured_pricebook(settings)
    if book is None:
        return 2
    return _event_loop_run(serve(settings, book))


def _stripe_relay(settings: Settings) -> int:
    from billing_worker.entrypoints.stripe_relay import serve  # noqa: PLC0415 - keep --help fast

    return _event_loop_run(serve(settings))


def load_configured_pricebook(settings: Settings) -> PriceBook | None:
    """The price book BILLING_PRICEBOOK names (or the built-in one); None after saying why."""
    from billing_worker.adapters.pricebook_file import (  # noqa: PLC0415 - keep --help fast
        PriceBookError,
        load_pricebook,
    )

    try:
        return load_pricebook(settings.pricebook)
    except PriceBookError as exc:
        sys.stderr.write(f"billing-worker: invalid price book (BILLING_PRICEBOOK): {exc}\n")
        return None


def _event_loop_run(main: Coroutine[Any, Any, int]) -> int:
    """Run ``main`` on uvloop where it is installed, plain asyncio elsewhere."""
    try:
        import uvloop  # noqa: PLC0415 - optional speed-up
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


def _bench(args: argparse.Namespace, settings: Settings) -> int:
    from billing_worker.bench.command import run  # noqa: PLC0415 - keep --help fast

    return _event_loop_run(run(args, settings))


def _migrate(settings: Settings) -> int:
    from billing_worker.adapters.postgres.database import (  # noqa: PLC0415 - keep --help fast
        SchemaNotReady,
        prepare_database,
        redacted,
    )

    url = settings.database_url.get_secret_value()
    try:
        revision = prepare_database(url)
    except SchemaNotReady as exc:
        log.error("migrate_refused", database=redacted(url), error=str(exc))  # noqa: TRY400
        return 1
    log.info("migrate_done", database=redacted(url), revision=revision)
    return 0


def main(argv: Sequence[str] | None = None) -> int:  # noqa: PLR0911 - one exit per command
    """Parse, load settings (failing fast and clearly), dispatch."""
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings()
    except ConfigError as exc:
        sys.stderr.write(f"billing-worker: invalid configuration: {exc}\n")
        return 2
    # Commands that print a report keep their logs off stdout.
    logs_to = sys.stdout if args.command in ("run", "migrate", "stripe-relay") else sys.stderr
    configure_logging(settings.log_level, logs_to, secrets=settings.secret_values)
    if args.command == "run":
        return _run(settings)
    if args.command == "stripe-relay":
        return _stripe_relay(settings)
    if args.command == "bench":
        return _bench(args, settings)
    if args.command == "migrate":
        return _migrate(settings)
    if args.command == "chaos":
        from billing_worker.chaos.command import run as run_chaos  # noqa: PLC0415 - keep --help fast

        return _event_loop_run(run_chaos(args, settings))
    if args.command == "demo":
        from billing_worker.entrypoints.demo import run_demo  # noqa: PLC0415 - keep --help fast

        return _event_loop_run(run_demo(args, settings))
    if args.command == "asyncapi":
        from billing_worker.contract.asyncapi import write_document  # noqa: PLC0415

        return write_document(args.output)
    if args.command in ("dlq", "verify", "rebuild"):
        from billing_worker.entrypoints.recovery_commands import (  # noqa: PLC0415
            run_recovery_command,
        )

        return _event_loop_run(run_recovery_command(args, settings))
    from billing_worker.entrypoints.operator import run_operator_command  # noqa: PLC0415

    return _event_loop_run(run_operator_command(args, settings))

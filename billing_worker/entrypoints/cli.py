"""The ``billing-worker`` command: registers every sub-command and dispatches to it.

``run`` and ``migrate`` are the only commands that create or migrate the database; every
other one refuses a database that is missing or behind. Reports go to stdout, logs to
stderr (for ``run``, ``migrate`` and ``stripe-relay``, whose output is their log, stdout).
"""

# ruff: noqa: PLC0415 - each command's module is imported only when it runs (fast start-up)
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import structlog

from billing_worker import __version__
from billing_worker.adapters.observability.logging import configure_logging
from billing_worker.config import ConfigError, Settings, load_settings
from billing_worker.domain.errors import PermanentError
from billing_worker.entrypoints.cli_support import (
    CommandFailed,
    configured_pricebook,
    event_loop_run,
    fail,
)

log = structlog.get_logger(__name__)

LOGS_ON_STDOUT = ("run", "migrate", "stripe-relay", "api")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser, one sub-command per job."""
    from billing_worker.bench.command import add_arguments as add_bench
    from billing_worker.chaos.command import add_arguments as add_chaos
    from billing_worker.entrypoints.account_commands import add_account_commands
    from billing_worker.entrypoints.api_key_commands import add_api_key_commands
    from billing_worker.entrypoints.demo import add_demo_command
    from billing_worker.entrypoints.invoicing_commands import (
        add_invoicing_commands,
    )
    from billing_worker.entrypoints.pricebook_commands import (
        add_pricebook_commands,
    )
    from billing_worker.entrypoints.reconcile_commands import add_reconcile_commands
    from billing_worker.entrypoints.recovery_commands import (
        add_recovery_commands,
    )

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
    add_bench(
        commands.add_parser(
            "bench",
            help="measure throughput against the raw broker ceiling, or latency, on scratch "
            "namespaces and databases of the configured servers",
        )
    )
    add_chaos(
        commands.add_parser(
            "chaos",
            help="kill workers, restart private RabbitMQ and PostgreSQL servers, race "
            "replicas and duplicates under load, then check that nothing was lost or doubled",
        )
    )
    add_pricebook_commands(commands)
    add_account_commands(commands)
    asyncapi = commands.add_parser(
        "asyncapi", help="print the AsyncAPI 3.0 document of every channel and message"
    )
    asyncapi.add_argument("--output", metavar="FILE", help="write it to FILE instead")
    add_invoicing_commands(commands)
    add_demo_command(commands)
    add_recovery_commands(commands)
    add_reconcile_commands(commands)
    add_api_key_commands(commands)
    commands.add_parser(
        "api",
        help="serve the HTTP API on BILLING_API_HOST/PORT (reads, quota check, estimates, "
        "ingest, writes); until SIGTERM/SIGINT",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse, load settings (failing fast and clearly), dispatch."""
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings()
    except ConfigError as exc:
        sys.stderr.write(f"billing-worker: invalid configuration: {exc}\n")
        return 2
    logs_to = sys.stdout if args.command in LOGS_ON_STDOUT else sys.stderr
    configure_logging(settings.log_level, logs_to, secrets=settings.secret_values)
    if settings.clock_offset_seconds and args.command in LOGS_ON_STDOUT:
        # the services say so at start; a report command's stderr stays quiet
        log.warning(
            "clock_shifted",
            offset_seconds=settings.clock_offset_seconds,
            now=settings.clock().isoformat(),
            hint="BILLING_CLOCK_OFFSET_SECONDS is for tests and rehearsals",
        )
    try:
        return dispatch(args, settings)
    except CommandFailed as exc:
        return fail(str(exc), exc.code)
    except PermanentError as exc:  # refused input: an unknown plan, a grant that can't be
        return fail(exc.detail, 1)


def dispatch(args: argparse.Namespace, settings: Settings) -> int:  # noqa: PLR0911, PLR0912 - one per command
    """Run the command ``args`` names; return its exit status."""
    command = args.command
    if command == "run":
        from billing_worker.entrypoints.worker_process import serve

        return event_loop_run(serve(settings, configured_pricebook(settings)))
    if command == "migrate":
        return _migrate(settings)
    if command == "stripe-relay":
        from billing_worker.entrypoints.stripe_relay import serve as serve_relay

        return event_loop_run(serve_relay(settings))
    if command == "bench":
        from billing_worker.bench.command import run as run_bench

        return event_loop_run(run_bench(args, settings))
    if command == "chaos":
        from billing_worker.chaos.command import run as run_chaos

        return event_loop_run(run_chaos(args, settings))
    if command == "demo":
        from billing_worker.entrypoints.demo import run_demo

        return event_loop_run(run_demo(args, settings))
    if command == "asyncapi":
        from billing_worker.contract.asyncapi import write_document

        return write_document(args.output)
    if command == "pricebook":
        from billing_worker.entrypoints.pricebook_commands import check_pricebook

        return check_pricebook(args.file, as_json=args.json, out=sys.stdout)
    if command in ("account", "credits"):
        from billing_worker.entrypoints.account_commands import run_account_command

        return event_loop_run(run_account_command(args, settings))
    if command == "api":
        from billing_worker.api.server import serve as serve_api

        return event_loop_run(serve_api(settings, configured_pricebook(settings)))
    if command == "api-key":
        from billing_worker.entrypoints.api_key_commands import run_api_key_command

        return event_loop_run(run_api_key_command(args, settings))
    if command == "reconcile":
        from billing_worker.entrypoints.reconcile_commands import run_reconcile_command

        return event_loop_run(run_reconcile_command(args, settings))
    if command in ("close-periods", "invoice", "report"):
        from billing_worker.entrypoints.invoicing_commands import run_invoicing_command

        return event_loop_run(run_invoicing_command(args, settings))
    from billing_worker.entrypoints.recovery_commands import run_recovery_command

    return event_loop_run(run_recovery_command(args, settings))


def _migrate(settings: Settings) -> int:
    from billing_worker.adapters.postgres.database import (
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

"""The ``chaos`` sub-command: run fault scenarios at full size and print what held."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from sqlalchemy import make_url, text
from sqlalchemy.ext.asyncio import create_async_engine

from billing_worker.chaos.invariants import ProjectionChecks
from billing_worker.chaos.process import ScenarioFailed
from billing_worker.chaos.runs import ChaosOptions, Environment, ScenarioReport
from billing_worker.chaos.scenarios import SCENARIOS, run_scenario
from billing_worker.chaos.servers import ServerUnavailable
from billing_worker.config import Settings

DEFAULTS = ChaosOptions()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The chaos options (defaults: the full size)."""
    parser.add_argument(
        "--scenario",
        action="append",
        choices=list(SCENARIOS),
        help="run only this scenario (repeat for several; default: all of them, in order)",
    )
    sizes = {
        "events": "distinct usage events per scenario",
        "accounts": "accounts the events are spread over",
        "hot_accounts": "accounts that take most of the traffic",
        "kills": "kills: SIGKILLs of the worker",
        "broker_restarts": "broker-restart: RabbitMQ restarts",
        "database_restarts": "database-restart: PostgreSQL restarts",
        "backend_kills": "database-restart: rounds of pg_terminate_backend mid-transaction",
        "sigterms": "sigterm: SIGTERMs under load",
        "relay_kills": "relay-crash: SIGKILLs between the relay's confirm and its mark",
        "replicas": "replicas and storm: worker processes on the same queue",
    }
    for name, what in sizes.items():
        flag = "--" + name.replace("_", "-")
        default = getattr(DEFAULTS, name)
        parser.add_argument(flag, type=int, default=default, help=f"{what} ({default})")
    parser.add_argument(
        "--rate",
        type=float,
        default=DEFAULTS.rate,
        help=f"publish rate (events/s) during server restarts ({DEFAULTS.rate:g})",
    )
    parser.add_argument("--batch-size", type=int, help="worker BILLING_BATCH_SIZE")
    parser.add_argument("--seed", type=int, default=DEFAULTS.seed, help="workload and fault seed")
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULTS.timeout,
        help=f"longest wait for any one step before a scenario fails ({DEFAULTS.timeout:g}s)",
    )
    parser.add_argument("--logs", type=Path, help="directory for worker logs (default: a new one)")
    parser.add_argument("--json", action="store_true", help="print one JSON document")


def options_from(args: argparse.Namespace) -> ChaosOptions:
    """Scenario sizes from the parsed arguments."""
    return ChaosOptions(
        events=args.events,
        accounts=args.accounts,
        hot_accounts=args.hot_accounts,
        kills=args.kills,
        broker_restarts=args.broker_restarts,
        database_restarts=args.database_restarts,
        backend_kills=args.backend_kills,
        sigterms=args.sigterms,
        relay_kills=args.relay_kills,
        replicas=args.replicas,
        rate=args.rate,
        batch_size=args.batch_size,
        seed=args.seed,
        timeout=args.timeout,
    )


async def run(args: argparse.Namespace, settings: Settings) -> int:
    """Run the chosen scenarios one after another; print the report; 0 if all held."""
    opts = options_from(args)
    logs = args.logs or Path(tempfile.mkdtemp(prefix="billing-chaos-"))
    logs.mkdir(parents=True, exist_ok=True)
    database = make_url(settings.database_url.get_secret_value()).set(database="postgres")
    env = Environment(
        amqp_url=settings.amqp_url.get_secret_value(),
        server_url=database.render_as_string(hide_password=False),
        logs=logs,
        projections=package_projection_checks(),
    )
    started = time.monotonic()
    reports = []
    for name in args.scenario or list(SCENARIOS):
        try:
            reports.append(await run_scenario(name, opts, env))
        except (ScenarioFailed, ServerUnavailable, OSError) as exc:
            reports.append(ScenarioReport(scenario=name, error=f"{type(exc).__name__}: {exc}"))
    document = {
        "options": asdict(opts),
        "worker_logs": str(logs),
        "seconds": round(time.monotonic() - started, 1),
        "ok": all(r.ok for r in reports),
        "scenarios": [r.as_dict() for r in reports],
    }
    sys.stdout.write(json.dumps(document, indent=2) + "\n" if args.json else render(document))
    return 0 if document["ok"] else 1


def package_projection_checks() -> ProjectionChecks:
    """The projection folds of ``adapters/postgres/projections.py``, read in one snapshot."""
    from billing_worker.adapters.postgres.projections import (  # noqa: PLC0415 - keep --help fast
        CREDIT_GRANTS,
        UNIQUE_VALUES,
        USAGE_AGGREGATES,
        find_differences,
        load_meter_terms,
    )

    async def differing(database_url: str) -> set[str]:
        engine = create_async_engine(database_url, pool_size=1)
        try:
            async with engine.connect() as raw:
                conn = await raw.execution_options(isolation_level="REPEATABLE READ")
                async with conn.begin():
                    await conn.execute(text("SET TRANSACTION READ ONLY"))
                    found = await find_differences(conn, await load_meter_terms(conn, None))
        finally:
            await engine.dispose()
        return {d.projection for d in found}

    async def aggregates(database_url: str) -> bool:
        return not await differing(database_url) & {USAGE_AGGREGATES, UNIQUE_VALUES}

    async def balances(database_url: str) -> bool:
        return CREDIT_GRANTS not in await differing(database_url)

    return ProjectionChecks(aggregates, balances)


def render(document: dict[str, Any]) -> str:
    """The report as text: one block per scenario, failed checks spelled out."""
    o = document["options"]
    lines = [
        f"chaos: {o['events']:,} events per scenario over {o['accounts']} accounts "
        f"({o['hot_accounts']} hot), seed {o['seed']}; worker logs in {document['worker_logs']}",
    ]
    for r in document["scenarios"]:
        lines.append("")
        lines.extend(_scenario_lines(r))
    passed = sum(1 for r in document["scenarios"] if r["ok"])
    lines += [
        "",
        f"{passed} of {len(document['scenarios'])} scenarios held every invariant "
        f"({document['seconds']:.0f} s)",
    ]
    return "\n".join(lines) + "\n"


def _scenario_lines(r: dict[str, Any]) -> list[str]:
    checks = r["checks"]
    held = sum(1 for c in checks if c["ok"])
    verdict = "ok" if r["ok"] else "FAILED"
    head = f"{r['scenario']:<17} {verdict:<7} {held}/{len(checks)} checks held"
    if r["error"]:
        return [head, f"  stopped: {r['error']}"]
    c, out, rec = r["counted"], r["outgoing"], r["recovery_seconds"]
    lines = [
        f"{head}, {r['run_seconds']:.1f} s",
        f"  published {r['published']:,} deliveries: {r['distinct_events']:,} distinct events, "
        f"{r['resends']:,} resends, {r['invalid']:,} invalid",
        f"  ledger: {r['recorded']:,} events recorded",
        f"  worker counters ({_processes(c['incarnations'])}): received {c['received']:,} = "
        f"recorded {c['recorded']:,} + duplicate {c['duplicate']:,} + rejected {c['rejected']:,}",
    ]
    if r["kills"] or r["restarts"]:
        lines.append(
            f"  faults: {r['kills']} kills, {r['restarts']} restarts"
            + (
                f"; recovery median {rec['median']:.2f} s, max {rec['max']:.2f} s"
                if rec["median"] is not None
                else ""
            )
        )
    lines += [
        f"  settled {r['drain_seconds']:.2f} s after the last publish and the last fault",
        f"  billing events: {out['distinct']:,} distinct, {out['deliveries']:,} delivered "
        f"({out['repeats']:,} repeats, {out['outbox_repeats']:,} of them from the outbox); "
        f"{out['dead_letters']:,} dead letters",
    ]
    for name, value in r["figures"].items():
        label = name.replace("_", " ")
        if isinstance(value, list) and value and isinstance(value[0], dict):
            lines += [f"  {label} {i}: {_pairs(row)}" for i, row in enumerate(value, start=1)]
        else:
            lines.append(f"  {label}: {value}")
    lines += [f"  check {x['name']} FAILED: {x['detail']}" for x in checks if not x["ok"]]
    return lines


def _processes(count: int) -> str:
    return f"{count} process" if count == 1 else f"{count} processes"


def _pairs(row: dict[str, Any]) -> str:
    return ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in row.items())

"""The ``bench`` sub-command: options, the three modes, and the report (text or JSON)."""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

from billing_worker.adapters.clock import SystemClock
from billing_worker.bench.ceiling import measure_ceiling
from billing_worker.bench.latency import measure_latency
from billing_worker.bench.ledger_growth import preload_ledger
from billing_worker.bench.quota_check import measure_quota_check
from billing_worker.bench.scratch import scratch
from billing_worker.bench.throughput import WorkerRun, measure_worker
from billing_worker.bench.workload import build_workload
from billing_worker.config import Settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The bench options."""
    parser.add_argument(
        "--mode",
        choices=["throughput", "latency", "quota-check", "ledger-growth", "api"],
        default="throughput",
        help="throughput vs the raw ceiling (default); steady-rate latency; quota-check "
        "round trips under a usage load; or throughput before and after preloading a "
        "large ledger (takes minutes); or the HTTP API: usage reads at --check-rate "
        "over --preload-rows ledger rows (default none in this mode's first run) and "
        "ingest of --events through one API process",
    )
    parser.add_argument("--events", type=int, default=50_000, help="deliveries per run")
    parser.add_argument("--accounts", type=int, default=1_000, help="distinct accounts")
    parser.add_argument(
        "--duplicates", type=float, default=0.05, help="share of deliveries that are resends"
    )
    parser.add_argument("--runs", type=int, default=3, help="runs; medians are reported")
    parser.add_argument("--batch-size", type=int, help="worker BILLING_BATCH_SIZE")
    parser.add_argument("--batch-max-wait-ms", type=int, help="worker BILLING_BATCH_MAX_WAIT_MS")
    parser.add_argument("--prefetch", type=int, help="worker BILLING_PREFETCH")
    parser.add_argument("--batches-in-flight", type=int, help="worker BILLING_BATCHES_IN_FLIGHT")
    parser.add_argument(
        "--rate", type=float, default=1_000, help="latency and quota-check modes: usage events/s"
    )
    parser.add_argument("--check-rate", type=float, default=200, help="quota-check mode: checks/s")
    parser.add_argument(
        "--duration", type=float, default=30, help="latency and quota-check modes: seconds"
    )
    parser.add_argument(
        "--preload-rows", type=int, default=10_000_000, help="ledger-growth mode: rows"
    )
    parser.add_argument(
        "--api-preload-rows", type=int, default=0, help="api mode: ledger rows before reading"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document")


def worker_settings(args: argparse.Namespace, defaults: Settings) -> dict[str, str]:
    """BILLING_* overrides for the worker process."""
    batch = args.batch_size or defaults.batch_size
    overrides = {"BILLING_BATCH_SIZE": str(batch)}
    if args.batch_max_wait_ms is not None:
        overrides["BILLING_BATCH_MAX_WAIT_MS"] = str(args.batch_max_wait_ms)
    if args.prefetch is not None:
        overrides["BILLING_PREFETCH"] = str(args.prefetch)
    if args.batches_in_flight is not None:
        overrides["BILLING_BATCHES_IN_FLIGHT"] = str(args.batches_in_flight)
    return overrides


async def run(args: argparse.Namespace, settings: Settings) -> int:
    """Run the chosen mode and print its report."""
    amqp = settings.amqp_url.get_secret_value()
    database = settings.database_url.get_secret_value()
    logs = Path(tempfile.mkdtemp(prefix="billing-bench-"))
    overrides = worker_settings(args, settings)
    batch = int(overrides["BILLING_BATCH_SIZE"])
    in_flight = args.batches_in_flight or settings.batches_in_flight
    prefetch = args.prefetch or settings.prefetch or (in_flight + 1) * batch
    header: dict[str, Any] = {
        "mode": args.mode,
        "date": SystemClock.from_environment()().isoformat(timespec="seconds"),
        "worker_settings": overrides,
        "prefetch": prefetch,
        "worker_logs": str(logs),
    }
    if args.mode == "quota-check":
        runs = []
        for i in range(args.runs):
            async with scratch(amqp, database, "quota") as place:
                checked = await measure_quota_check(
                    place,
                    check_rate=args.check_rate,
                    usage_rate=args.rate,
                    duration=args.duration,
                    settings=overrides,
                    log_path=logs / f"quota-{i}.log",
                )
            runs.append(asdict(checked))
        report = {**header, "runs": runs, "median": _medians(runs)}
        _print(report, args.json, _quota_text)
        return 0
    if args.mode == "api":
        from billing_worker.bench.api import measure_api  # noqa: PLC0415 - this mode only

        runs = []
        for i in range(args.runs):
            async with scratch(amqp, database, "api") as place:
                measured = await measure_api(
                    place,
                    rate=args.check_rate,
                    duration=args.duration,
                    events=args.events,
                    preload_rows=args.api_preload_rows,
                    log_path=logs / f"api-{i}.log",
                )
            runs.append(asdict(measured))
        report = {**header, "runs": runs, "median": _medians(runs)}
        _print(report, args.json, _api_text)
        return 0
    if args.mode == "latency":
        runs = []
        for i in range(args.runs):
            async with scratch(amqp, database, "lat") as place:
                result = await measure_latency(
                    place,
                    rate=args.rate,
                    duration=args.duration,
                    settings=overrides,
                    log_path=logs / f"latency-{i}.log",
                )
            runs.append(asdict(result))
        report = {**header, "runs": runs, "median": _medians(runs)}
        _print(report, args.json, _latency_text)
        return 0

    workload = build_workload(args.events, args.accounts, args.duplicates)
    header.update(
        {"events": workload.total, "distinct": workload.unique, "accounts": args.accounts}
    )
    if args.mode == "ledger-growth":
        report = {**header, **await _ledger_growth(args, amqp, database, overrides, logs)}
        _print(report, args.json, _growth_text)
        return 0

    runs = []
    ack_every = max(1, min(batch, prefetch // 2))
    for i in range(args.runs):
        ceilings = []
        for raw in (False, True):
            async with scratch(amqp, database, "ceil") as place:
                ceilings.append(
                    await measure_ceiling(
                        place, workload.bodies, prefetch=prefetch, ack_every=ack_every, raw=raw
                    )
                )
        async with scratch(amqp, database, "work") as place:
            worker = await measure_worker(place, workload, overrides, logs / f"worker-{i}.log")
        runs.append(_throughput_row(ceilings[0], ceilings[1], worker))
    report = {**header, "runs": runs, "median": _medians(runs)}
    _print(report, args.json, _throughput_text)
    return 0


async def _ledger_growth(
    args: argparse.Namespace, amqp: str, database: str, overrides: dict[str, str], logs: Path
) -> dict[str, Any]:
    async with scratch(amqp, database, "grow") as place:
        empty = []
        for i in range(args.runs):
            workload = build_workload(
                args.events, args.accounts, args.duplicates, seed=100 + i, source=f"empty-{i}"
            )
            run = await measure_worker(place, workload, overrides, logs / f"empty-{i}.log")
            empty.append(run.events_per_second)
        await asyncio.to_thread(preload_ledger, place, args.preload_rows)
        full = []
        for i in range(args.runs):
            workload = build_workload(
                args.events, args.accounts, args.duplicates, seed=200 + i, source=f"full-{i}"
            )
            run = await measure_worker(place, workload, overrides, logs / f"full-{i}.log")
            full.append(run.events_per_second)
    before, after = statistics.median(empty), statistics.median(full)
    return {
        "preload_rows": args.preload_rows,
        "empty_events_per_second": empty,
        "preloaded_events_per_second": full,
        "median": {"empty": before, "preloaded": after, "change": after / before - 1},
    }


def _throughput_row(ceiling: float, raw_ceiling: float, worker: WorkerRun) -> dict[str, Any]:
    return {
        "ceiling_events_per_second": ceiling,
        "raw_ceiling_events_per_second": raw_ceiling,
        "worker_events_per_second": worker.events_per_second,
        "ratio": worker.events_per_second / ceiling,
        "ratio_to_raw": worker.events_per_second / raw_ceiling,
        "worker_seconds": worker.seconds,
        "worker_peak_rss_mb": worker.peak_rss_mb,
        "batches": worker.batches.batches,
        "batch_size_mean": worker.batches.mean,
        "batch_size_median_bucket": worker.batches.median_bound,
        "batch_size_p95_bucket": worker.batches.p95_bound,
        "ledger_rows": worker.ledger_rows,
    }


def _medians(runs: list[dict[str, Any]]) -> dict[str, float]:
    return {
        key: statistics.median(float(r[key]) for r in runs)
        for key, value in runs[0].items()
        if isinstance(value, int | float)
    }


def _print(report: dict[str, Any], as_json: bool, text: Any) -> None:
    sys.stdout.write(json.dumps(report, indent=2) + "\n" if as_json else text(report))


def _per_run(r: dict[str, Any], header: list[str], row_text: Any) -> str:
    """``header`` lines, then one line per run and one for the medians."""
    lines = list(header)
    for i, row in enumerate([*r["runs"], r["median"]], start=1):
        label = str(i) if i <= len(r["runs"]) else "med"
        lines.append(f"{label:>4} {row_text(row)}")
    return "\n".join(lines) + "\n"


def _percentiles(row: dict[str, Any]) -> str:
    return (
        f"p50 {row['p50_ms']:.1f} ms  p95 {row['p95_ms']:.1f} ms  "
        f"p99 {row['p99_ms']:.1f} ms  max {row['max_ms']:.1f} ms"
    )


def _throughput_text(r: dict[str, Any]) -> str:
    header = [
        f"throughput: {r['events']} deliveries ({r['distinct']} distinct) over "
        f"{r['accounts']} accounts; worker {r['worker_settings']}, prefetch {r['prefetch']}",
        "ceiling: no-op aio-pika consumer; raw: no-op consumer on aiormq (the worker's path)",
        f"{'run':>4} {'ceiling/s':>10} {'raw/s':>8} {'worker/s':>9} {'ratio':>6} "
        f"{'vs raw':>7} {'RSS MB':>7} {'batches':>8} {'mean batch':>10}",
    ]
    return _per_run(
        r,
        header,
        lambda row: (
            f"{row['ceiling_events_per_second']:>10.0f} "
            f"{row['raw_ceiling_events_per_second']:>8.0f} "
            f"{row['worker_events_per_second']:>9.0f} {row['ratio']:>6.2f} "
            f"{row['ratio_to_raw']:>7.2f} "
            f"{row['worker_peak_rss_mb']:>7.0f} {row['batches']:>8.0f} "
            f"{row['batch_size_mean']:>10.1f}"
        ),
    )


def _latency_text(r: dict[str, Any]) -> str:
    return _per_run(
        r,
        [f"latency (publish to commit), worker {r['worker_settings']}"],
        lambda row: (
            f"rate {row['rate']:.0f}/s  n={row['events']:.0f}  {_percentiles(row)}  "
            f"RSS {row['peak_rss_mb']:.0f} MB"
        ),
    )


def _quota_text(r: dict[str, Any]) -> str:
    return _per_run(
        r,
        [f"quota check (request to reply, direct reply-to), worker {r['worker_settings']}"],
        lambda row: (
            f"{row['check_rate']:.0f} checks/s under {row['usage_rate']:.0f} usage events/s  "
            f"n={row['checks']:.0f}  errors={row['errors']:.0f}  {_percentiles(row)}"
        ),
    )


def _growth_text(r: dict[str, Any]) -> str:
    m = r["median"]
    return (
        f"ledger growth: {r['events']} deliveries per run, {r['preload_rows']} rows preloaded\n"
        f"  empty ledger:     {m['empty']:.0f} events/s  (runs: "
        f"{', '.join(f'{x:.0f}' for x in r['empty_events_per_second'])})\n"
        f"  preloaded ledger: {m['preloaded']:.0f} events/s  (runs: "
        f"{', '.join(f'{x:.0f}' for x in r['preloaded_events_per_second'])})\n"
        f"  change: {m['change'] * 100:+.1f}%\n"
    )


def _api_text(r: dict[str, Any]) -> str:
    return _per_run(
        r,
        ["HTTP API: GET /v1/accounts/{a}/usage at a steady rate, then POST /v1/events"],
        lambda row: (
            f"{row['read_rate']:.0f} reads/s over {row['preload_rows']:.0f} ledger rows  "
            f"n={row['reads']:.0f}  errors={row['read_errors']:.0f}  p50={row['read_p50_ms']:.1f} "
            f"p99={row['read_p99_ms']:.1f} max={row['read_max_ms']:.1f} ms; ingest "
            f"{row['ingest_events_per_second']:.0f} events/s"
        ),
    )

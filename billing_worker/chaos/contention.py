"""Scenarios of contention: replicas sharing the queue and a few hot accounts, and a storm
of every event published three times at once."""

from __future__ import annotations

import asyncio
import json

from billing_worker.chaos.counting import Counting
from billing_worker.chaos.process import ChaosWorker
from billing_worker.chaos.runs import ChaosOptions, Environment, ScenarioReport, finish, new_report
from billing_worker.chaos.workload import Workload, build_workload

HOT_SHARE = 0.8
STORM_COPIES = 3


async def hot_replicas(opts: ChaosOptions, env: Environment) -> ScenarioReport:
    """Replicas on the same queue, most traffic on a few hot accounts: no deadlock surfaces
    (none even retried), no error is logged, every total is right."""
    workload = build_workload(opts.shape(hot_share=HOT_SHARE))
    return await _replicated("replicas", workload, opts, env)


async def duplicate_storm(opts: ChaosOptions, env: Environment) -> ScenarioReport:
    """Every delivery published three times, the copies interleaved within a couple of
    thousand deliveries (same batch, next batches, the other replica): one effect each."""
    shape = opts.shape(copies=STORM_COPIES, duplicate_ratio=0, spread=2 * (opts.batch_size or 500))
    workload = build_workload(shape)
    return await _replicated("storm", workload, opts, env)


async def _replicated(
    label: str, workload: Workload, opts: ChaosOptions, env: Environment
) -> ScenarioReport:
    report = new_report(label, workload)
    async with env.stage(label, len(workload.events), opts.timeout) as stage:
        # One first: RabbitMQ 3.10 can fail a consume on a quorum queue that another
        # connection is declaring that very moment (that worker exits 1, to be restarted).
        workers = [stage.spawn("replica-0", opts.worker_settings())]
        await workers[0].wait_ready()
        workers += [
            stage.spawn(f"replica-{i}", opts.worker_settings()) for i in range(1, opts.replicas)
        ]
        await asyncio.gather(*(w.wait_ready() for w in workers))
        await stage.publish(workload.deliveries)
        await finish(
            stage,
            workload,
            report,
            live=workers,
            counting=Counting.EXACT,
            projections=env.projections,
        )
    shares = [w.incarnation.last.received for w in workers]
    report.figures["received_per_replica"] = shares
    report.expect(
        "replicas_all_took_work",
        all(shares),
        f"deliveries settled per replica: {shares}",
    )
    deadlocks, errors = _troubles(workers)
    report.figures["deadlock_log_lines"] = len(deadlocks)
    report.expect(
        "no_deadlocks_or_errors_logged",
        not deadlocks and not errors,
        f"{len(deadlocks)} log lines mention a deadlock, {len(errors)} are errors"
        + (f"; first: {(deadlocks or errors)[0][:300]}" if deadlocks or errors else ""),
    )
    return report


def _troubles(workers: list[ChaosWorker]) -> tuple[list[str], list[str]]:
    """Log lines that mention a deadlock, and lines logged at error level or above."""
    deadlocks, errors = [], []
    for worker in workers:
        for record in worker.log_records():
            line = json.dumps(record)
            if "deadlock" in line.lower():
                deadlocks.append(line)
            if record.get("level") in ("error", "critical") or "raw" in record:
                errors.append(line)
    return deadlocks, errors

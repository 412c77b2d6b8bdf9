"""Scenarios that take a server away mid-run: RabbitMQ stopped and started, PostgreSQL
restarted and its connections killed mid-batch. Each uses a private server of its own."""

from __future__ import annotations

import asyncio
import random
import time

from billing_worker.chaos.counting import Counting
from billing_worker.chaos.harness import Stage
from billing_worker.chaos.process import ChaosWorker
from billing_worker.chaos.runs import (
    ChaosOptions,
    Environment,
    ScenarioReport,
    finish,
    new_report,
    under_load,
)
from billing_worker.chaos.servers import PrivatePostgres, PrivateRabbitMQ
from billing_worker.chaos.workload import build_workload

MID_BATCH_SECONDS = 30.0
KILL_MID_TRANSACTION = """
    SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity
    WHERE datname = current_database() AND pid <> pg_backend_pid()
      AND backend_type = 'client backend' AND xact_start IS NOT NULL
      AND query NOT LIKE 'SELECT 1%%'
"""


async def broker_restarts(opts: ChaosOptions, env: Environment) -> ScenarioReport:
    """RabbitMQ stopped and started mid-run: the worker notices (``/readyz`` 503), reconnects
    by itself (``/readyz`` 200 again, same process) and loses or doubles nothing."""
    workload = build_workload(opts.shape())
    report = new_report("broker-restart", workload)
    rabbit = PrivateRabbitMQ()
    try:
        await asyncio.to_thread(rabbit.start)
        async with env.stage(
            "broker", len(workload.events), opts.timeout, amqp_url=rabbit.amqp_url
        ) as stage:
            worker = stage.spawn("0", opts.worker_settings())
            await worker.wait_ready()
            faults = _restart_broker(stage, rabbit, worker, opts, report)
            await under_load(stage, workload.deliveries, faults, opts.rate)
            await finish(
                stage,
                workload,
                report,
                live=[worker],
                counting=Counting.COMPLETE,
                projections=env.projections,
            )
            survived = _survived(stage, worker)
    finally:
        await asyncio.to_thread(rabbit.close)
    downs = report.figures["readyz_503_seconds_after_the_stop"]
    report.expect(
        "broker_readyz_503_then_200",
        len(downs) == len(report.recovery_seconds) == opts.broker_restarts,
        f"{len(downs)} times 503 while the broker was down, {len(report.recovery_seconds)} "
        f"times 200 and recording again after it came back, of {opts.broker_restarts} restarts",
    )
    _expect_survival(report, survived)
    return report


async def _restart_broker(
    stage: Stage,
    rabbit: PrivateRabbitMQ,
    worker: ChaosWorker,
    opts: ChaosOptions,
    report: ScenarioReport,
) -> None:
    """At evenly spaced points of the run: stop the node, see ``/readyz`` say 503, start it,
    see 200 and recording resume."""
    downs, outages = [], []
    for i in range(opts.broker_restarts):
        await stage.until_recorded(stage.total * (i + 1) / (opts.broker_restarts + 1))
        stopping = time.monotonic()
        await asyncio.to_thread(rabbit.stop)
        downs.append(round(await worker.wait_readyz(503), 3))
        before = await stage.recorded()  # nothing new arrives until it is back
        await asyncio.to_thread(rabbit.start)
        back = time.monotonic()
        report.restarts += 1
        await worker.wait_readyz(200)
        await _progress_after(stage, before)
        report.recovery_seconds.append(time.monotonic() - back)
        outages.append(round(time.monotonic() - stopping, 2))
    report.figures["readyz_503_seconds_after_the_stop"] = downs
    report.figures["outage_seconds"] = outages


async def database_restarts(opts: ChaosOptions, env: Environment) -> ScenarioReport:
    """PostgreSQL restarted mid-run (fast and immediate shutdowns in turn) and the worker's
    connections killed mid-transaction (``pg_terminate_backend``): transient failures,
    retried; a commit whose answer was lost is a duplicate on retry, never a second row."""
    workload = build_workload(opts.shape())
    report = new_report("database-restart", workload)
    postgres = PrivatePostgres()
    try:
        await asyncio.to_thread(postgres.start)
        async with env.stage(
            "database", len(workload.events), opts.timeout, server_url=postgres.server_url
        ) as stage:
            worker = stage.spawn("0", opts.worker_settings())
            await worker.wait_ready()
            faults = _break_database(stage, postgres, opts, report)
            await under_load(stage, workload.deliveries, faults, opts.rate)
            await finish(
                stage,
                workload,
                report,
                live=[worker],
                counting=Counting.COMPLETE,
                projections=env.projections,
            )
            survived = _survived(stage, worker)
    finally:
        await asyncio.to_thread(postgres.close)
    terminated = report.figures["backends_terminated_mid_transaction"]
    report.expect(
        "database_connections_killed_mid_batch",
        len(terminated) == opts.backend_kills and all(terminated),
        f"backends killed inside a transaction, per round: {terminated}",
    )
    _expect_survival(report, survived)
    return report


async def _break_database(
    stage: Stage, postgres: PrivatePostgres, opts: ChaosOptions, report: ScenarioReport
) -> None:
    """Restarts and connection kills in a seeded order, at evenly spaced points of the run."""
    faults = ["restart"] * opts.database_restarts + ["terminate"] * opts.backend_kills
    random.Random(opts.seed).shuffle(faults)  # noqa: S311 - reproducible order, not a secret
    terminated, outages = [], []
    for i, fault in enumerate(faults):
        await stage.until_recorded(stage.total * (i + 1) / (len(faults) + 1))
        before = await stage.recorded()
        if fault == "terminate":
            terminated.append(await _terminate_mid_transaction(stage))
            continue
        mode = "immediate" if report.restarts % 2 else "fast"
        stopping = time.monotonic()
        await asyncio.to_thread(postgres.restart, mode)
        back = time.monotonic()
        report.restarts += 1
        await _progress_after(stage, before)
        report.recovery_seconds.append(time.monotonic() - back)
        outages.append(round(time.monotonic() - stopping, 2))
    report.figures["backends_terminated_mid_transaction"] = terminated
    report.figures["outage_seconds"] = outages


def _expect_survival(report: ScenarioReport, survived: bool) -> None:
    report.expect(
        "worker_survived_the_outages",
        survived,
        "the one worker process kept running through every outage"
        if survived
        else "the worker process died or had to be replaced",
    )


def _survived(stage: Stage, worker: ChaosWorker) -> bool:
    return worker.alive and len(stage.workers) == 1


async def _terminate_mid_transaction(stage: Stage) -> int:
    """Kill the stage database's backends that are inside a transaction, as soon as any is."""
    deadline = time.monotonic() + MID_BATCH_SECONDS
    while time.monotonic() < deadline:
        killed = await stage.scalar(KILL_MID_TRANSACTION)
        if killed > 0:
            return killed
        await asyncio.sleep(0.002)
    return 0


async def _progress_after(stage: Stage, before: int) -> None:
    """Until more events are recorded than ``before`` (or all of them are)."""

    async def moved() -> bool:
        recorded = await stage.recorded()
        return recorded > before or recorded >= stage.total

    await stage.until(moved, "recording to resume")

"""Scenarios that end worker processes: SIGKILL at random moments, SIGTERM under load, and
SIGKILL while the outbox relay sits between the broker's confirm and its mark."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from typing import Any

import psycopg

from billing_worker.chaos.counting import Counting
from billing_worker.chaos.harness import Stage, libpq
from billing_worker.chaos.process import ChaosWorker
from billing_worker.chaos.runs import (
    ChaosOptions,
    Environment,
    ScenarioReport,
    finish,
    new_report,
    under_load,
)
from billing_worker.chaos.workload import build_workload


async def sigkill_restarts(opts: ChaosOptions, env: Environment) -> ScenarioReport:
    """The worker SIGKILLed at random moments of a long run, restarted each time."""
    workload = build_workload(opts.shape())
    report = new_report("kills", workload)
    async with env.stage("kills", len(workload.events), opts.timeout) as stage:
        worker = stage.spawn("0", opts.worker_settings())
        await worker.wait_ready()
        worker, mid_run = await under_load(
            stage, workload.deliveries, _kill_at_random(stage, worker, opts, report)
        )
        await finish(
            stage,
            workload,
            report,
            live=[worker],
            counting=Counting.PARTIAL,
            projections=env.projections,
        )
    report.kills = report.restarts = opts.kills
    report.figures["kills_before_the_ledger_was_complete"] = mid_run
    report.expect(
        "kills_landed_mid_run",
        mid_run == opts.kills,
        f"{mid_run} of {opts.kills} kills came while events were still unrecorded",
    )
    return report


async def _kill_at_random(
    stage: Stage, worker: ChaosWorker, opts: ChaosOptions, report: ScenarioReport
) -> tuple[ChaosWorker, int]:
    """SIGKILL once the run reaches each random point, restart; the worker left running and
    how many kills came before the ledger was complete."""
    rng = random.Random(opts.seed)  # noqa: S311 - reproducible moments, not a secret
    mid_run = 0
    targets = sorted(rng.uniform(0.05, 0.8) * stage.total for _ in range(opts.kills))
    for i, target in enumerate(targets, start=1):
        await stage.until_recorded(target)
        await asyncio.sleep(rng.uniform(0, 0.02))  # not always right after a poll
        worker.kill()
        killed = time.monotonic()
        mid_run += await stage.recorded() < stage.total
        worker = stage.spawn(str(i), opts.worker_settings())
        await worker.wait_ready()
        report.recovery_seconds.append(time.monotonic() - killed)
    return worker, mid_run


# Transactions of the worker that have written something: batches in flight.
OPEN_WRITES = """
    SELECT count(*) FROM pg_stat_activity
    WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_xid IS NOT NULL
"""


async def sigterm_under_load(opts: ChaosOptions, env: Environment) -> ScenarioReport:
    """SIGTERM while events pour in: each drain commits and acks what it took, exits 0.

    Each round publishes a share of the workload to a running worker and signals it half
    way through. Every event is distinct, so "nothing half-done" is exact: after each exit
    the recorded events plus the deliveries waiting in the queue are exactly what was
    published so far (an event committed but not acked would be in both; one acked but not
    committed in neither).
    """
    workload = build_workload(opts.shape(duplicate_ratio=0, bad_ratio=0))
    report = new_report("sigterm", workload)
    total = len(workload.events)
    rounds: list[dict[str, int]] = []
    async with env.stage("sigterm", total, opts.timeout) as stage:
        for i in range(opts.sigterms):
            share = workload.deliveries[
                total * i // opts.sigterms : total * (i + 1) // opts.sigterms
            ]
            worker = stage.spawn(str(i), opts.worker_settings())
            rounds.append(await _sigterm_round(stage, worker, share))
        worker = stage.spawn("last", opts.worker_settings())
        await worker.wait_ready()
        await finish(
            stage,
            workload,
            report,
            live=[worker],
            counting=Counting.PARTIAL,
            projections=env.projections,
        )
    report.restarts = opts.sigterms
    report.figures["round"] = rounds
    _judge_sigterm_rounds(report, rounds)
    return report


async def _sigterm_round(stage: Stage, worker: ChaosWorker, share: list[bytes]) -> dict[str, int]:
    """Publish ``share`` to ``worker``; half way, as soon as it has a batch transaction open,
    SIGTERM it; then read what it left behind."""
    await worker.wait_ready()
    half = stage.confirmed + len(share) // 2
    publishing = asyncio.create_task(stage.publish(share))
    try:
        await stage.until_confirmed(half)

        async def mid_batch() -> bool:
            # (if it caught up and went idle, signal anyway: the check will say so)
            return await stage.scalar(OPEN_WRITES) > 0 or publishing.done()

        await stage.until(mid_batch, "a batch transaction to be open")
        at_signal = await stage.recorded()
        worker.terminate()
        code = await worker.wait_exit()
        await publishing
    finally:
        publishing.cancel()
    drained = any(
        r.get("event") == "worker_stopped" and r.get("drained") is True
        for r in worker.log_records()
    )
    after = await _after_exit(stage, stage.confirmed)
    return {
        "exit_code": code,
        "drained": drained,
        "published": stage.confirmed,
        "committed_after_signal": after["recorded"] - at_signal,
        **after,
    }


def _judge_sigterm_rounds(report: ScenarioReport, rounds: list[dict[str, int]]) -> None:
    report.expect(
        "sigterm_exit_zero_drained",
        all(r["exit_code"] == 0 and r["drained"] for r in rounds),
        f"exit codes {[r['exit_code'] for r in rounds]}, drained {[r['drained'] for r in rounds]}",
    )
    report.expect(
        "sigterm_nothing_half_done",
        all(r["recorded"] + r["queued"] == r["published"] for r in rounds),
        "(recorded, queued, published) after each exit: "
        f"{[(r['recorded'], r['queued'], r['published']) for r in rounds]}",
    )
    report.expect(
        "sigterm_landed_under_load",
        all(r["committed_after_signal"] > 0 for r in rounds),
        "events committed between the signal and the exit: "
        f"{[r['committed_after_signal'] for r in rounds]}",
    )
    report.expect(
        "sigterm_outbox_flushed",
        all(r["outbox_pending"] == 0 for r in rounds),
        f"outbox rows left unpublished at each exit: {[r['outbox_pending'] for r in rounds]}",
    )


async def _after_exit(stage: Stage, published: int) -> dict[str, int]:
    """Recorded events and queued deliveries once the broker has requeued the unacked."""
    recorded = queued = 0
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        recorded = await stage.recorded()
        queued = await stage.depth(stage.topology.usage_queue)
        if recorded + queued == published:
            break
        await asyncio.sleep(0.1)
    pending = await stage.scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL")
    return {"recorded": recorded, "queued": queued, "outbox_pending": pending}


HOLD_KEY = 0x6368616F  # "chao": the advisory lock the mark waits on while a round is armed
HOLD_MARK = f"""
CREATE FUNCTION chaos_hold_outbox_mark() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_lock_shared({HOLD_KEY});
    PERFORM pg_advisory_unlock_shared({HOLD_KEY});
    RETURN NULL;
END $$;
CREATE TRIGGER chaos_hold_outbox_mark BEFORE UPDATE ON outbox
    FOR EACH STATEMENT EXECUTE FUNCTION chaos_hold_outbox_mark();
"""
HELD_MARKS = """
    SELECT pid FROM pg_stat_activity
    WHERE datname = current_database() AND wait_event_type = 'Lock'
      AND wait_event = 'advisory' AND query LIKE '%%UPDATE outbox SET published_at%%'
"""


async def relay_killed_before_mark(opts: ChaosOptions, env: Environment) -> ScenarioReport:
    """The worker SIGKILLed while its relay has had the broker's confirms but not yet marked
    the rows: the next incarnation publishes them again, with the same ids and bytes.

    The window is held open from outside the worker: a trigger installed in this run's own
    database makes the relay's mark wait on an advisory lock the scenario holds. The
    worker's code is untouched; usage batches keep committing meanwhile.
    """
    workload = build_workload(opts.shape())
    report = new_report("relay-crash", workload)
    async with env.stage("relay", len(workload.events), opts.timeout) as stage:
        hold = await psycopg.AsyncConnection.connect(libpq(stage.database_url), autocommit=True)
        try:
            await hold.execute(HOLD_MARK)
            await hold.execute("SELECT pg_advisory_lock(%s)", (HOLD_KEY,))
            worker = stage.spawn("0", opts.worker_settings())
            await worker.wait_ready()
            worker = await under_load(
                stage,
                workload.deliveries,
                _kill_between_confirm_and_mark(stage, worker, hold, opts, report),
            )
        finally:
            await hold.close()
        await finish(
            stage,
            workload,
            report,
            live=[worker],
            counting=Counting.PARTIAL,
            projections=env.projections,
        )
    report.kills = report.restarts = opts.relay_kills
    repeats = report.outgoing.get("outbox_repeats", 0)
    report.expect(
        "relay_republished_after_crash",
        repeats >= opts.relay_kills,
        f"{repeats} billing events delivered again after {opts.relay_kills} kills between "
        "confirm and mark",
    )
    return report


async def _kill_between_confirm_and_mark(
    stage: Stage,
    worker: ChaosWorker,
    hold: psycopg.AsyncConnection[Any],
    opts: ChaosOptions,
    report: ScenarioReport,
) -> ChaosWorker:
    """Each round: once the relay waits before its mark and the run has moved on, SIGKILL,
    end the orphaned backend, restart; then let marks through. Returns the worker running."""
    for i in range(opts.relay_kills):
        await stage.until(lambda: _marks_held(stage), "the relay to wait before its mark")
        await stage.until_recorded(stage.total * (i + 1) / (opts.relay_kills + 2))
        worker.kill()
        killed = time.monotonic()
        # The backend of the dead worker would hold the rows' locks until the hold ends.
        await stage.scalar(
            f"SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM ({HELD_MARKS}) AS h"
        )
        worker = stage.spawn(str(i + 1), opts.worker_settings())
        await worker.wait_ready()
        report.recovery_seconds.append(time.monotonic() - killed)
    await hold.execute("SELECT pg_advisory_unlock(%s)", (HOLD_KEY,))
    return worker


async def _marks_held(stage: Stage) -> bool:
    with contextlib.suppress(psycopg.Error):
        return await stage.scalar(f"SELECT count(*) FROM ({HELD_MARKS}) AS held") > 0
    return False

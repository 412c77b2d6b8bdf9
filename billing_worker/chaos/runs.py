"""What every scenario shares: its options, where it runs, its report, and how it ends."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections import Counter
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import psycopg

from billing_worker.chaos.counting import Counting
from billing_worker.chaos.harness import Stage, libpq
from billing_worker.chaos.invariants import BusMessage, ProjectionChecks, check_run
from billing_worker.chaos.process import ChaosWorker
from billing_worker.chaos.verdict import Check
from billing_worker.chaos.workload import SOURCE, Workload, WorkloadShape

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class ChaosOptions:
    """Sizes of a chaos run (the command's defaults are the full size)."""

    events: int = 50_000
    accounts: int = 100
    hot_accounts: int = 3
    kills: int = 10
    broker_restarts: int = 3
    database_restarts: int = 3
    backend_kills: int = 5
    sigterms: int = 5
    relay_kills: int = 3
    replicas: int = 2
    rate: float = 2_000.0
    batch_size: int | None = None
    seed: int = 7
    timeout: float = 600.0

    def shape(self, **overrides: Any) -> WorkloadShape:
        """The workload for these options, with a scenario's own tweaks."""
        base = WorkloadShape(
            events=self.events,
            accounts=self.accounts,
            hot_accounts=self.hot_accounts,
            seed=self.seed,
        )
        return replace(base, **overrides)

    def worker_settings(self) -> dict[str, str]:
        """BILLING_* variables for the workers."""
        return {} if self.batch_size is None else {"BILLING_BATCH_SIZE": str(self.batch_size)}


@dataclass(frozen=True, slots=True)
class Environment:
    """The shared servers scenarios may use (never stopped), where logs go, and the folds."""

    amqp_url: str
    server_url: str
    logs: Path
    projections: ProjectionChecks

    def stage(self, label: str, total: int, patience: float, **servers: str) -> Stage:
        """A stage on the shared servers, or on the private ones given as keywords
        (``amqp_url=``, ``server_url=``)."""
        return Stage(
            label,
            amqp_url=servers.get("amqp_url", self.amqp_url),
            server_url=servers.get("server_url", self.server_url),
            logs=self.logs,
            total=total,
            patience=patience,
        )


@dataclass(slots=True)
class ScenarioReport:
    """A scenario's figures and the verdict of every check."""

    scenario: str
    published: int = 0
    distinct: int = 0
    resends: int = 0
    invalid: int = 0
    recorded: int = 0
    counted: dict[str, int] = field(default_factory=dict)
    kills: int = 0
    restarts: int = 0
    recovery_seconds: list[float] = field(default_factory=list)
    drain_seconds: float = 0.0
    run_seconds: float = 0.0
    outgoing: dict[str, int] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)
    error: str | None = None
    started: float = field(default_factory=time.monotonic)

    @property
    def ok(self) -> bool:
        """Ran to the end and every check held."""
        return self.error is None and bool(self.checks) and all(c.ok for c in self.checks)

    def check(self, name: str) -> Check:
        """The check called ``name``."""
        return next(c for c in self.checks if c.name == name)

    def expect(self, name: str, ok: bool, detail: str) -> None:
        """Add a scenario's own check."""
        self.checks.append(Check(name, ok, detail))

    def as_dict(self) -> dict[str, Any]:
        """The report as plain JSON-able data."""
        recovery = self.recovery_seconds
        return {
            "scenario": self.scenario,
            "ok": self.ok,
            "error": self.error,
            "published": self.published,
            "distinct_events": self.distinct,
            "resends": self.resends,
            "invalid": self.invalid,
            "recorded": self.recorded,
            "counted": self.counted,
            "kills": self.kills,
            "restarts": self.restarts,
            "recovery_seconds": {
                "all": [round(s, 3) for s in recovery],
                "median": round(statistics.median(recovery), 3) if recovery else None,
                "max": round(max(recovery), 3) if recovery else None,
            },
            "drain_seconds": round(self.drain_seconds, 3),
            "run_seconds": round(self.run_seconds, 3),
            "outgoing": self.outgoing,
            "figures": self.figures,
            "checks": [{"name": c.name, "ok": c.ok, "detail": c.detail} for c in self.checks],
        }


async def under_load(
    stage: Stage, deliveries: Sequence[bytes], faults: Awaitable[T], rate: float | None = None
) -> T:
    """Run ``faults`` while ``deliveries`` are published in the background; wait for both."""
    publishing = asyncio.create_task(stage.publish(deliveries, rate))
    try:
        result = await faults
        await publishing
    finally:
        publishing.cancel()
    return result


def new_report(scenario: str, workload: Workload) -> ScenarioReport:
    """A report with the workload's figures filled in."""
    return ScenarioReport(
        scenario=scenario,
        published=len(workload.deliveries),
        distinct=len(workload.events),
        resends=workload.resends,
        invalid=len(workload.bad_ids),
    )


async def finish(
    stage: Stage,
    workload: Workload,
    report: ScenarioReport,
    *,
    live: Sequence[ChaosWorker],
    counting: Counting,
    projections: ProjectionChecks,
) -> None:
    """Wait for the run to drain, collect what came out, run every invariant check."""
    report.drain_seconds = await stage.drain(
        events=len(workload.events),
        invalid=len(workload.bad_ids),
        deliveries=len(workload.deliveries),
        live=live,
        counting=counting,
    )
    report.run_seconds = time.monotonic() - report.started
    outgoing, dead_letters = await stage.collect()
    checks = await asyncio.to_thread(
        lambda: _checks(
            stage,
            workload=workload,
            outgoing=outgoing,
            dead_letters=dead_letters,
            counting=counting,
        )
    )
    folds = await projections.run(stage.database_url)
    report.checks = checks[:2] + folds + checks[2:] + report.checks
    report.recorded = await stage.scalar(
        "SELECT count(DISTINCT event_id) FROM usage_ledger WHERE event_source = %s", (SOURCE,)
    )
    _summarise(report, stage, outgoing, dead_letters)


def _summarise(
    report: ScenarioReport,
    stage: Stage,
    outgoing: Sequence[BusMessage],
    dead_letters: Sequence[BusMessage],
) -> None:
    """The counters summed over processes, and what came out on the bus."""
    last = [i.last for i in stage.incarnations]
    report.counted = {
        "incarnations": len(last),
        "received": sum(c.received for c in last),
        "recorded": sum(c.recorded for c in last),
        "duplicate": sum(c.duplicate for c in last),
        "rejected": sum(c.rejected for c in last),
    }
    ids = Counter(m.message_id for m in outgoing)
    relayed = Counter(m.message_id for m in outgoing if m.event_type != "usage.rejected")
    report.outgoing = {
        "distinct": len(ids),
        "deliveries": len(outgoing),
        "repeats": sum(n - 1 for n in ids.values()),
        "outbox_repeats": sum(n - 1 for n in relayed.values()),
        "dead_letters": len(dead_letters),
    }
    if stage.republished:
        report.figures["resent_after_lost_confirms"] = stage.republished


def _checks(
    stage: Stage,
    *,
    workload: Workload,
    outgoing: list[BusMessage],
    dead_letters: list[BusMessage],
    counting: Counting,
) -> list[Check]:
    with psycopg.connect(libpq(stage.database_url), autocommit=True) as conn:
        return check_run(
            conn,
            workload,
            outgoing=outgoing,
            dead_letters=dead_letters,
            incarnations=stage.incarnations,
            counting=counting,
        )

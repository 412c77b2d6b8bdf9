"""The chaos scenarios by name, in the order a full run takes them."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from billing_worker.chaos.contention import duplicate_storm, hot_replicas
from billing_worker.chaos.crashes import (
    relay_killed_before_mark,
    sigkill_restarts,
    sigterm_under_load,
)
from billing_worker.chaos.outages import broker_restarts, database_restarts
from billing_worker.chaos.runs import ChaosOptions, Environment, ScenarioReport

Scenario = Callable[[ChaosOptions, Environment], Awaitable[ScenarioReport]]

SCENARIOS: dict[str, Scenario] = {
    "kills": sigkill_restarts,
    "broker-restart": broker_restarts,
    "database-restart": database_restarts,
    "replicas": hot_replicas,
    "storm": duplicate_storm,
    "sigterm": sigterm_under_load,
    "relay-crash": relay_killed_before_mark,
}
"""Each runs on scratch databases and namespaces; the two outages on private servers."""


async def run_scenario(name: str, opts: ChaosOptions, env: Environment) -> ScenarioReport:
    """Run one scenario by name; its report (exceptions propagate)."""
    return await SCENARIOS[name](opts, env)

"""Faults on purpose, and still nothing lost, nothing doubled.

Each test runs one scenario of ``billing-worker chaos`` (``billing_worker/chaos``) at a
size that fits CI, against real services: worker child processes on a scratch database and
broker namespace of the shared servers, or, where a server is stopped, a private
PostgreSQL or RabbitMQ started for the test and removed after it (the shared servers are
never stopped). Every scenario ends with the same invariants:

- every published event is in the ledger exactly once, and each account's totals are the
  sum of what was published for it;
- the stored aggregates and credit balances equal a fold of the ledger
  (``tests/ledger_checks.py``), each credit-priced event burned its cost once, each quota
  threshold reached was announced once;
- every outbox event was marked published and seen on ``billing.events`` at least once,
  and no two billing events with one id differ in content;
- every invalid event is dead-lettered with its reason and announced as ``usage.rejected``;
- ``received = recorded + duplicate + rejected`` as far as each worker's counters can say
  (see ``billing_worker/chaos/invariants.py`` for what survives a killed process).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from billing_worker.chaos.invariants import ProjectionChecks
from billing_worker.chaos.runs import ChaosOptions, Environment, ScenarioReport
from billing_worker.chaos.scenarios import run_scenario
from billing_worker.chaos.servers import postgres_bindir, rabbitmq_sbindir
from tests.conftest import AMQP_URL, SERVER_URL
from tests.ledger_checks import aggregates_match_ledger, credit_balances_match_ledger

pytestmark = pytest.mark.slow

CI_SIZE = ChaosOptions(
    events=3_000,
    accounts=12,
    hot_accounts=2,
    kills=3,
    broker_restarts=1,
    database_restarts=2,
    backend_kills=2,
    sigterms=2,
    relay_kills=2,
    replicas=2,
    rate=1_000,
    timeout=120,
)
"""Each account still crosses the token quota's thresholds and most exhaust their credits,
so every run has outgoing billing events to check."""

needs_private_postgres = pytest.mark.skipif(
    postgres_bindir() is None, reason="needs the PostgreSQL server binaries (initdb, pg_ctl)"
)
needs_private_rabbitmq = pytest.mark.skipif(
    rabbitmq_sbindir() is None or shutil.which("erl") is None,
    reason="needs the RabbitMQ server scripts and Erlang",
)


@pytest.fixture
def chaos_env(tmp_path: Path) -> Environment:
    """The shared test servers, worker logs under this test's tmp_path, the test folds."""
    return Environment(
        amqp_url=AMQP_URL,
        server_url=SERVER_URL,
        logs=tmp_path,
        projections=ProjectionChecks.on_psycopg(
            aggregates_match_ledger, credit_balances_match_ledger
        ),
    )


def assert_held(report: ScenarioReport) -> None:
    """Every check of the scenario held (the failing ones, with their figures, if not)."""
    failed = [f"{c.name}: {c.detail}" for c in report.checks if not c.ok]
    assert report.checks, "the scenario ran no checks"
    assert not failed, "\n".join(failed)


class TestWorkerProcessesEnding:
    """SIGKILL, SIGTERM, and SIGKILL inside the outbox relay's publish-then-mark window."""

    async def test_sigkill_at_random_moments_loses_and_doubles_nothing(
        self, chaos_env: Environment
    ) -> None:
        """A worker killed three times mid-run and restarted each time: every event once,
        every total right, every billing event out, counters never ahead of receipts."""
        report = await run_scenario("kills", CI_SIZE, chaos_env)
        assert_held(report)
        assert report.kills == report.restarts == 3
        assert report.counted["incarnations"] == 4

    async def test_sigterm_under_load_commits_and_acks_the_batches_in_flight(
        self, chaos_env: Environment
    ) -> None:
        """SIGTERM while events pour in: exit 0 after a drain, and after each exit every
        published event is either recorded or back in the queue, never both or neither."""
        report = await run_scenario("sigterm", CI_SIZE, chaos_env)
        assert_held(report)
        assert report.check("sigterm_nothing_half_done").ok
        assert report.check("sigterm_landed_under_load").ok

    async def test_relay_killed_between_confirm_and_mark_republishes_identical_events(
        self, chaos_env: Environment
    ) -> None:
        """The worker killed while its relay holds the broker's confirms but has not marked
        the rows: the rows go out again after restart, same ids and bytes, none lost."""
        report = await run_scenario("relay-crash", CI_SIZE, chaos_env)
        assert_held(report)
        assert report.outgoing["outbox_repeats"] >= CI_SIZE.relay_kills


class TestServersGoingAway:
    """Private servers stopped under a running worker (never the shared ones)."""

    @needs_private_rabbitmq
    async def test_broker_restart_is_ridden_out_by_the_same_process(
        self, chaos_env: Environment
    ) -> None:
        """RabbitMQ stopped and started mid-run: /readyz goes 503, then 200 again without
        a restart of the worker, and every event still counts once."""
        report = await run_scenario("broker-restart", CI_SIZE, chaos_env)
        assert_held(report)
        assert report.check("broker_readyz_503_then_200").ok
        assert report.check("worker_survived_the_outages").ok

    @needs_private_postgres
    async def test_database_restarts_and_killed_connections_are_retried(
        self, chaos_env: Environment
    ) -> None:
        """PostgreSQL restarted (fast and immediate) and the worker's connections killed
        inside transactions: batches retried, every event once, the process survives."""
        report = await run_scenario("database-restart", CI_SIZE, chaos_env)
        assert_held(report)
        assert report.restarts == CI_SIZE.database_restarts
        assert report.check("database_connections_killed_mid_batch").ok


class TestContention:
    """Replicas racing on the same queue, accounts and keys."""

    async def test_replicas_on_hot_accounts_neither_deadlock_nor_miscount(
        self, chaos_env: Environment
    ) -> None:
        """Two worker processes, 80% of the traffic on two accounts: exact counters summed
        over replicas, exact totals, and no deadlock (not even a retried one) in the logs."""
        report = await run_scenario("replicas", CI_SIZE, chaos_env)
        assert_held(report)
        assert report.check("no_deadlocks_or_errors_logged").ok
        assert report.check("replicas_all_took_work").ok

    async def test_every_event_published_three_times_counts_once(
        self, chaos_env: Environment
    ) -> None:
        """A storm of triplicates interleaved across batches and replicas: one effect per
        event, two duplicates counted per event, three dead letters per invalid one."""
        report = await run_scenario("storm", CI_SIZE, chaos_env)
        assert_held(report)
        assert report.counted["duplicate"] == 2 * report.distinct

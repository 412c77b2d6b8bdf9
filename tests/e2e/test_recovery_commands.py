"""``billing-worker verify`` and ``rebuild`` next to a running worker: a clean database
verifies clean, tampered totals and balances are found (exit 1) and repaired, also while
the worker keeps recording."""

from __future__ import annotations

import asyncio

import psycopg
import pytest

from tests.e2e.conftest import Bus, StartWorker, encode, event, sample, wait_until
from tests.e2e.operator_cli import Cli, cli_json, operator_cli

TAMPER = (
    "UPDATE usage_aggregates SET quantity = quantity + 500 WHERE meter = 'tokens'",
    # lower, not higher: a balance raised behind its back lets the worker burn credits the
    # ledger never granted, which only a correcting ledger entry can undo
    "UPDATE credit_grants SET remaining = greatest(0, remaining - 3) WHERE account_id = 'acct_1'",
)


@pytest.fixture
def run_cli(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    database_url: str,
    namespace: str,
    restore_logging: None,
) -> Cli:
    """The command line on this test's namespace and database."""
    return operator_cli(monkeypatch, capsys, database_url, namespace)


def usage_mix(prefix: str, account: str, n: int) -> list[bytes]:
    """Tokens and credit-priced API calls, and one inference (two meters), for one account."""
    inference = {"tokens": 40, "model": "gpt-4"}
    bodies = [encode(event(f"{prefix}-i", subject=account, type="ai.inference", data=inference))]
    for i in range(n):
        bodies.append(encode(event(f"{prefix}-t{i}", subject=account)))
        bodies.append(encode(event(f"{prefix}-a{i}", subject=account, type="api.call", data={})))
    return bodies


def tokens_of(sql: psycopg.Connection, account: str) -> object:
    return sql.execute(
        "SELECT sum(quantity) FROM usage_aggregates WHERE meter = 'tokens' AND account_id = %s",
        (account,),
    ).fetchone()


async def test_verify_is_clean_after_the_worker_recorded_usage(
    start_worker: StartWorker, bus: Bus, run_cli: Cli
) -> None:
    """Totals and credit burns the worker wrote match the ledgers: exit 0, and the report
    says how many rows of each projection it checked."""
    worker = await start_worker()
    bodies = usage_mix("v", "acct_1", 5)
    await bus.publish_all(bodies)
    await wait_until(
        lambda: sample(worker, "billing_events_recorded_total") == len(bodies), what="usage"
    )
    status, out, _ = await run_cli("verify")
    assert status == 0
    assert "matches the ledgers" in out
    report = await cli_json(run_cli, "verify")
    assert report["clean"] is True
    assert report["differences"] == []
    assert report["checked"]["usage_aggregates"] == 4  # tokens, api_calls, inference x2
    assert report["checked"]["credit_grants"] == 1


async def test_tampering_is_found_and_rebuild_repairs_it(
    start_worker: StartWorker, bus: Bus, run_cli: Cli, sql: psycopg.Connection
) -> None:
    """A total and a credit balance changed behind the worker's back: verify exits 1 naming
    both (and only for that account), rebuild without --yes changes nothing, rebuild --yes
    repairs them and says what it changed, and verify is clean again."""
    worker = await start_worker()
    bodies = usage_mix("r", "acct_1", 4) + usage_mix("r2", "acct_2", 2)
    await bus.publish_all(bodies)
    await wait_until(
        lambda: sample(worker, "billing_events_recorded_total") == len(bodies), what="usage"
    )
    sql.execute(
        "UPDATE usage_aggregates SET quantity = quantity + 500 WHERE meter = 'tokens' "
        "AND account_id = 'acct_1'"
    )
    sql.execute(TAMPER[1])
    assert sql.execute(
        "SELECT remaining FROM credit_grants WHERE account_id = 'acct_1'"
    ).fetchone() == (68,)

    report = await cli_json(run_cli, "verify", status=1)
    assert report["clean"] is False
    assert {(d["projection"], d["account"]) for d in report["differences"]} == {
        ("usage_aggregates", "acct_1"),
        ("credit_grants", "acct_1"),
    }
    tokens = next(d for d in report["differences"] if d["projection"] == "usage_aggregates")
    assert (tokens["stored"]["quantity"], tokens["expected"]["quantity"]) == ("540", "40")
    status, out, _ = await run_cli("verify")
    assert status == 1
    assert "2 difference(s)" in out
    assert (await run_cli("verify", "--account", "acct_2"))[0] == 0

    status, out, _ = await run_cli("rebuild")
    assert status == 1
    assert "would repair 2 difference(s) in 1 account(s)" in out
    assert (await run_cli("verify"))[0] == 1

    status, out, _ = await run_cli("rebuild", "--yes")
    assert status == 0
    assert "repaired 2 difference(s) in 1 account(s)" in out
    assert "540" in out
    assert (await run_cli("verify"))[0] == 0
    assert tokens_of(sql, "acct_1") == (40,)


async def test_rebuild_while_the_worker_records_keeps_totals_right(
    start_worker: StartWorker, bus: Bus, run_cli: Cli, sql: psycopg.Connection
) -> None:
    """Usage keeps flowing into the worker while totals and balances are tampered with and
    rebuilt, again and again: once everything is recorded, verify is clean and every total
    is exactly what was sent."""
    worker = await start_worker()
    rounds = 12
    batches = [usage_mix(f"c{i}", f"acct_{i % 2 + 1}", 5) for i in range(rounds)]

    async def produce() -> None:
        for batch in batches:
            await bus.publish_all(batch)
            await asyncio.sleep(0.4)  # a stream, not a burst: rebuilds land in between

    async def tamper_and_rebuild() -> None:
        for _ in range(4):
            for statement in TAMPER:
                await asyncio.to_thread(sql.execute, statement)
            status, out, _ = await run_cli("rebuild", "--yes")
            assert status == 0, out

    await asyncio.gather(produce(), tamper_and_rebuild())
    total = sum(len(b) for b in batches)
    await wait_until(
        lambda: sample(worker, "billing_events_recorded_total") == total, what="all usage"
    )
    status, out, _ = await run_cli("verify")
    assert status == 0, out
    per_account = rounds // 2 * 5 * 10  # rounds per account, events, quantity
    assert tokens_of(sql, "acct_1") == (per_account,)
    assert tokens_of(sql, "acct_2") == (per_account,)

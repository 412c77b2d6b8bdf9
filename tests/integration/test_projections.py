"""The projections recomputed from the ledgers: differences found, and repaired per account
under the account lock, also while batches are being recorded."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt

from billing_worker.adapters.postgres.database import create_engine_for
from billing_worker.adapters.postgres.projection_repair import rebuild_account
from billing_worker.adapters.postgres.projections import (
    Difference,
    MeterTerms,
    checked_rows,
    find_differences,
    load_meter_terms,
)
from billing_worker.adapters.postgres.unit_of_work import PostgresUnitOfWork
from billing_worker.domain.errors import TransientError
from billing_worker.domain.usage import UsageRecord
from billing_worker.service.accounts import change_plan
from billing_worker.service.invoices import close_due_periods, move_invoice
from billing_worker.service.record_usage import record_usage_batch
from tests.ledger_checks import aggregates_match_ledger, credit_balances_match_ledger
from tests.pricebooks import FEATURES_BOOK
from tests.records import NOW, usage

LAST_MONTH = NOW - timedelta(days=30)
NOVEMBER = datetime(2026, 11, 1, tzinfo=UTC)
SEAT_VALUES: list[Any] = ["u1", "u2", 7, 1e-05, 1e20, True, 'é\n"q"']


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    eng = create_engine_for(database_url, pool_size=6)
    yield eng
    await eng.dispose()


async def record(engine: AsyncEngine, records: list[UsageRecord]) -> None:
    """Record like the worker: a transient failure (a deadlock) retries the batch."""
    async for attempt in AsyncRetrying(
        retry=retry_if_exception_type(TransientError), stop=stop_after_attempt(10), reraise=True
    ):
        with attempt:
            await record_usage_batch(
                lambda: PostgresUnitOfWork(engine), FEATURES_BOOK, records, clock=lambda: NOW
            )


async def every_kind_of_projection(engine: AsyncEngine) -> None:
    """Usage on every aggregation, credits burned past the grant, a plan change, an invoice
    moved to another status and one held as a draft."""
    uow = lambda: PostgresUnitOfWork(engine)  # noqa: E731
    await record(
        engine,
        [
            usage(quantity=30, at=LAST_MONTH),
            usage("api.call", at=LAST_MONTH),
            usage(quantity=3, account="acct_3", at=LAST_MONTH),
        ],
    )
    await record(
        engine,
        [
            usage(quantity=120, model="gpt-4"),
            usage(quantity=5),
            usage("storage.gb_month", 3),
            usage("storage.gb_month", 9),
            usage("level.reported", 4, at=NOW - timedelta(hours=1)),
            usage("level.reported", 2, at=NOW),
            usage("level.reported", 8, at=NOW - timedelta(hours=2)),
            *(usage("seat.active", user_id=value) for value in SEAT_VALUES),
            *(usage("api.call") for _ in range(12)),
            usage(quantity=7, account="acct_2"),
        ],
    )
    await change_plan(uow, FEATURES_BOOK, account="acct_2", plan="BIG", change_id="c1", now=NOW)
    closed = await close_due_periods(
        uow, FEATURES_BOOK, as_of=NOW, grace=timedelta(0), account="acct_1"
    )
    october = next(c for c in closed if c.account == "acct_1")
    held = await close_due_periods(
        uow, FEATURES_BOOK, as_of=NOW, grace=timedelta(0), account="acct_3", review=True
    )
    assert held, "acct_3's October is held for review as a draft"
    await move_invoice(
        uow,
        FEATURES_BOOK,
        invoice_id=october.invoice_id,
        status="uncollectible",
        cause="test",
        now=NOW,
    )


async def differences(engine: AsyncEngine, account: str | None = None) -> list[Difference]:
    async with engine.connect() as conn:
        terms = await load_meter_terms(conn, FEATURES_BOOK)
        return await find_differences(conn, terms, account)


async def terms_of(engine: AsyncEngine) -> MeterTerms:
    async with engine.connect() as conn:
        return await load_meter_terms(conn, FEATURES_BOOK)


def tamper(sql: psycopg.Connection) -> None:
    """One wrong row of every kind, written behind the worker's back."""
    for statement in (
        "UPDATE usage_aggregates SET quantity = quantity + 999 "
        "WHERE account_id = 'acct_1' AND meter = 'tokens' AND period_start = %(nov)s",
        "UPDATE usage_aggregates SET event_count = 0 WHERE meter = 'requests' "
        "AND account_id = 'acct_1' AND period_start = %(nov)s",
        "UPDATE usage_aggregates SET latest_at = latest_at - interval '1 day' "
        "WHERE meter = 'plan_level'",
        "DELETE FROM usage_aggregates WHERE meter = 'peak_storage'",
        "INSERT INTO usage_aggregates (account_id, meter, period_start, period_end, quantity) "
        "VALUES ('acct_2', 'ghost', %(nov)s, %(nov)s + interval '1 month', 1)",
        "DELETE FROM meter_unique_values WHERE value IN ('1e-05', '1e+20')",
        "INSERT INTO meter_unique_values VALUES ('acct_1', 'seats', %(nov)s, '\"intruder\"')",
        "UPDATE credit_grants SET remaining = 42 WHERE account_id = 'acct_1' "
        "AND period_start = %(nov)s",
        "UPDATE invoices SET total = total + 1, status = 'paid' WHERE account_id = 'acct_1'",
        "UPDATE accounts SET plan = 'BASIC' WHERE account_id = 'acct_2'",
    ):
        sql.execute(statement, {"nov": NOVEMBER})


def summary(found: list[Difference]) -> set[tuple[str, str, str, tuple[str, ...]]]:
    """(projection, account, meter if any, fields that differ) of each difference."""
    return {
        (
            d.projection,
            d.account,
            str(d.key.get("meter", "")),
            tuple(sorted(name for name, _, _ in d.changes())),
        )
        for d in found
    }


TAMPERED = {
    ("usage_aggregates", "acct_1", "tokens", ("quantity",)),
    ("usage_aggregates", "acct_1", "requests", ("event_count",)),
    ("usage_aggregates", "acct_1", "plan_level", ("latest_at",)),
    ("usage_aggregates", "acct_1", "peak_storage", ("row",)),
    ("usage_aggregates", "acct_2", "ghost", ("row",)),
    ("meter_unique_values", "acct_1", "seats", ("row",)),
    ("credit_grants", "acct_1", "", ("remaining",)),
    ("invoices", "acct_1", "", ("status", "total")),
    ("accounts", "acct_2", "", ("plan",)),
}


class TestVerify:
    async def test_projections_written_by_the_services_match_the_ledger(
        self, engine: AsyncEngine, sql: psycopg.Connection
    ) -> None:
        """Every aggregation, unique values spelled in JSON's corners, burns, a plan change
        and an invoice status move: no difference, and every projection table was looked at."""
        await every_kind_of_projection(engine)
        assert await differences(engine) == []
        assert aggregates_match_ledger(sql)
        assert credit_balances_match_ledger(sql)
        async with engine.connect() as conn:
            counted = await checked_rows(conn)
        assert all(n > 0 for n in counted.values()), counted

    async def test_each_kind_of_tampering_is_reported(
        self, engine: AsyncEngine, sql: psycopg.Connection
    ) -> None:
        """A wrong total, count, latest time, a missing and an extra total, missing and extra
        distinct values, a wrong balance, invoice total and status, and account plan: each
        reported with what is stored and what the ledger says; the shared test checks fail."""
        await every_kind_of_projection(engine)
        tamper(sql)
        found = await differences(engine)
        assert summary(found) == TAMPERED
        tokens = next(d for d in found if d.key.get("meter") == "tokens")
        assert tokens.stored is not None
        assert tokens.expected is not None
        assert tokens.stored["quantity"] - tokens.expected["quantity"] == 999
        values = {
            (d.key["value"], d.stored is None)
            for d in found
            if d.projection == "meter_unique_values"
        }
        assert values == {("1e-05", True), ("1e+20", True), ('"intruder"', False)}
        assert not aggregates_match_ledger(sql)
        assert not credit_balances_match_ledger(sql)
        assert summary(await differences(engine, "acct_2")) == {
            t for t in TAMPERED if t[1] == "acct_2"
        }


class TestRebuild:
    async def test_rebuild_repairs_every_difference_it_reports(
        self, engine: AsyncEngine, sql: psycopg.Connection
    ) -> None:
        """Rebuilding each account reports exactly what was wrong and leaves nothing to find;
        a distinct value put back is the worker's spelling, so seeing it again counts nothing."""
        await every_kind_of_projection(engine)
        tamper(sql)
        terms = await terms_of(engine)
        repaired = [
            d for a in ("acct_1", "acct_2") for d in await rebuild_account(engine, a, terms)
        ]
        assert summary(repaired) == TAMPERED
        assert await differences(engine) == []
        seats = "SELECT quantity FROM usage_aggregates WHERE meter = 'seats'"
        assert sql.execute(seats).fetchone() == (len(SEAT_VALUES),)
        await record(
            engine, [usage("seat.active", user_id=1e-05), usage("seat.active", user_id=1e20)]
        )
        assert sql.execute(seats).fetchone() == (len(SEAT_VALUES),)
        assert await differences(engine) == []

    async def test_rebuild_of_a_consistent_account_changes_nothing(
        self, engine: AsyncEngine, sql: psycopg.Connection
    ) -> None:
        """Nothing wrong: nothing reported, no row touched."""
        await every_kind_of_projection(engine)
        before = sql.execute("SELECT * FROM usage_aggregates ORDER BY 1, 2, 3").fetchall()
        assert await rebuild_account(engine, "acct_1", await terms_of(engine)) == []
        assert sql.execute("SELECT * FROM usage_aggregates ORDER BY 1, 2, 3").fetchall() == before

    async def test_rebuild_while_batches_record_keeps_totals_right(
        self, engine: AsyncEngine, sql: psycopg.Connection
    ) -> None:
        """Batches of the account keep committing while its totals and balance are tampered
        with and rebuilt again and again: in the end every total is exactly the ledger's."""
        await record(engine, [usage(quantity=1)])
        terms = await terms_of(engine)
        batches = 30

        async def produce() -> None:
            for _ in range(batches):
                await record(engine, [usage(quantity=1), usage("api.call"), usage(quantity=2)])

        async def tamper_and_rebuild() -> None:
            for _ in range(8):
                await asyncio.to_thread(
                    sql.execute,
                    "UPDATE usage_aggregates SET quantity = quantity + 1000 WHERE meter = 'tokens'",
                )
                await rebuild_account(engine, "acct_1", terms)

        await asyncio.gather(produce(), produce(), tamper_and_rebuild())
        assert await differences(engine) == []
        total = sql.execute("SELECT quantity FROM usage_aggregates WHERE meter = 'tokens'")
        assert total.fetchone() == (1 + 2 * batches * 3,)
        calls = sql.execute("SELECT event_count FROM usage_aggregates WHERE meter = 'api_calls'")
        assert calls.fetchone() == (2 * batches,)

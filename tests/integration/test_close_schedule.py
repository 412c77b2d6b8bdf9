"""The closer's watermark on real PostgreSQL: a round reads only the accounts with a period
due, the watermark moves past what is invoiced, goes back for late usage of a month that
has no invoice, and is worked out for rows written without one."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from alembic import command
from sqlalchemy import make_url, text
from sqlalchemy.ext.asyncio import AsyncEngine

from billing_worker.adapters.postgres.close_schedule import DUE_ACCOUNTS
from billing_worker.adapters.postgres.database import alembic_config, create_engine_for
from billing_worker.adapters.postgres.unit_of_work import PostgresUnitOfWork
from billing_worker.domain.pricebook import CreditSource
from billing_worker.domain.usage import UsageRecord
from billing_worker.service.accounts import grant_credits
from billing_worker.service.invoices import close_due_periods
from billing_worker.service.record_usage import record_usage_batch
from tests.conftest import admin, libpq_url
from tests.pricebooks import DEFAULT_BOOK, register

GRACE = timedelta(hours=1)
OCT_10 = datetime(2026, 10, 10, tzinfo=UTC)
DEC_5 = datetime(2026, 12, 5, tzinfo=UTC)
_ids = iter(range(1, 10**9))


def utc(year: int, month: int, day: int = 1) -> datetime:
    return datetime(year, month, day, tzinfo=UTC)


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    eng = create_engine_for(database_url, pool_size=2)
    yield eng
    await eng.dispose()


async def record(engine: AsyncEngine, account: str, at: datetime, now: datetime) -> None:
    usage = UsageRecord("svc", f"e{next(_ids)}", "chat.tokens", account, at, Decimal(10))
    await record_usage_batch(
        lambda: PostgresUnitOfWork(engine), DEFAULT_BOOK, [usage], clock=lambda: now
    )


async def close(engine: AsyncEngine, as_of: datetime, **kw: Any) -> list[tuple[str, datetime]]:
    closed = await close_due_periods(
        lambda: PostgresUnitOfWork(engine), DEFAULT_BOOK, as_of=as_of, grace=GRACE, **kw
    )
    return [(c.account, c.period.start) for c in closed]


def watermark(sql: psycopg.Connection, account: str) -> tuple[datetime, datetime]:
    row = sql.execute(
        "SELECT close_from, close_due_at FROM accounts WHERE account_id = %s", (account,)
    ).fetchone()
    assert row is not None
    return row[0], row[1]


async def test_the_watermark_follows_the_closes(
    engine: AsyncEngine, sql: psycopg.Connection
) -> None:
    """A new account's watermark is its first month; each close moves it one period on;
    a round with nothing due writes nothing."""
    await record(engine, "acct_w", OCT_10, now=OCT_10)
    assert watermark(sql, "acct_w") == (utc(2026, 10), utc(2026, 11))
    assert await close(engine, utc(2026, 12, 2)) == [
        ("acct_w", utc(2026, 10)),
        ("acct_w", utc(2026, 11)),
    ]
    assert watermark(sql, "acct_w") == (utc(2026, 12), utc(2027, 1))
    assert await close(engine, utc(2026, 12, 20)) == []


async def test_late_usage_before_the_first_invoice_is_closed(
    engine: AsyncEngine, sql: psycopg.Connection
) -> None:
    """An account created in December, its December closed; usage for October arrives in
    January: the watermark goes back to October, and October and November are closed."""
    await grant_credits(
        lambda: PostgresUnitOfWork(engine),
        DEFAULT_BOOK,
        account="acct_l",
        amount=Decimal(5),
        source=CreditSource.PROMOTIONAL,
        key="k",
        note="",
        now=DEC_5,
    )
    assert await close(engine, utc(2027, 1, 2), account="acct_l") == [("acct_l", utc(2026, 12))]
    await record(engine, "acct_l", OCT_10, now=utc(2027, 1, 3))
    assert watermark(sql, "acct_l") == (utc(2026, 10), utc(2026, 11))
    assert await close(engine, utc(2027, 1, 4), account="acct_l") == [
        ("acct_l", utc(2026, 10)),
        ("acct_l", utc(2026, 11)),
    ]
    assert watermark(sql, "acct_l") == (utc(2027, 1), utc(2027, 2))


async def test_late_usage_of_an_invoiced_month_leaves_the_watermark(
    engine: AsyncEngine, sql: psycopg.Connection
) -> None:
    """Usage for a month already invoiced is an adjustment for the next invoice: the
    watermark stays where it is."""
    await record(engine, "acct_i", OCT_10, now=OCT_10)
    await close(engine, utc(2026, 11, 2))
    before = watermark(sql, "acct_i")
    await record(engine, "acct_i", OCT_10 + timedelta(days=1), now=utc(2026, 11, 3))
    assert watermark(sql, "acct_i") == before


async def test_a_row_without_a_watermark_is_worked_out(
    engine: AsyncEngine, sql: psycopg.Connection
) -> None:
    """An account written by an older worker (watermark at -infinity) is closed from its
    first month, and gets a watermark."""
    sql.execute(
        "INSERT INTO accounts (account_id, plan, created_at) VALUES ('acct_old', 'FREE', %s)",
        (utc(2026, 9, 20),),
    )
    assert await close(engine, utc(2026, 11, 2)) == [
        ("acct_old", utc(2026, 9)),
        ("acct_old", utc(2026, 10)),
    ]
    assert watermark(sql, "acct_old") == (utc(2026, 11), utc(2026, 12))


async def test_a_round_reads_only_the_accounts_that_are_due(
    engine: AsyncEngine, sql: psycopg.Connection
) -> None:
    """20,000 accounts with eleven months invoiced each and five with November due: the
    round closes those five, and its due query reads five account rows through the index,
    none of the others and no invoice."""
    sql.execute(
        "INSERT INTO accounts (account_id, plan, created_at, close_from, close_due_at) "
        "SELECT 'h' || n, 'FREE', '2026-01-05T00:00:00Z', "
        "CASE WHEN n <= 5 THEN timestamptz '2026-11-01T00:00:00Z' ELSE '2026-12-01T00:00:00Z' END, "
        "CASE WHEN n <= 5 THEN timestamptz '2026-12-01T00:00:00Z' ELSE '2027-01-01T00:00:00Z' END "
        "FROM generate_series(1, 20000) AS n"
    )
    sql.execute(
        "INSERT INTO invoices (invoice_id, account_id, period_start, period_end, status, plan, "
        "currency, subtotal, credits_applied, total, pricebook_version) "
        "SELECT 'inv-' || to_char(m, 'YYYYMM') || '-h' || n, 'h' || n, m, m + interval '1 month', "
        "'paid', 'FREE', 'usd', 0, 0, 0, %s "
        "FROM generate_series(1, 20000) AS n, generate_series(timestamptz '2026-01-01T00:00:00Z', "
        "'2026-11-01T00:00:00Z', interval '1 month') AS m "
        "WHERE NOT (n <= 5 AND m = '2026-11-01T00:00:00Z')",
        (DEFAULT_BOOK.version,),
    )
    sql.execute("ANALYZE accounts")
    sql.execute("ANALYZE invoices")
    as_of = utc(2026, 12, 1) + timedelta(hours=2)
    async with engine.connect() as conn:
        plan = (
            await conn.execute(
                text(f"EXPLAIN (ANALYZE, FORMAT JSON) {DUE_ACCOUNTS.text}"),
                {"cutoff": as_of - GRACE, "account": None, "limit": 500},
            )
        ).scalar_one()
    document = plan if isinstance(plan, list) else json.loads(plan)
    nodes = list(_nodes(document[0]["Plan"]))
    scans = [n for n in nodes if n["Node Type"].endswith("Scan") and n["Actual Loops"] > 0]
    assert [(n.get("Relation Name"), n.get("Index Name")) for n in scans] == [
        ("accounts", "accounts_close_due_at")
    ]
    assert scans[0]["Actual Rows"] == 5
    closed = await close(engine, as_of)
    assert sorted(closed) == sorted((f"h{n}", utc(2026, 11)) for n in range(1, 6))
    assert await close(engine, as_of) == []


def _nodes(node: dict[str, Any]) -> Any:
    yield node
    for child in node.get("Plans", []):
        yield from _nodes(child)


async def test_the_migration_sets_watermarks_from_the_history(empty_database_url: str) -> None:
    """On a database at the previous revision: an account invoiced through October gets
    November; one with late October usage and no October invoice gets October; one on a
    cycle is due at once, so its first round works it out."""
    url = make_url(empty_database_url)
    with admin() as conn:
        conn.execute(f'CREATE DATABASE "{url.database}"')
    config = alembic_config(url)
    command.upgrade(config, "0005_period_cycles")
    with psycopg.connect(libpq_url(empty_database_url), autocommit=True) as sql:
        register(sql, DEFAULT_BOOK)
        sql.execute(
            "INSERT INTO accounts (account_id, plan, created_at) VALUES "
            "('cal', 'FREE', '2026-08-03Z'), ('late', 'FREE', '2026-11-03Z'), "
            "('cyc', 'FREE', '2026-08-03Z')"
        )
        for account, start in (("cal", 8), ("cal", 9), ("cal", 10), ("late", 11), ("cyc", 8)):
            sql.execute(
                "INSERT INTO invoices (invoice_id, account_id, period_start, period_end, status,"
                " plan, currency, subtotal, credits_applied, total, pricebook_version) VALUES "
                "(%s, %s, %s, %s, 'open', 'FREE', 'usd', 0, 0, 0, %s)",
                (
                    f"i-{account}-{start}",
                    account,
                    utc(2026, start),
                    utc(2026, start + 1),
                    DEFAULT_BOOK.version,
                ),
            )
        sql.execute(
            "INSERT INTO usage_aggregates (account_id, meter, period_start, period_end, quantity,"
            " event_count) VALUES ('late', 'tokens', %s, %s, 10, 1)",
            (utc(2026, 10), utc(2026, 11)),
        )
        sql.execute(
            "INSERT INTO account_period_cycles (account_id, effective_from, anchor, months) "
            "VALUES ('cyc', %s, %s, 1)",
            (utc(2026, 9), utc(2026, 9, 15)),
        )
    command.upgrade(config, "head")
    with psycopg.connect(libpq_url(empty_database_url)) as sql:
        found = sql.execute("SELECT account_id, close_from, close_due_at FROM accounts")
        rows = {a: (f, d) for a, f, d in found.fetchall()}
    assert rows["cal"] == (utc(2026, 11), utc(2026, 12))
    assert rows["late"] == (utc(2026, 10), utc(2026, 11))
    assert rows["cyc"] == (utc(2026, 9), utc(2026, 9))

"""Money details checked against figures worked out by hand, on real PostgreSQL: credits
applied are only what grants paid, a shortfall is its own figure; dimension values are
told apart by kind; a late event is paid by its period's plan grant until the close."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.ext.asyncio import AsyncEngine

from billing_worker.adapters.postgres.database import create_engine_for
from billing_worker.adapters.postgres.pricebooks import register_pricebook
from billing_worker.adapters.postgres.reports import period_report
from billing_worker.adapters.postgres.unit_of_work import PostgresUnitOfWork
from billing_worker.adapters.pricebook_file import default_pricebook_text, parse_pricebook
from billing_worker.domain.periods import calendar_month_of
from billing_worker.domain.pricebook import CreditSource, PriceBook
from billing_worker.domain.usage import UsageRecord
from billing_worker.entrypoints import cli
from billing_worker.service.accounts import grant_credits
from billing_worker.service.invoices import close_due_periods
from billing_worker.service.record_usage import record_usage_batch
from tests.conftest import libpq_url
from tests.pricebooks import DEFAULT_BOOK

NOV_15 = datetime(2026, 11, 15, 12, tzinfo=UTC)
DEC_1 = datetime(2026, 12, 1, tzinfo=UTC)
GRACE = timedelta(hours=1)
EXPONENT = r"\b\d+(\.\d+)?E[+-]?\d+\b"  # how Decimal writes 5E-7
_ids = iter(range(1, 10**9))


def book_with(*replacements: tuple[str, str], version: str) -> PriceBook:
    text = default_pricebook_text().replace('version = "2026-11-launch"', f'version = "{version}"')
    for old, new in replacements:
        assert old in text, old
        text = text.replace(old, new, 1)
    return parse_pricebook(text)


# FREE grants 5 credits a period; an API call costs 0.25 credits
CREDITS_BOOK = book_with(
    ("credit_grant = 100", "credit_grant = 5"),
    ("api_calls = 1", 'api_calls = "0.25"'),
    version="test-credits-1",
)
NO_GRANT_BOOK = book_with(
    ("credit_grant = 100", "credit_grant = 0"),
    ("api_calls = 1", 'api_calls = "0.25"'),
    ("low_balance = 100", 'low_balance = 100\nshortfall_price = "0.04"'),
    version="test-credits-2",
)
DIMENSIONS_BOOK = book_with(
    (
        '[prices.inference_tokens.by_value."gpt-4"]',
        '[prices.inference_tokens.by_value."null"]\nmodel = "per_unit"\nunit_price = "100"\n'
        '[prices.inference_tokens.by_value."7"]\nmodel = "per_unit"\nunit_price = "10"\n'
        '[prices.inference_tokens.by_value."gpt-4"]',
    ),
    version="test-dimensions-1",
)


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    eng = create_engine_for(database_url, pool_size=2)
    for book in (CREDITS_BOOK, NO_GRANT_BOOK, DIMENSIONS_BOOK):
        await register_pricebook(eng, book)
    yield eng
    await eng.dispose()


def event(
    event_type: str, account: str, at: datetime, quantity: str = "1", **data: Any
) -> UsageRecord:
    return UsageRecord(
        "svc", f"m{next(_ids)}", event_type, account, at, Decimal(quantity), dimensions=data
    )


async def record(
    engine: AsyncEngine, book: PriceBook, records: list[UsageRecord], now: datetime
) -> None:
    await record_usage_batch(lambda: PostgresUnitOfWork(engine), book, records, clock=lambda: now)


async def close(engine: AsyncEngine, book: PriceBook, account: str, as_of: datetime) -> None:
    await close_due_periods(
        lambda: PostgresUnitOfWork(engine), book, as_of=as_of, grace=GRACE, account=account
    )


def invoice_of(sql: psycopg.Connection, account: str) -> tuple[Decimal, Decimal, Decimal]:
    row = sql.execute(
        "SELECT credits_applied, credits_shortfall, total FROM invoices WHERE account_id = %s",
        (account,),
    ).fetchone()
    assert row is not None
    return row[0], row[1], row[2]


def ready_data(sql: psycopg.Connection, account: str) -> dict[str, Any]:
    row = sql.execute(
        "SELECT payload -> 'data' FROM outbox WHERE event_type = 'invoice.ready' AND subject = %s",
        (account,),
    ).fetchone()
    assert row is not None
    return dict(row[0])


async def test_usage_without_grants_is_a_shortfall_not_credits_applied(
    engine: AsyncEngine, sql: psycopg.Connection
) -> None:
    """No grant at all, 12 calls at 0.25: 3 credits short, 0 applied; at 0.04 a credit
    the shortfall costs 0.12, on its own line; invoice.ready and the report agree."""
    calls = [event("api.call", "acct_none", NOV_15) for _ in range(12)]
    await record(engine, NO_GRANT_BOOK, calls, now=NOV_15)
    await close(engine, NO_GRANT_BOOK, "acct_none", DEC_1 + 2 * GRACE)
    assert invoice_of(sql, "acct_none") == (Decimal(0), Decimal("3.00"), Decimal("0.12"))
    data = ready_data(sql, "acct_none")
    assert (data["credits_applied"], data["credits_shortfall"], data["total"]) == (
        "0",
        "3.00",
        "0.12",
    )
    assert data["lines"][-1]["description"] == "3 credits not covered by a grant"
    async with engine.connect() as conn:
        report = await period_report(conn, calendar_month_of(NOV_15))
    assert report["credits"] == {"applied": "0", "shortfall": "3.00"}
    assert {"meter": "(credit shortfall)", "currency": "usd", "revenue": "0.12"} in report[
        "by_meter"
    ]


async def test_credits_applied_never_exceed_the_grants(
    engine: AsyncEngine, sql: psycopg.Connection
) -> None:
    """A promotional grant of 35.104 and usage costing 48.086905 credits (after the
    period's plan grant of 5): applied = 35.104 + 5, short = 7.982905; applied plus short
    is the period's credit cost."""
    await grant_credits(
        lambda: PostgresUnitOfWork(engine),
        CREDITS_BOOK,
        account="acct_g",
        amount=Decimal("35.104"),
        source=CreditSource.PROMOTIONAL,
        key="g",
        note="",
        now=NOV_15,
    )
    calls = [event("api.call", "acct_g", NOV_15, quantity="192.34762")]
    await record(engine, CREDITS_BOOK, calls, now=NOV_15)
    await close(engine, CREDITS_BOOK, "acct_g", DEC_1 + 2 * GRACE)
    applied, short, _ = invoice_of(sql, "acct_g")
    assert (applied, short) == (Decimal("40.104"), Decimal("7.982905"))
    assert applied + short == Decimal("192.34762") * Decimal("0.25")


async def test_dimension_values_are_told_apart_by_kind(
    engine: AsyncEngine, sql: psycopg.Connection
) -> None:
    """One token each with model absent, JSON null, the string "null", the number 7 and
    the string "7": five lines; only the strings get the by_value prices (100 and 10)."""
    tokens = [
        event("ai.inference", "acct_d", NOV_15, tokens=1),
        event("ai.inference", "acct_d", NOV_15, tokens=1, model=None),
        event("ai.inference", "acct_d", NOV_15, tokens=1, model="null"),
        event("ai.inference", "acct_d", NOV_15, tokens=1, model=7),
        event("ai.inference", "acct_d", NOV_15, tokens=1, model="7"),
    ]
    await record(engine, DIMENSIONS_BOOK, tokens, now=NOV_15)
    await close(engine, DIMENSIONS_BOOK, "acct_d", DEC_1 + 2 * GRACE)
    rows = sql.execute(
        "SELECT dimension_value, dimension_kind, quantity, amount FROM invoice_lines "
        "WHERE meter = 'inference_tokens' ORDER BY dimension_value, dimension_kind"
    ).fetchall()
    assert rows == [
        ("", "absent", Decimal(1), Decimal("0.00")),
        ("7", "number", Decimal(1), Decimal("0.00")),
        ("7", "string", Decimal(1), Decimal("10.00")),
        ("null", "null", Decimal(1), Decimal("0.00")),
        ("null", "string", Decimal(1), Decimal("100.00")),
    ]
    assert invoice_of(sql, "acct_d")[2] == Decimal("110.00")


async def test_late_usage_of_each_kind_is_adjusted_on_its_own(
    engine: AsyncEngine, sql: psycopg.Connection
) -> None:
    """After the close, one more token with model absent and one with the string "null":
    the next invoice adjusts each on its own line (0.00 and 100.00)."""
    first = [
        event("ai.inference", "acct_a", NOV_15, tokens=1),
        event("ai.inference", "acct_a", NOV_15, tokens=1, model="null"),
    ]
    await record(engine, DIMENSIONS_BOOK, first, now=NOV_15)
    await close(engine, DIMENSIONS_BOOK, "acct_a", DEC_1 + 2 * GRACE)
    late = [
        event("ai.inference", "acct_a", NOV_15, tokens=1),
        event("ai.inference", "acct_a", NOV_15, tokens=1, model="null"),
    ]
    await record(engine, DIMENSIONS_BOOK, late, now=DEC_1 + 3 * GRACE)
    await close(engine, DIMENSIONS_BOOK, "acct_a", datetime(2027, 1, 1, 2, tzinfo=UTC))
    rows = sql.execute(
        "SELECT dimension_value, dimension_kind, quantity, amount FROM invoice_lines "
        "WHERE kind = 'adjustment' AND meter = 'inference_tokens' ORDER BY dimension_kind"
    ).fetchall()
    assert rows == [
        ("", "absent", Decimal(2), Decimal("0.00")),
        ("null", "string", Decimal(2), Decimal("100.00")),
    ]


async def test_a_late_event_is_paid_by_its_periods_plan_grant_until_the_close(
    engine: AsyncEngine, sql: psycopg.Connection
) -> None:
    """FREE grants 5 credits a period. 8 calls dated Nov 15 arrive on Dec 1 at 00:30,
    before November is closed: the November grant pays 2 credits, nothing is short. Once
    November is closed its grant is over: 4 more calls for November are all short."""
    calls = [event("api.call", "acct_l", NOV_15) for _ in range(8)]
    await record(engine, CREDITS_BOOK, calls, now=DEC_1 + timedelta(minutes=30))
    burns = sql.execute(
        "SELECT kind, sum(credits) FROM credit_ledger WHERE account_id = 'acct_l' "
        "AND kind IN ('burn', 'shortfall') GROUP BY kind"
    ).fetchall()
    assert burns == [("burn", Decimal("-2.00"))]
    await close(engine, CREDITS_BOOK, "acct_l", DEC_1 + 2 * GRACE)
    assert invoice_of(sql, "acct_l")[:2] == (Decimal("2.00"), Decimal(0))
    expired = sql.execute(
        "SELECT credits, effective_at FROM credit_ledger WHERE account_id = 'acct_l' "
        "AND kind = 'expiry'"
    ).fetchall()
    assert expired == [(Decimal("-3.00"), DEC_1)]
    more = [event("api.call", "acct_l", NOV_15) for _ in range(4)]
    await record(engine, CREDITS_BOOK, more, now=DEC_1 + 3 * GRACE)
    short = sql.execute(
        "SELECT sum(credits) FROM credit_ledger WHERE account_id = 'acct_l' AND kind = 'shortfall'"
    ).fetchone()
    assert short == (Decimal("1.00"),)


amounts = st.decimals(min_value=0, max_value=500, places=3, allow_nan=False)


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(grant=amounts, calls=st.lists(amounts.filter(lambda d: d > 0), min_size=1, max_size=4))
def test_applied_plus_short_is_the_credit_cost(
    database_url: str, grant: Decimal, calls: list[Decimal]
) -> None:
    """For any grant and calls (each example a fresh account in the one database): on the
    invoice, credits applied plus credits short equal
    the period's credit cost, and applied never exceeds what grants held (the plan's 5
    plus the grant)."""
    account = f"acct_p{next(_ids)}"

    async def scenario() -> tuple[Decimal, Decimal]:
        engine = create_engine_for(database_url, pool_size=1)
        try:
            await register_pricebook(engine, CREDITS_BOOK)
            if grant > 0:
                await grant_credits(
                    lambda: PostgresUnitOfWork(engine),
                    CREDITS_BOOK,
                    account=account,
                    amount=grant,
                    source=CreditSource.PROMOTIONAL,
                    key=account,
                    note="",
                    now=NOV_15,
                )
            records = [event("api.call", account, NOV_15, quantity=str(q)) for q in calls]
            await record(engine, CREDITS_BOOK, records, now=NOV_15)
            await close(engine, CREDITS_BOOK, account, DEC_1 + 2 * GRACE)
        finally:
            await engine.dispose()
        with psycopg.connect(libpq_url(database_url)) as sql:
            applied, short, _ = invoice_of(sql, account)
        return applied, short

    applied, short = asyncio.run(scenario())
    assert applied + short == sum(calls, Decimal(0)) * Decimal("0.25")
    assert 0 <= applied <= grant + 5
    assert short >= 0


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch, database_url: str, restore_logging: None) -> None:
    """The CLI on this test's database with the built-in price book."""
    monkeypatch.setenv("BILLING_DATABASE_URL", database_url)
    monkeypatch.delenv("BILLING_PRICEBOOK", raising=False)


def shown(capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    assert cli.main(list(argv)) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.usefixtures("cli_env")
async def test_explain_lists_only_the_entries_of_a_lines_value(
    engine: AsyncEngine, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two gpt-4 and three llama-3 inferences: the gpt-4 line is explained by its two
    entries, the llama-3 line by its three, none of the other model's."""
    tokens = [
        *(event("ai.inference", "acct_x", NOV_15, tokens=10, model="gpt-4") for _ in range(2)),
        *(event("ai.inference", "acct_x", NOV_15, tokens=10, model="llama-3") for _ in range(3)),
    ]
    await record(engine, DEFAULT_BOOK, tokens, now=NOV_15)
    await close(engine, DEFAULT_BOOK, "acct_x", DEC_1 + 2 * GRACE)
    document = await asyncio.to_thread(
        shown, capsys, "invoice", "show", "inv-202611-acct_x", "--explain", "--json"
    )
    by_value = {
        line["dimension_value"]: line
        for line in document["lines"]
        if line["meter"] == "inference_tokens"
    }
    ids = {t.event_id for t in tokens}
    for model, count in (("gpt-4", 2), ("llama-3", 3)):
        line = by_value[model]
        assert line["entries_behind"] == count
        listed = {e["event_id"] for e in line["ledger_entries"]}
        assert len(listed) == count
        assert listed <= ids
        assert {t.event_id for t in tokens if t.dimensions["model"] == model} == listed


@pytest.mark.usefixtures("cli_env")
async def test_decimals_are_written_in_plain_notation(
    engine: AsyncEngine, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A quantity of 3.12E-16 tokens reads 0.000000000000000312 in invoice show --json, and
    a unit price of 5E-7 reads 0.0000005 in pricebook check --json: no exponents."""
    await record(
        engine,
        DEFAULT_BOOK,
        [event("chat.tokens", "acct_e", NOV_15, quantity="0.000000000000000312")],
        now=NOV_15,
    )
    await close(engine, DEFAULT_BOOK, "acct_e", DEC_1 + 2 * GRACE)
    out = json.dumps(
        await asyncio.to_thread(shown, capsys, "invoice", "show", "inv-202611-acct_e", "--json")
    )
    assert "0.000000000000000312" in out
    assert not re.search(EXPONENT, out)
    book = tmp_path / "book.toml"
    book.write_text(
        default_pricebook_text().replace('unit_price = "0.002"', 'unit_price = "0.0000005"'),
        encoding="utf-8",
    )
    checked = json.dumps(
        await asyncio.to_thread(shown, capsys, "pricebook", "check", str(book), "--json")
    )
    assert "0.0000005" in checked
    assert not re.search(EXPONENT, checked)

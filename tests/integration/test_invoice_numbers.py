"""Invoice numbers on real PostgreSQL: given in the transaction that makes an invoice open
(the close, or a draft's finalize), one gap-free series per year of issue, taken back by
a rollback, unique under racing closers; and numbered from the start by migration 0012."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
from alembic import command
from sqlalchemy import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from billing_worker.adapters.postgres.database import (
    alembic_config,
    create_engine_for,
    prepare_database,
)
from billing_worker.adapters.postgres.invoice_document import invoice_document
from billing_worker.adapters.postgres.unit_of_work import PostgresUnitOfWork
from billing_worker.domain.periods import calendar_month_of
from billing_worker.domain.usage import UsageRecord
from billing_worker.service.invoices import (
    apply_invoice_status,
    close_due_periods,
    close_period,
    move_invoice,
)
from billing_worker.service.record_usage import record_usage_batch
from tests.clock import child_env
from tests.conftest import libpq_url
from tests.integration.test_invoice_pdf import pdftotext, words
from tests.pricebooks import DEFAULT_BOOK, register

OCT_10 = datetime(2026, 10, 10, 12, tzinfo=UTC)
NOV_2 = datetime(2026, 11, 2, 12, tzinfo=UTC)
GRACE = timedelta(hours=1)


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    eng = create_engine_for(database_url, pool_size=8)
    yield eng
    await eng.dispose()


def uow_of(engine: AsyncEngine) -> Any:
    return lambda: PostgresUnitOfWork(engine)


async def use(engine: AsyncEngine, *accounts: str, at: datetime = OCT_10) -> None:
    """One website built by each account at ``at``."""
    records = [
        UsageRecord("svc", f"{a}-{at:%Y%m}", "generator.website_generated", a, at, Decimal(1))
        for a in accounts
    ]
    await record_usage_batch(uow_of(engine), DEFAULT_BOOK, records, clock=lambda: at)


def numbers(sql: psycopg.Connection) -> dict[str, str | None]:
    rows = sql.execute("SELECT invoice_id, number FROM invoices").fetchall()
    return {str(invoice): number for invoice, number in rows}


def announced(sql: psycopg.Connection) -> dict[str, str | None]:
    rows = sql.execute(
        "SELECT payload -> 'data' FROM outbox WHERE event_type = 'invoice.ready'"
    ).fetchall()
    return {row[0]["invoice_id"]: row[0].get("number") for row in rows}


async def test_a_close_numbers_the_invoice_and_announces_it(
    engine: AsyncEngine, sql: psycopg.Connection
) -> None:
    """Closed open, invoices are numbered 2026-000001, -000002, ... in the order they
    close, and invoice.ready and the invoice document carry the number."""
    await use(engine, "acct_a", "acct_b", "acct_c")
    closed = await close_due_periods(uow_of(engine), DEFAULT_BOOK, as_of=NOV_2, grace=GRACE)
    expected = {c.invoice_id: f"2026-{n:06d}" for n, c in enumerate(closed, start=1)}
    assert len(expected) == 3
    assert numbers(sql) == expected
    assert announced(sql) == expected
    async with engine.connect() as conn:
        document = await invoice_document(conn, DEFAULT_BOOK, "inv-202610-acct_b", explain=False)
    assert document is not None
    assert document["number"] == expected["inv-202610-acct_b"]


async def test_a_draft_is_numbered_when_finalized_and_only_then(
    engine: AsyncEngine, sql: psycopg.Connection
) -> None:
    """Closed for review, drafts have no number; finalizing gives the next one (in the
    order of finalizing, announced with it), and a draft voided unseen never gets one."""
    await use(engine, "acct_a", "acct_b", "acct_c")
    await close_due_periods(uow_of(engine), DEFAULT_BOOK, as_of=NOV_2, grace=GRACE, review=True)
    assert set(numbers(sql).values()) == {None}
    for invoice, status in (("acct_b", "open"), ("acct_c", "void"), ("acct_a", "open")):
        await move_invoice(
            uow_of(engine),
            DEFAULT_BOOK,
            invoice_id=f"inv-202610-{invoice}",
            status=status,
            cause="test",
            now=NOV_2,
        )
    expected = {"inv-202610-acct_b": "2026-000001", "inv-202610-acct_a": "2026-000002"}
    assert numbers(sql) == {**expected, "inv-202610-acct_c": None}
    assert announced(sql) == expected


async def test_a_rolled_back_finalize_gives_its_number_back(
    engine: AsyncEngine, sql: psycopg.Connection
) -> None:
    """A finalize whose transaction rolls back leaves no gap: the next invoice to open
    takes the number it had taken."""
    await use(engine, "acct_a", "acct_b")
    await close_due_periods(uow_of(engine), DEFAULT_BOOK, as_of=NOV_2, grace=GRACE, review=True)
    async with PostgresUnitOfWork(engine) as uow:
        await apply_invoice_status(
            uow, DEFAULT_BOOK, invoice_id="inv-202610-acct_a", status="open", cause="t", now=NOV_2
        )
        # left without a commit: rolled back
    await move_invoice(
        uow_of(engine),
        DEFAULT_BOOK,
        invoice_id="inv-202610-acct_b",
        status="open",
        cause="t",
        now=NOV_2,
    )
    assert numbers(sql) == {"inv-202610-acct_a": None, "inv-202610-acct_b": "2026-000001"}
    assert sql.execute("SELECT year, last_number FROM invoice_number_series").fetchall() == [
        (2026, 1)
    ]


async def test_racing_closers_share_one_gap_free_series(
    engine: AsyncEngine, sql: psycopg.Connection
) -> None:
    """Twenty periods, each closed by two closers at once: twenty invoices numbered
    exactly 2026-000001 to 2026-000020, none twice, none skipped."""
    accounts = [f"acct_{n:02d}" for n in range(20)]
    await use(engine, *accounts)
    october = calendar_month_of(OCT_10)
    await asyncio.gather(
        *(
            close_period(uow_of(engine), DEFAULT_BOOK, account=a, period=october, now=NOV_2)
            for a in accounts * 2
        )
    )
    assert sorted(map(str, numbers(sql).values())) == [f"2026-{n:06d}" for n in range(1, 21)]
    assert sql.execute("SELECT last_number FROM invoice_number_series").fetchall() == [(20,)]


async def test_each_year_of_issue_has_its_own_series(
    engine: AsyncEngine, sql: psycopg.Connection
) -> None:
    """An invoice issued in January 2027 starts the 2027 series at 000001, whatever the
    period it bills."""
    await use(engine, "acct_a")
    await close_due_periods(uow_of(engine), DEFAULT_BOOK, as_of=NOV_2, grace=GRACE)
    await use(engine, "acct_a", at=datetime(2026, 11, 20, tzinfo=UTC))
    await close_due_periods(
        uow_of(engine), DEFAULT_BOOK, as_of=datetime(2027, 1, 1, 6, tzinfo=UTC), grace=GRACE
    )
    assert numbers(sql) == {
        "inv-202610-acct_a": "2026-000001",
        "inv-202611-acct_a": "2027-000001",
        "inv-202612-acct_a": "2027-000002",
    }


def test_the_migration_numbers_invoices_issued_before_it(empty_database_url: str) -> None:
    """Invoices stored before numbering are numbered by year and order of closing; drafts
    and drafts voided unseen stay unnumbered, and the series go on from there."""
    prepare_database(empty_database_url)
    config = alembic_config(make_url(empty_database_url))
    command.downgrade(config, "0011_payment_intents")
    rows = [  # invoice, status, closed at
        ("inv-c", "paid", "2026-01-02T00:00Z"),
        ("inv-a", "open", "2025-12-01T00:00Z"),
        ("inv-b", "void", "2026-01-01T00:00Z"),
        ("inv-d", "draft", "2026-01-03T00:00Z"),
        ("inv-e", "void", "2026-01-04T00:00Z"),
    ]
    with psycopg.connect(libpq_url(empty_database_url), autocommit=True) as sql:
        register(sql, DEFAULT_BOOK)
        sql.execute("INSERT INTO accounts (account_id, plan) VALUES ('acct_m', 'FREE')")
        for n, (invoice, status, closed_at) in enumerate(rows):
            sql.execute(
                "INSERT INTO invoices (invoice_id, account_id, period_start, period_end, status,"
                " plan, currency, subtotal, credits_applied, total, pricebook_version, closed_at)"
                " VALUES (%s, 'acct_m', %s, %s, %s, 'FREE', 'usd', 0, 0, 0, %s, %s)",
                (
                    invoice,
                    datetime(2025, 1 + n, 1, tzinfo=UTC),
                    datetime(2025, 2 + n, 1, tzinfo=UTC),
                    status,
                    DEFAULT_BOOK.version,
                    closed_at,
                ),
            )
        sql.execute(
            "INSERT INTO account_ledger (account_id, kind, details, effective_at) VALUES "
            "('acct_m', 'invoice_status', %s, now())",
            ('{"invoice_id": "inv-e", "from": "draft", "to": "void", "cause": "t"}',),
        )
        command.upgrade(config, "head")
        assert numbers(sql) == {
            "inv-a": "2025-000001",
            "inv-b": "2026-000001",
            "inv-c": "2026-000002",
            "inv-d": None,
            "inv-e": None,
        }
        series = sql.execute("SELECT year, last_number FROM invoice_number_series ORDER BY year")
        assert series.fetchall() == [(2025, 1), (2026, 2)]


def cli(database_url: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "billing_worker", *argv],
        env=child_env(BILLING_DATABASE_URL=database_url),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_the_pdf_and_invoice_show_carry_the_number_and_stripe_customer(
    engine: AsyncEngine, sql: psycopg.Connection, database_url: str, tmp_path: Path
) -> None:
    """The PDF prints the invoice's number and bills the account's Stripe customer;
    `invoice show` names the number."""
    await use(engine, "acct_a")
    await close_due_periods(uow_of(engine), DEFAULT_BOOK, as_of=NOV_2, grace=GRACE)
    sql.execute(
        "INSERT INTO stripe_customers (customer_id, account_id) VALUES ('cus_123', 'acct_a')"
    )
    out = tmp_path / "inv.pdf"
    done = cli(database_url, "invoice", "pdf", "inv-202610-acct_a", "-o", str(out))
    assert done.returncode == 0, done.stderr
    text = words(pdftotext(out.read_bytes()))
    assert "Number 2026-000001 Invoice inv-202610-acct_a" in text
    assert "Account acct_a Stripe customer cus_123" in text
    shown = cli(database_url, "invoice", "show", "inv-202610-acct_a")
    assert "invoice inv-202610-acct_a (number 2026-000001)" in shown.stdout, shown.stderr

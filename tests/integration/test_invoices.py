"""Closing periods into invoices on real PostgreSQL: exact amounts, exactly once under
racing closers, all-or-nothing, late usage as adjustments, status moves."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from billing_worker.adapters.postgres.database import create_engine_for
from billing_worker.adapters.postgres.unit_of_work import PostgresUnitOfWork
from billing_worker.domain.errors import PermanentError
from billing_worker.domain.usage import UsageRecord
from billing_worker.service.accounts import change_plan
from billing_worker.service.invoices import close_due_periods, move_invoice
from billing_worker.service.record_usage import record_usage_batch
from tests.pricebooks import DEFAULT_BOOK

OCT_10 = datetime(2026, 10, 10, 12, tzinfo=UTC)
NOV_2 = datetime(2026, 11, 2, 12, tzinfo=UTC)
GRACE = timedelta(hours=1)
_ids = iter(range(1, 10**9))


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    eng = create_engine_for(database_url, pool_size=4)
    yield eng
    await eng.dispose()


def event(
    event_type: str, quantity: int, account: str = "acct_1", at: datetime = OCT_10
) -> UsageRecord:
    return UsageRecord(
        source="svc",
        event_id=f"e{next(_ids)}",
        event_type=event_type,
        account=account,
        occurred_at=at,
        quantity=Decimal(quantity),
    )


async def record(engine: AsyncEngine, records: list[UsageRecord], now: datetime = OCT_10) -> None:
    await record_usage_batch(
        lambda: PostgresUnitOfWork(engine), DEFAULT_BOOK, records, clock=lambda: now
    )


async def close(engine: AsyncEngine, as_of: datetime = NOV_2, **kw: Any) -> list[Any]:
    return await close_due_periods(
        lambda: PostgresUnitOfWork(engine), DEFAULT_BOOK, as_of=as_of, grace=GRACE, **kw
    )


def ready(sql: psycopg.Connection) -> list[dict[str, Any]]:
    rows = sql.execute(
        "SELECT payload FROM outbox WHERE event_type = 'invoice.ready' ORDER BY outbox_id"
    ).fetchall()
    return [row[0] for row in rows]


async def test_usage_closes_into_an_exact_invoice(
    engine: AsyncEngine, sql: psycopg.Connection
) -> None:
    """October usage on FREE: 3 websites (1.50) and 7 images (0.70) -> total 2.20, with an
    invoice_issued ledger entry and invoice.ready carrying the same lines."""
    await record(
        engine, [event("generator.website_generated", 3), event("generator.image_generated", 7)]
    )
    closed = await close(engine)
    assert [(c.invoice_id, c.total) for c in closed] == [("inv-202610-acct_1", "2.20")]
    (payload,) = ready(sql)
    data = payload["data"]
    assert (data["total"], data["subtotal"], data["currency"], data["plan"]) == (
        "2.20",
        "2.20",
        "usd",
        "FREE",
    )
    assert [(x["kind"], x["meter"], x["amount"]) for x in data["lines"]] == [
        ("plan_fee", None, "0.00"),
        ("usage", "images_generated", "0.70"),
        ("usage", "websites_generated", "1.50"),
    ]
    issued = sql.execute(
        "SELECT details->>'invoice_id' FROM account_ledger WHERE kind = 'invoice_issued'"
    ).fetchall()
    assert issued == [("inv-202610-acct_1",)]
    lines = sql.execute(
        "SELECT meter, entries, first_entry_id IS NOT NULL FROM invoice_lines "
        "WHERE kind = 'usage' ORDER BY line_no"
    ).fetchall()
    assert lines == [("images_generated", 1, True), ("websites_generated", 1, True)]


async def test_not_due_before_the_grace_and_closed_once(
    engine: AsyncEngine, sql: psycopg.Connection
) -> None:
    """A period is not closed within its grace; closing again changes nothing."""
    await record(engine, [event("generator.website_generated", 1)])
    assert await close(engine, as_of=datetime(2026, 11, 1, 0, 30, tzinfo=UTC)) == []
    assert len(await close(engine)) == 1
    assert await close(engine) == []
    assert sql.execute("SELECT count(*) FROM invoices").fetchone() == (1,)


async def test_racing_closers_write_one_invoice(
    engine: AsyncEngine, sql: psycopg.Connection
) -> None:
    """Four closers at once on 20 accounts: each period is invoiced exactly once."""
    await record(engine, [event("generator.image_generated", 1, f"acct_{i}") for i in range(20)])
    results = await asyncio.gather(*(close(engine) for _ in range(4)))
    assert sum(len(r) for r in results) == 20
    assert sql.execute("SELECT count(*) FROM invoices").fetchone() == (20,)
    assert len(ready(sql)) == 20


async def test_crash_mid_close_leaves_nothing(
    engine: AsyncEngine, sql: psycopg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failure after the invoice rows are written rolls the whole close back; the next
    close writes it whole."""
    await record(engine, [event("generator.image_generated", 2)])
    from billing_worker.adapters.postgres import account_store  # noqa: PLC0415

    real = account_store.PostgresAccounts.append_entry

    async def crash(self: Any, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError("power cut")

    monkeypatch.setattr(account_store.PostgresAccounts, "append_entry", crash)
    with pytest.raises(RuntimeError):
        await close(engine)
    assert sql.execute("SELECT count(*) FROM invoices").fetchone() == (0,)
    assert sql.execute("SELECT count(*) FROM invoice_lines").fetchone() == (0,)
    assert ready(sql) == []
    monkeypatch.setattr(account_store.PostgresAccounts, "append_entry", real)
    assert len(await close(engine)) == 1
    assert sql.execute("SELECT count(*) FROM invoice_lines").fetchone() == (2,)


async def test_late_usage_goes_on_the_next_invoice_as_an_adjustment(
    engine: AsyncEngine, sql: psycopg.Connection
) -> None:
    """Two websites arrive for October after October was invoiced: November's invoice
    carries a +1.00 adjustment referring to October; October's invoice is untouched."""
    await record(engine, [event("generator.website_generated", 3)])
    await close(engine)
    await record(engine, [event("generator.website_generated", 2)], now=NOV_2)
    closed = await close(engine, as_of=datetime(2026, 12, 2, tzinfo=UTC))
    assert [(c.invoice_id, c.total) for c in closed] == [("inv-202611-acct_1", "1.00")]
    adjustment = sql.execute(
        "SELECT meter, quantity, amount, refers_to_start FROM invoice_lines "
        "WHERE kind = 'adjustment'"
    ).fetchall()
    assert adjustment == [
        ("websites_generated", Decimal(5), Decimal("1.00"), datetime(2026, 10, 1, tzinfo=UTC))
    ]
    october = sql.execute(
        "SELECT total FROM invoices WHERE invoice_id = 'inv-202610-acct_1'"
    ).fetchone()
    assert october == (Decimal("1.50"),)
    # a third close adjusts nothing more
    assert await close(engine, as_of=datetime(2027, 1, 2, tzinfo=UTC))
    assert sql.execute(
        "SELECT count(*) FROM invoice_lines WHERE kind = 'adjustment'"
    ).fetchone() == (1,)


async def test_plan_change_mid_period_is_prorated(
    engine: AsyncEngine, sql: psycopg.Connection
) -> None:
    """FREE until Oct 11, then PRO: 19.90 x 21/31 = 13.48."""
    await record(engine, [event("generator.image_generated", 1)])
    await change_plan(
        lambda: PostgresUnitOfWork(engine),
        DEFAULT_BOOK,
        account="acct_1",
        plan="PRO",
        change_id="c",
        now=datetime(2026, 10, 11, tzinfo=UTC),
    )
    await close(engine)
    fees = sql.execute(
        "SELECT amount FROM invoice_lines WHERE kind = 'plan_fee' ORDER BY line_no"
    ).fetchall()
    assert fees == [(Decimal("0.00"),), (Decimal("13.48"),)]


async def test_status_moves_are_ledger_entries(
    engine: AsyncEngine, sql: psycopg.Connection
) -> None:
    """open -> uncollectible -> void, each a ledger entry; void is final and stays visible."""
    await record(engine, [event("generator.image_generated", 1)])
    await close(engine)
    uow = lambda: PostgresUnitOfWork(engine)  # noqa: E731
    invoice = "inv-202610-acct_1"
    assert await move_invoice(
        uow, DEFAULT_BOOK, invoice_id=invoice, status="uncollectible", cause="operator", now=NOV_2
    ) == ("open", "uncollectible")
    assert await move_invoice(
        uow, DEFAULT_BOOK, invoice_id=invoice, status="void", cause="operator", now=NOV_2
    ) == ("uncollectible", "void")
    with pytest.raises(PermanentError, match="can't become paid"):
        await move_invoice(
            uow, DEFAULT_BOOK, invoice_id=invoice, status="paid", cause="stripe", now=NOV_2
        )
    moves = sql.execute(
        "SELECT details->>'from', details->>'to' FROM account_ledger "
        "WHERE kind = 'invoice_status' ORDER BY entry_id"
    ).fetchall()
    assert moves == [("open", "uncollectible"), ("uncollectible", "void")]
    assert sql.execute("SELECT status FROM invoices").fetchone() == ("void",)


async def test_stripe_invoice_paid_moves_our_invoice(
    engine: AsyncEngine, sql: psycopg.Connection
) -> None:
    """invoice.paid for a Stripe invoice synced from ours (metadata.billing_invoice_id)
    marks ours paid, with a ledger entry naming the Stripe event."""
    from billing_worker.domain.stripe import parse_stripe_event  # noqa: PLC0415
    from billing_worker.service.stripe_events import apply_stripe_event  # noqa: PLC0415
    from tests import stripe_payloads as sp  # noqa: PLC0415

    await record(engine, [event("generator.image_generated", 5)])
    await close(engine)
    stripe_invoice = sp.invoice(
        "in_1",
        customer="cus_1",
        status="paid",
        amount_due=50,
        amount_paid=50,
        billing_invoice_id="inv-202610-acct_1",
    )
    stripe_invoice["metadata"]["account_id"] = "acct_1"
    paid = parse_stripe_event(sp.event("invoice.paid", stripe_invoice, created=1_800_000_000))
    await apply_stripe_event(lambda: PostgresUnitOfWork(engine), DEFAULT_BOOK, paid, now=NOV_2)
    assert sql.execute("SELECT status FROM invoices").fetchone() == ("paid",)
    cause = sql.execute(
        "SELECT details->>'cause' FROM account_ledger WHERE kind = 'invoice_status'"
    ).fetchone()
    assert cause == (f"stripe {paid.event_id}",)


async def test_late_events_follow_the_meter_policy(
    engine: AsyncEngine, sql: psycopg.Connection
) -> None:
    """After October is invoiced: an October image (policy reject) is refused as LATE and
    not recorded, and its redelivery is refused again; an October website (next_invoice)
    is recorded; November events are unaffected."""
    from billing_worker.adapters.pricebook_file import (  # noqa: PLC0415
        default_pricebook_text,
        parse_pricebook,
    )
    from billing_worker.domain.usage import UsageOutcome  # noqa: PLC0415
    from tests.pricebooks import register  # noqa: PLC0415

    text = (
        default_pricebook_text()
        .replace('version = "2026-11-launch"', 'version = "late-reject-1"')
        .replace(
            '[meters.images_generated]\nevent_types = ["generator.image_generated"]',
            '[meters.images_generated]\nevent_types = ["generator.image_generated"]\n'
            'late_events = "reject"',
        )
    )
    book = parse_pricebook(text, "late.toml")
    assert book.meters["images_generated"].late_events == "reject"
    register(sql, book)
    uow = lambda: PostgresUnitOfWork(engine)  # noqa: E731
    await record_usage_batch(
        uow, book, [event("generator.image_generated", 1)], clock=lambda: OCT_10
    )
    await close_due_periods(uow, book, as_of=NOV_2, grace=GRACE)
    late_image = event("generator.image_generated", 4)
    late_site = event("generator.website_generated", 2)
    november = event("generator.image_generated", 1, at=NOV_2)
    outcomes = await record_usage_batch(
        uow, book, [late_image, late_site, november], clock=lambda: NOV_2
    )
    assert outcomes == [UsageOutcome.LATE, UsageOutcome.RECORDED, UsageOutcome.RECORDED]
    again = await record_usage_batch(uow, book, [late_image], clock=lambda: NOV_2)
    assert again == [UsageOutcome.LATE]
    recorded = sql.execute(
        "SELECT meter, period_start, sum(quantity) FROM usage_ledger GROUP BY 1, 2 ORDER BY 2, 1"
    ).fetchall()
    assert recorded == [
        ("images_generated", datetime(2026, 10, 1, tzinfo=UTC), Decimal(1)),
        ("websites_generated", datetime(2026, 10, 1, tzinfo=UTC), Decimal(2)),
        ("images_generated", datetime(2026, 11, 1, tzinfo=UTC), Decimal(1)),
    ]


async def test_late_usage_of_a_per_model_meter_is_adjusted_per_model(
    engine: AsyncEngine, sql: psycopg.Connection
) -> None:
    """gpt-4 inference tokens are priced per model: 1,000 invoiced in October (2.00), 500
    more arrive late -> November carries +1.00 for gpt-4 only; the free model's late
    tokens adjust by 0.00."""

    def inference(tokens: int, model: str, at: datetime = OCT_10) -> UsageRecord:
        return UsageRecord(
            source="svc",
            event_id=f"e{next(_ids)}",
            event_type="ai.inference",
            account="acct_1",
            occurred_at=at,
            quantity=Decimal(1),
            dimensions={"tokens": tokens, "model": model},
        )

    await record(engine, [inference(1000, "gpt-4"), inference(50, "llama-3")])
    first = await close(engine)
    assert [c.total for c in first] == ["2.00"]
    await record(engine, [inference(500, "gpt-4"), inference(10, "llama-3")], now=NOV_2)
    second = await close(engine, as_of=datetime(2026, 12, 2, tzinfo=UTC))
    assert [c.total for c in second] == ["1.00"]
    adjustments = sql.execute(
        "SELECT meter, dimension_value, quantity, amount FROM invoice_lines "
        "WHERE kind = 'adjustment' ORDER BY line_no"
    ).fetchall()
    assert adjustments == [
        ("inference_calls", None, Decimal(4), Decimal("0.00")),
        ("inference_tokens", "gpt-4", Decimal(1500), Decimal("1.00")),
        ("inference_tokens", "llama-3", Decimal(60), Decimal("0.00")),
    ]


async def test_review_closes_drafts_announced_only_when_finalized(
    engine: AsyncEngine, sql: psycopg.Connection
) -> None:
    """With review, a close writes a draft: no invoice.ready, not offered to Stripe sync,
    paid refused. Finalizing moves it to open (a ledger entry) and announces exactly what
    a close without review announces for the same usage."""
    await record(engine, [event("generator.image_generated", 3, account="acct_r")])
    await record(engine, [event("generator.image_generated", 3, account="acct_n")])
    factory = lambda: PostgresUnitOfWork(engine)  # noqa: E731
    await close(engine, account="acct_r", review=True)
    assert sql.execute("SELECT status FROM invoices WHERE account_id = 'acct_r'").fetchall() == [
        ("draft",)
    ]
    assert ready(sql) == []
    async with factory() as uow:
        assert await uow.invoices.to_sync(10) == []
    with pytest.raises(PermanentError, match="draft; it can't become paid"):
        await move_invoice(
            factory, DEFAULT_BOOK, invoice_id="inv-202610-acct_r", status="paid",
            cause="operator", now=NOV_2,
        )  # fmt: skip

    await close(engine, account="acct_n")
    assert await move_invoice(
        factory, DEFAULT_BOOK, invoice_id="inv-202610-acct_r", status="open",
        cause="operator", now=NOV_2,
    ) == ("draft", "open")  # fmt: skip
    announced = {p["subject"]: p["data"] for p in ready(sql)}
    reviewed, direct = announced["acct_r"], announced["acct_n"]
    assert reviewed.pop("invoice_id") == "inv-202610-acct_r"
    assert direct.pop("invoice_id") == "inv-202610-acct_n"
    assert (direct.pop("number"), reviewed.pop("number")) == ("2026-000001", "2026-000002")
    assert reviewed == direct
    assert Decimal(reviewed["total"]) > 0
    moves = sql.execute(
        "SELECT details ->> 'from', details ->> 'to' FROM account_ledger "
        "WHERE kind = 'invoice_status' AND account_id = 'acct_r'"
    ).fetchall()
    assert moves == [("draft", "open")]

"""`billing-worker demo` end to end: a day of usage in, quota events and an invoice out."""

from __future__ import annotations

import re
import subprocess
import sys
import uuid
from datetime import date
from decimal import Decimal

import psycopg
import pytest

from billing_worker.adapters.pricebook_file import load_pricebook
from billing_worker.domain.pricebook import PerUnit, PriceBook
from billing_worker.domain.rating import round_money
from billing_worker.entrypoints.demo_day import DemoDay, demo_day, demo_plan
from tests.clock import child_env
from tests.conftest import AMQP_URL, libpq_url

pytestmark = pytest.mark.slow


def expected_total(book: PriceBook, plan_name: str, usage: DemoDay) -> Decimal:
    """The invoice total worked out from the price book: the plan fee plus, per meter, the
    per-unit price of what exceeds the plan's included quantity, each line rounded once."""
    plan = book.plans[plan_name]
    total = round_money(plan.price, book.currency)
    for meter in book.meters.values():
        quantity = sum(usage.quantity(t) for t in meter.event_types)
        price = book.prices.get(meter.name)
        if price is None or not quantity:
            continue
        assert isinstance(price.model, PerUnit), "this expectation knows per-unit prices only"
        terms = plan.limit_of(meter.name)
        included = terms.included if terms is not None else Decimal(0)
        billable = max(Decimal(0), quantity - included - price.free_quantity)
        total += round_money(billable * price.model.unit_price, book.currency)
    return total


@pytest.mark.parametrize("review", [False, True], ids=["open", "review"])
def test_demo_shows_quota_events_and_prints_the_invoice(
    empty_database_url: str, namespace: str, review: bool
) -> None:
    """On a scratch database and namespace the demo shows both warnings and the exceedance
    as they arrive, records every event once, and prints an invoice whose total is the one
    the price book gives for the day it published (with invoice review on, after
    finalizing the draft)."""
    account = f"demo-test-{uuid.uuid4().hex[:8]}"
    env = child_env()
    env.update(
        BILLING_AMQP_URL=AMQP_URL,
        BILLING_DATABASE_URL=empty_database_url,
        BILLING_NAMESPACE=namespace,
        BILLING_INVOICE_REVIEW=str(review).lower(),
    )
    result = subprocess.run(
        [sys.executable, "-m", "billing_worker", "demo", "--account", account],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    out = result.stdout
    assert result.returncode == 0, out[-3000:] + result.stderr[-3000:]
    assert result.stderr == "", "off a terminal: no progress bars, no logs"

    day_shown = re.search(r"Publish a day of usage \((\d{4}-\d{2}-\d{2}), UTC\)", out)
    assert day_shown, out
    book = load_pricebook(None)
    plan = demo_plan(book)
    assert plan.terms is not None
    assert plan.terms.limit is not None
    usage = demo_day(account, date.fromisoformat(day_shown.group(1)), chat_tokens=plan.chat_tokens)

    before_close = out.split("5. Close the period")[0]
    for threshold in plan.plan.thresholds:
        kind = "quota.exceeded" if threshold >= 100 else "quota.warning"
        line = rf"<- {re.escape(kind)}\s+{plan.chat_meter} {threshold}%: (\d+) of (\d+) used"
        shown = re.findall(line, before_close)
        assert len(shown) == 1, (kind, threshold, out)
        used, limit = map(Decimal, shown[0])
        assert limit == plan.terms.limit
        assert used * 100 >= limit * threshold

    total = expected_total(book, plan.plan.name, usage)
    assert total > 0
    assert re.search(rf"<- invoice\.ready\s+\S+: \d+ lines, total {total} {book.currency}", out)
    assert re.search(rf"TOTAL \({book.currency}\)\s+{total}\n", out), out
    images = usage.quantity("generator.image_generated")
    assert re.search(rf"images_generated: {images} used, {images} billable", out)
    assert "Stopped: the worker drained and shut down." in out
    assert ("BILLING_INVOICE_REVIEW is on" in out) is review

    with psycopg.connect(libpq_url(empty_database_url)) as conn:
        keys = conn.execute(
            "SELECT count(*) FROM idempotency_keys WHERE event_id = ANY(%s)",
            ([e.event_id for e in usage.events],),
        ).fetchone()
        invoice = conn.execute(
            "SELECT total, status FROM invoices WHERE account_id = %s", (account,)
        ).fetchall()
    assert keys == (len(usage.events),)
    assert invoice == [(total, "open")]


def test_demo_refuses_a_day_it_could_not_close(empty_database_url: str, namespace: str) -> None:
    """A --day outside the latest closable period is refused before anything starts."""
    env = child_env()
    env.update(BILLING_DATABASE_URL=empty_database_url, BILLING_NAMESPACE=namespace)
    result = subprocess.run(
        [sys.executable, "-m", "billing_worker", "demo", "--day", "2001-01-15"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "the latest period that can be closed now" in result.stderr

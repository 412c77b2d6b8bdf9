"""``subscription_terms`` on Stripe's example subscriptions of both API versions: which item
is the plan item, whose period counts, when the subscription started and ended; and the
helpers that read invoices' payment intents and refunded shares."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Literal

import pytest

from billing_worker.domain.stripe import (
    invoice_payment_intent,
    refunded_share,
    subscription_terms,
)
from tests import stripe_fixtures as sf
from tests.pricebooks import DEFAULT_BOOK

Version = Literal["old", "new"]
VERSIONS = pytest.mark.parametrize("version", ["old", "new"])
T0 = int(datetime(2026, 11, 20, tzinfo=UTC).timestamp())
DAY = 86_400


def at(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def subscription(version: Version, *items: tuple[str, int, int], **fields: Any) -> dict[str, Any]:
    """The example subscription with one item per (price, period start, period end), the
    period on each item and none at top level (the new shape's way)."""
    sub = sf.fixture(version, "subscription", current_period_start=None,
                     current_period_end=None, **fields)  # fmt: skip
    template = sub["items"]["data"][0]
    sub["items"]["data"] = [
        {**template, "id": f"si_{n}", "price": {**template["price"], "id": price},
         "current_period_start": start, "current_period_end": end}
        for n, (price, start, end) in enumerate(items)
    ]  # fmt: skip
    return sub


class TestPlanItem:
    @VERSIONS
    def test_the_mapped_item_is_the_plan_item_with_its_own_period(self, version: Version) -> None:
        """An unmapped add-on listed first: the PLUS item gives the price and the period."""
        sub = subscription(
            version,
            ("price_metered_addon", T0 - 3 * DAY, T0 + DAY),
            ("price_plus_monthly", T0, T0 + 30 * DAY),
        )
        terms = subscription_terms(sub, DEFAULT_BOOK)
        assert terms.price_id == "price_plus_monthly"
        assert terms.period is not None
        assert (terms.period.start, terms.period.end) == (at(T0), at(T0 + 30 * DAY))

    @VERSIONS
    def test_a_top_level_period_wins_over_the_items(self, version: Version) -> None:
        """The older shape's subscription-level period is the period, whatever the items."""
        sub = subscription(version, ("price_plus_monthly", T0, T0 + 30 * DAY))
        sub |= {"current_period_start": T0 - DAY, "current_period_end": T0 + 29 * DAY}
        terms = subscription_terms(sub, DEFAULT_BOOK)
        assert terms.period is not None
        assert terms.period.start == at(T0 - DAY)

    @VERSIONS
    def test_of_two_plan_items_the_higher_fee_wins(self, version: Version) -> None:
        """PRO (19.90) beats PLUS (9.90) in either order."""
        period = (T0, T0 + 30 * DAY)
        for prices in (["price_plus_monthly", "price_pro_monthly"],
                       ["price_pro_monthly", "price_plus_monthly"]):  # fmt: skip
            sub = subscription(version, *[(p, *period) for p in prices])
            assert subscription_terms(sub, DEFAULT_BOOK).price_id == "price_pro_monthly"

    @VERSIONS
    def test_no_mapped_item_leaves_the_first_price(self, version: Version) -> None:
        """Nothing the book maps: the first item's price is kept (to be refused by name)."""
        sub = subscription(version, ("price_gold", T0, T0 + DAY), ("price_addon", T0, T0 + DAY))
        assert subscription_terms(sub, DEFAULT_BOOK).price_id == "price_gold"


class TestStartAndEnd:
    @VERSIONS
    def test_started_at_is_the_start_date(self, version: Version) -> None:
        """start_date becomes started_at; a running subscription has no ended_at."""
        sub = subscription(version, ("price_plus_monthly", T0, T0 + 30 * DAY), status="active",
                           start_date=T0 - 40 * DAY, ended_at=None, canceled_at=None)  # fmt: skip
        terms = subscription_terms(sub, DEFAULT_BOOK)
        assert (terms.started_at, terms.ended_at) == (at(T0 - 40 * DAY), None)

    @VERSIONS
    def test_ended_at_else_canceled_at_once_ended(self, version: Version) -> None:
        """ended_at when Stripe sets it; a canceled one without it ended at canceled_at;
        a live one set to cancel at its period end (canceled_at set) has not ended."""
        item = ("price_plus_monthly", T0, T0 + 30 * DAY)
        ended = subscription(version, item, status="canceled", ended_at=T0 + 5, canceled_at=T0)
        assert subscription_terms(ended, DEFAULT_BOOK).ended_at == at(T0 + 5)
        canceled = subscription(version, item, status="canceled", ended_at=None, canceled_at=T0)
        assert subscription_terms(canceled, DEFAULT_BOOK).ended_at == at(T0)
        ending = subscription(version, item, status="active", ended_at=None, canceled_at=T0,
                              cancel_at_period_end=True)  # fmt: skip
        assert subscription_terms(ending, DEFAULT_BOOK).ended_at is None


class TestInvoicePaymentIntent:
    def test_old_shape_reads_the_invoices_own_field(self) -> None:
        """2024-06-20: payment_intent on the invoice."""
        invoice = sf.fixture("old", "invoice", payment_intent="pi_old")
        assert invoice_payment_intent(invoice) == "pi_old"

    def test_new_shape_takes_the_paid_payment(self) -> None:
        """dahlia: the paid entry of payments.data, before a canceled default one; none
        without payments."""
        invoice = sf.fixture("new", "invoice")
        assert invoice_payment_intent(invoice) is None
        invoice["payments"] = {"object": "list", "data": [
            {"is_default": True, "status": "canceled",
             "payment": {"type": "payment_intent", "payment_intent": "pi_failed"}},
            {"is_default": False, "status": "paid",
             "payment": {"type": "payment_intent", "payment_intent": {"id": "pi_paid"}}},
        ]}  # fmt: skip
        assert invoice_payment_intent(invoice) == "pi_paid"


class TestRefundedShare:
    def test_shares_add_up_to_the_whole(self) -> None:
        """3.33 of 10.00, then all of it: 333 then the other 667 of the pack; more than
        the charge is the whole pack; a charge of nothing shares nothing."""
        whole, amount = Decimal(1000), Decimal("10.00")
        third = refunded_share(whole, amount, Decimal("3.33"))
        assert third == Decimal(333)
        assert refunded_share(whole, amount, amount) - third == Decimal(667)
        assert refunded_share(whole, amount, Decimal("20.00")) == whole
        assert refunded_share(whole, Decimal(0), Decimal(1)) == 0
        assert refunded_share(Decimal(1), Decimal(3), Decimal(1)) == Decimal("0.333333")

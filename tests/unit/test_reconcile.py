"""The comparison of Stripe's objects with our invoices and payment ledger, on plain data."""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from billing_worker.service.reconcile import NOT_PUSHED_GRACE, STILL_PENDING_GRACE, reconcile
from billing_worker.service.reconcile_kinds import KINDS, REPAIRS
from billing_worker.service.reconcile_model import (
    Difference,
    LedgerRefund,
    OurAccount,
    OurInvoice,
    OurLine,
    StripeInvoice,
    StripeItem,
    StripeRefund,
    StripeSubscription,
    StripeView,
)
from tests.readme_examples import README

NOW = datetime(2026, 11, 20, 12, tzinfo=UTC)
OURS = "inv-202610-acct_1"
STRIPE_ID = "in_1"
CUSTOMER = "cus_1"
PUSHED = OurInvoice(
    invoice_id=OURS,
    account_id="acct_1",
    status="open",
    currency="usd",
    period_start=datetime(2026, 10, 1, tzinfo=UTC),
    closed_at=datetime(2026, 11, 1, 1, tzinfo=UTC),
    lines=(
        OurLine(1, Decimal("9.00"), "stripe_subscription"),
        OurLine(2, Decimal("1.50")),
        OurLine(3, Decimal("0.00")),
        OurLine(4, Decimal("-0.25")),
    ),
    target="invoice",
    synced_at=datetime(2026, 11, 1, 1, 1, tzinfo=UTC),
    stripe_invoice_id=STRIPE_ID,
)
ACCOUNT = OurAccount("acct_1", (CUSTOMER,))


def item(line_no: str, amount: int, *, invoice: str | None = STRIPE_ID, **kw: str) -> StripeItem:
    fields = {"billing_invoice_id": OURS, "line_no": line_no, **kw}
    return StripeItem(f"ii_{line_no}_{amount}", CUSTOMER, invoice, amount, "usd", **fields)  # type: ignore[arg-type]


def stripe_invoice(status: str = "open", **changes: object) -> StripeInvoice:
    found = StripeInvoice(STRIPE_ID, CUSTOMER, status, "usd", 125, billing_invoice_id=OURS)
    return replace(found, **changes)  # type: ignore[arg-type]


def view(*items: StripeItem, invoice: StripeInvoice | None = None, **kw: object) -> StripeView:
    invoices = {} if invoice is None else {invoice.invoice_id: invoice}
    return StripeView(invoices=invoices, items=items, **kw)  # type: ignore[arg-type]


CLEAN = view(item("2", 150), item("4", -25), invoice=stripe_invoice())


def kinds(found: list[Difference]) -> list[str]:
    return [d.kind for d in found]


def run(
    invoice: OurInvoice = PUSHED,
    stripe: StripeView = CLEAN,
    account: OurAccount = ACCOUNT,
    *,
    now: datetime = NOW,
    strays: bool = False,
) -> list[Difference]:
    return reconcile([invoice], {account.account_id: account}, stripe, now=now, strays=strays)


class TestInvoiceTarget:
    """Invoices pushed as a Stripe invoice of their own."""

    def test_matching_items_and_status_are_clean(self) -> None:
        """Items for every non-zero worker line, an open Stripe invoice, an open one here:
        no difference (the subscription-billed and the zero line are not expected)."""
        assert run() == []

    def test_a_missing_stripe_invoice(self) -> None:
        """The recorded Stripe invoice is not there: missing_in_stripe, naming it."""
        (found,) = run(stripe=view())
        assert found.kind == "missing_in_stripe"
        assert found.stripe_object_id == STRIPE_ID
        assert "no such invoice" in found.cause

    def test_an_item_with_another_amount_and_a_missing_line(self) -> None:
        """Line 2 billed 1.40 and line 4 absent: one amount_differs naming both lines."""
        (found,) = run(stripe=view(item("2", 140), invoice=stripe_invoice()))
        assert found.kind == "amount_differs"
        assert "line 2 is 1.40 usd in Stripe, 1.50 usd here" in found.cause
        assert "line 4 (-0.25 usd) is missing" in found.cause
        assert (found.ours, found.stripe) == ("1.25 usd", "1.40 usd")

    def test_a_duplicate_item_and_an_item_of_no_line(self) -> None:
        """A second item for line 2, and one for the subscription-billed line 1: both are
        extra_in_stripe, the amounts of the real lines still agree."""
        stripe = view(
            item("2", 150), item("4", -25), item("2", 150, invoice=STRIPE_ID), item("1", 900),
            invoice=stripe_invoice(),
        )  # fmt: skip
        found = run(stripe=stripe)
        assert kinds(found) == ["extra_in_stripe", "extra_in_stripe"]

    def test_a_pending_item_carrying_our_id(self) -> None:
        """An item left pending would land on the customer's next invoice: extra."""
        found = run(stripe=view(item("2", 150), item("4", -25), item("2", 5, invoice=None),
                                invoice=stripe_invoice()))  # fmt: skip
        assert kinds(found) == ["extra_in_stripe"]
        assert "pending" in found[0].cause

    def test_a_second_live_stripe_invoice(self) -> None:
        """Another live Stripe invoice carrying our id is a duplicate; a void one is not."""
        dup = replace(stripe_invoice(), invoice_id="in_2")
        void = replace(stripe_invoice("void"), invoice_id="in_3")
        stripe = StripeView(
            invoices={STRIPE_ID: stripe_invoice(), "in_2": dup, "in_3": void},
            items=CLEAN.items,
        )
        (found,) = run(stripe=stripe)
        assert (found.kind, found.stripe_object_id) == ("extra_in_stripe", "in_2")

    def test_paid_there_open_here(self) -> None:
        """Stripe paid, ours open: paid_there_open_here, not also payment_differs."""
        stripe = view(*CLEAN.items, invoice=stripe_invoice("paid", amount_paid=125))
        (found,) = run(stripe=stripe)
        assert found.kind == "paid_there_open_here"
        assert "has no payment" in found.cause

    @pytest.mark.parametrize(
        ("theirs", "ours"),
        [("void", "open"), ("uncollectible", "paid"), ("open", "void"), ("draft", "open")],
    )
    def test_other_statuses_differ(self, theirs: str, ours: str) -> None:
        """Any other pair of statuses that disagree is status_differs with both named."""
        stripe = view(*CLEAN.items, invoice=stripe_invoice(theirs))
        found = run(replace(PUSHED, status=ours), stripe)
        assert kinds(found)[0] == "status_differs"
        assert (found[0].ours, found[0].stripe) == (ours, theirs)

    def test_paid_on_both_sides_needs_the_payment_recorded(self) -> None:
        """Both paid: clean with the payment in our ledger, payment_differs without it."""
        stripe = view(*CLEAN.items, invoice=stripe_invoice("paid", amount_paid=125))
        paid = replace(PUSHED, status="paid")
        recorded = replace(ACCOUNT, payments={STRIPE_ID: Decimal("1.25")})
        assert run(paid, stripe, recorded) == []
        assert kinds(run(paid, stripe)) == ["payment_differs"]

    def test_refunds_on_either_side_only(self) -> None:
        """A refund Stripe shows that the ledger lacks, and the reverse, are reported by
        which side has it; one recorded on both sides (by charge) is clean."""
        refund = StripeRefund("re_1", 50, "succeeded", charge="ch_1", payment_intent="pi_1")
        paid = stripe_invoice("paid", amount_paid=125, payment_intents=("pi_1",), refunds=(refund,))
        ledger = replace(ACCOUNT, payments={STRIPE_ID: Decimal("1.25")})
        ours = replace(PUSHED, status="paid")
        assert kinds(run(ours, view(*CLEAN.items, invoice=paid), ledger)) == ["refunded_there_only"]
        refunded = replace(ledger, refunds=(LedgerRefund("ch_1", "pi_1", Decimal("0.50")),))
        assert run(ours, view(*CLEAN.items, invoice=paid), refunded) == []
        failed = replace(paid, refunds=(replace(refund, status="failed"),))
        assert kinds(run(ours, view(*CLEAN.items, invoice=failed), refunded)) == [
            "refunded_here_only"
        ]

    def test_a_recorded_total_that_differs(self) -> None:
        """invoices.stripe_total other than Stripe's total is total_differs."""
        assert kinds(run(replace(PUSHED, stripe_total=Decimal("1.30")))) == ["total_differs"]
        assert run(replace(PUSHED, stripe_total=Decimal("1.25"))) == []


class TestSubscriptionTarget:
    """Lines pushed as pending items on the customer's subscription."""

    PENDING = replace(
        PUSHED, target="subscription", stripe_invoice_id=None, stripe_subscription_id="sub_1"
    )
    ITEMS = (item("2", 150, invoice=None), item("4", -25, invoice=None))

    def subscription(self, **kw: object) -> StripeSubscription:
        return replace(StripeSubscription("sub_1", "active", NOW + timedelta(days=3)), **kw)  # type: ignore[arg-type]

    def test_pending_within_the_period_is_clean(self) -> None:
        """Items pending on a live subscription whose period has not ended: no difference."""
        stripe = view(*self.ITEMS, subscriptions={"sub_1": self.subscription()})
        assert run(self.PENDING, stripe) == []

    @pytest.mark.parametrize(
        "changes",
        [
            {"status": "canceled", "canceled_at": NOW - timedelta(days=2)},
            {"current_period_end": NOW - STILL_PENDING_GRACE - timedelta(seconds=1)},
        ],
        ids=["canceled", "period-long-over"],
    )
    def test_still_pending(self, changes: dict[str, object]) -> None:
        """Pending on a canceled subscription, or a day past its period: still_pending."""
        stripe = view(*self.ITEMS, subscriptions={"sub_1": self.subscription(**changes)})
        (found,) = run(self.PENDING, stripe)
        assert (found.kind, found.stripe_object_id) == ("still_pending", "sub_1")
        assert found.stripe == "1.25 usd"

    def test_items_gone_before_invoicing(self) -> None:
        """No item carries our id although we pushed: missing_in_stripe."""
        stripe = view(subscriptions={"sub_1": self.subscription()})
        assert kinds(run(self.PENDING, stripe)) == ["missing_in_stripe"]

    def test_the_renewal_invoice_is_compared(self) -> None:
        """Once the subscription's invoice took the items, its status is ours to match: a
        draft is fine, paid there while open here is not."""
        taken = tuple(replace(i, invoice="in_9") for i in self.ITEMS)
        renewal = StripeInvoice("in_9", CUSTOMER, "draft", "usd", 1025)
        stripe = view(*taken, invoice=renewal)
        assert run(self.PENDING, stripe) == []
        paid = view(*taken, invoice=replace(renewal, status="paid", amount_paid=1025))
        assert kinds(run(self.PENDING, paid)) == ["paid_there_open_here"]


class TestUnpushed:
    """Invoices the sync has not pushed."""

    NEVER = replace(PUSHED, target=None, synced_at=None, stripe_invoice_id=None)

    def test_within_the_grace_nothing_is_said(self) -> None:
        """An open invoice closed less than the grace ago is the sync's to push."""
        fresh = replace(self.NEVER, closed_at=NOW - NOT_PUSHED_GRACE + timedelta(seconds=1))
        assert run(fresh, view()) == []

    def test_past_the_grace_or_failed(self) -> None:
        """Past the grace, or with a permanent push error at once: not_pushed."""
        old = replace(self.NEVER, closed_at=NOW - NOT_PUSHED_GRACE - timedelta(seconds=1))
        assert kinds(run(old, view())) == ["not_pushed"]
        failed = replace(self.NEVER, closed_at=NOW, sync_error="No such customer")
        (found,) = run(failed, view())
        assert "No such customer" in found.cause

    def test_stripe_objects_of_a_void_invoice_are_extra(self) -> None:
        """Ours void and never pushed, yet Stripe has an invoice carrying its id: extra."""
        void = replace(self.NEVER, status="void")
        assert kinds(run(void, CLEAN)) == ["extra_in_stripe"]


class TestStrays:
    """Stripe objects carrying an id that is no invoice of ours."""

    def test_only_a_run_over_everything_reports_them(self) -> None:
        """A pending item of an unknown id is extra_in_stripe in a full run only."""
        stray = StripeItem("ii_x", CUSTOMER, None, 100, "usd", "inv-nope")
        stripe = view(*CLEAN.items, stray, invoice=stripe_invoice())
        assert run(stripe=stripe) == []
        (found,) = run(stripe=stripe, strays=True)
        assert (found.kind, found.invoice_id, found.account_id) == (
            "extra_in_stripe",
            "inv-nope",
            "acct_1",
        )


class TestKinds:
    """The vocabulary of differences."""

    def test_every_kind_is_snake_case_with_a_repair(self) -> None:
        """Kinds are stable snake_case names, each with a repair text."""
        assert all(re.fullmatch(r"[a-z]+(_[a-z]+)*", kind) for kind in KINDS)
        assert all(REPAIRS[kind] for kind in KINDS)

    def test_the_readme_documents_every_kind(self) -> None:
        """Each kind is named in the README's reconciling section."""
        text = README.read_text(encoding="utf-8")
        section = text[text.index("### Reconciling with Stripe") :]
        assert [kind for kind in KINDS if f"`{kind}`" not in section] == []

    def test_an_unknown_kind_is_refused(self) -> None:
        """A difference must be of a known kind (the gauge's label values are fixed)."""
        with pytest.raises(ValueError, match="unknown difference kind"):
            Difference("nope", OURS, None, None, "?")

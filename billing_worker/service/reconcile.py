"""Compare what Stripe holds for our invoices with our invoices and payment ledger: pure.

Each of our invoices is matched with the Stripe objects whose metadata carry its id
(``billing_invoice_id``, and ``line_no`` on items), as the invoice sync wrote them: for the
``invoice`` target one Stripe invoice of its own, for the ``subscription`` target invoice
items pending on a subscription until its next invoice takes them. Amounts compare in
integer minor units, as Stripe keeps them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from billing_worker.service.reconcile_kinds import (
    AMOUNT_DIFFERS,
    EXTRA_IN_STRIPE,
    KINDS,
    MISSING_IN_STRIPE,
    NOT_PUSHED,
    STILL_PENDING,
)
from billing_worker.service.reconcile_model import (
    Difference,
    OurAccount,
    OurInvoice,
    StripeInvoice,
    StripeItem,
    StripeView,
    difference_of,
    money,
)
from billing_worker.service.reconcile_payments import payment_differences

# The sync pushes within a round or two (30 s each); an hour is "it is not coming".
NOT_PUSHED_GRACE = timedelta(hours=1)
# Stripe keeps a renewal invoice a draft for about an hour; a day past the period's end
# the pending items should long be on it.
STILL_PENDING_GRACE = timedelta(days=1)


def reconcile(
    invoices: Sequence[OurInvoice],
    accounts: Mapping[str, OurAccount],
    view: StripeView,
    *,
    now: datetime,
    strays: bool = False,
) -> list[Difference]:
    """Every difference for ``invoices``; with ``strays`` also live Stripe objects that
    carry an invoice id we don't have (only a run over every invoice can know that)."""
    found: list[Difference] = []
    for invoice in invoices:
        account = accounts.get(invoice.account_id, OurAccount(invoice.account_id))
        found.extend(compare_invoice(invoice, account, view, now=now))
    if strays:
        found.extend(stray_differences({i.invoice_id for i in invoices}, accounts, view))
    order = {kind: n for n, kind in enumerate(KINDS)}
    return sorted(found, key=lambda d: (d.period or "", d.invoice_id, order[d.kind]))


def compare_invoice(
    invoice: OurInvoice, account: OurAccount, view: StripeView, *, now: datetime
) -> list[Difference]:
    """The differences of one invoice."""
    carried = _Carried.of(invoice.invoice_id, view)
    if invoice.synced_at is None:
        return _unpushed(invoice, carried, now)
    if invoice.target == "subscription":
        return _subscription_target(invoice, account, view, carried, now)
    return _invoice_target(invoice, account, view, carried)


@dataclass(frozen=True, slots=True)
class _Carried:
    """The Stripe objects whose metadata carry one of our invoice ids."""

    invoices: tuple[StripeInvoice, ...]
    items: tuple[StripeItem, ...]

    @classmethod
    def of(cls, invoice_id: str, view: StripeView) -> _Carried:
        """Items on a voided Stripe invoice charge nobody: they are left out."""
        return cls(
            tuple(s for s in view.invoices.values() if s.billing_invoice_id == invoice_id),
            tuple(i for i in view.items if i.billing_invoice_id == invoice_id and _live(i, view)),
        )


def _live(item: StripeItem, view: StripeView) -> bool:
    holder = view.invoices.get(item.invoice) if item.invoice is not None else None
    return holder is None or holder.status != "void"


def _unpushed(invoice: OurInvoice, carried: _Carried, now: datetime) -> list[Difference]:
    live = [s.invoice_id for s in carried.invoices if s.status != "void"]
    if invoice.status == "open":
        if invoice.sync_error is not None:
            cause = f"the push failed permanently: {invoice.sync_error}"
        elif now - invoice.closed_at > NOT_PUSHED_GRACE:
            cause = (
                f"closed at {invoice.closed_at.isoformat()} and still not pushed "
                f"{_hours(NOT_PUSHED_GRACE)} later: the invoice sync is off (no "
                "BILLING_STRIPE_API_KEY on the workers), failing, or stuck"
            )
        else:
            return []  # the sync has not had its turn yet
        if live or carried.items:
            shown = ", ".join(live + [i.item_id for i in carried.items])
            cause += f"; Stripe already has {shown} carrying its id (a push not recorded here)"
        return [difference_of(invoice, NOT_PUSHED, None, cause, ours="open, not pushed")]
    found = [
        difference_of(
            invoice,
            EXTRA_IN_STRIPE,
            stripe_id,
            f"Stripe invoice {stripe_id} carries our id, but ours ({invoice.status}) was "
            "never pushed",
        )
        for stripe_id in live
    ]
    found += [
        difference_of(
            invoice,
            EXTRA_IN_STRIPE,
            item.item_id,
            f"Stripe item {item.item_id} ({money(item.amount, item.currency)}) carries our "
            f"id, but ours ({invoice.status}) was never pushed",
        )
        for item in carried.items
        if item.invoice not in live
    ]
    return found


def _invoice_target(
    invoice: OurInvoice, account: OurAccount, view: StripeView, carried: _Carried
) -> list[Difference]:
    recorded_id, ours_id = invoice.stripe_invoice_id or "", invoice.invoice_id
    recorded = view.invoices.get(recorded_id)
    found = [
        difference_of(
            invoice,
            EXTRA_IN_STRIPE,
            other.invoice_id,
            f"a second live Stripe invoice {other.invoice_id} ({other.status}, "
            f"{money(other.total, other.currency)}) carries our id besides {recorded_id}: "
            "a duplicate that could charge the customer twice",
        )
        for other in carried.invoices
        if other.invoice_id != recorded_id and other.status != "void"
    ]
    duplicates = {d.stripe_object_id for d in found}
    if recorded is None or recorded.billing_invoice_id != invoice.invoice_id:
        found.append(_missing_invoice(invoice, recorded, view))
        return found
    # even when it is void: its status says so, its lines still compare
    on_it = [i for i in view.items if i.invoice == recorded_id and i.billing_invoice_id == ours_id]
    found += [
        _stray_item(invoice, item, f"on the customer's next invoice, not on {recorded_id}")
        for item in carried.items
        if item.invoice != recorded_id and item.invoice not in duplicates
    ]
    found += _line_differences(invoice, on_it, recorded_id, currency=recorded.currency)
    found += payment_differences(invoice, account, recorded, target="invoice")
    return found


def _subscription_target(
    invoice: OurInvoice, account: OurAccount, view: StripeView, carried: _Carried, now: datetime
) -> list[Difference]:
    subscription = invoice.stripe_subscription_id or ""
    where = f"subscription {subscription}"
    found: list[Difference] = []
    if invoice.stripe_invoice_id is not None and invoice.stripe_invoice_id not in view.invoices:
        found.append(_missing_invoice(invoice, None, view))
    if not carried.items and invoice.expected_items:
        found.append(
            difference_of(
                invoice,
                MISSING_IN_STRIPE,
                subscription or None,
                f"pushed onto {where} but Stripe has no invoice item carrying its id "
                "(pending items deleted before the subscription invoiced them?)",
                ours=money(sum(invoice.expected_items.values()), invoice.currency),
            )
        )
        return found
    found += _line_differences(invoice, list(carried.items), where, currency=invoice.currency)
    found += _still_pending(invoice, [i for i in carried.items if i.invoice is None], view, now)
    holders = {i.invoice for i in carried.items if i.invoice is not None}
    if invoice.stripe_invoice_id is not None:
        holders = {invoice.stripe_invoice_id}
    for holder in sorted(holders):
        if holder in view.invoices:
            found += payment_differences(
                invoice, account, view.invoices[holder], target="subscription"
            )
    return found


def _missing_invoice(
    invoice: OurInvoice, recorded: StripeInvoice | None, view: StripeView
) -> Difference:
    recorded_id = invoice.stripe_invoice_id or "-"
    if recorded is not None:
        cause = (
            f"Stripe invoice {recorded_id} carries billing_invoice_id "
            f"{recorded.billing_invoice_id!r}, not ours"
        )
    else:
        cause = f"we recorded Stripe invoice {recorded_id} but Stripe has no such invoice"
        if view.missing_customers:
            gone = ", ".join(sorted(view.missing_customers))
            cause += f" (Stripe does not know customer {gone} either)"
    return difference_of(
        invoice,
        MISSING_IN_STRIPE,
        invoice.stripe_invoice_id,
        cause,
        ours=money(sum(invoice.expected_items.values()), invoice.currency),
    )


def _stray_item(invoice: OurInvoice, item: StripeItem, where: str) -> Difference:
    state = "pending" if item.invoice is None else f"on {item.invoice}"
    return difference_of(
        invoice,
        EXTRA_IN_STRIPE,
        item.item_id,
        f"Stripe item {item.item_id} ({money(item.amount, item.currency)}, line "
        f"{item.line_no or '?'}, {state}) carries our id but belongs to no line: it lands "
        f"{where}",
        stripe=money(item.amount, item.currency),
    )


def _line_differences(
    invoice: OurInvoice, items: Sequence[StripeItem], where: str, *, currency: str
) -> list[Difference]:
    """Per line: a missing line or another amount (one ``amount_differs``), and every item
    that matches no line or doubles one (one ``extra_in_stripe`` each)."""
    expected = invoice.expected_items
    by_line: dict[int, list[StripeItem]] = {}
    extras: list[StripeItem] = []
    for item in items:
        number = item.line_no or ""
        if number.isdigit() and int(number) in expected:
            by_line.setdefault(int(number), []).append(item)
        else:
            extras.append(item)
    problems = []
    for line_no, amount in sorted(expected.items()):
        present = by_line.get(line_no, [])
        match = next((i for i in present if i.amount == amount), None)
        if match is None and present:
            match = present[0]
            problems.append(
                f"line {line_no} is {money(match.amount, match.currency)} in Stripe, "
                f"{money(amount, invoice.currency)} here"
            )
        elif match is None:
            problems.append(f"line {line_no} ({money(amount, invoice.currency)}) is missing")
        extras += [i for i in present if i is not match]
    if currency != invoice.currency:
        problems.append(f"Stripe bills in {currency}, ours is in {invoice.currency}")
    found = []
    if problems:
        charged = sum(i.amount for i in items if i not in extras)
        found.append(
            difference_of(
                invoice,
                AMOUNT_DIFFERS,
                where.removeprefix("subscription "),
                f"{where}: " + "; ".join(problems),
                ours=money(sum(expected.values()), invoice.currency),
                stripe=money(charged, currency),
            )
        )
    return found + [_stray_item(invoice, item, f"on {where} as well") for item in extras]


def _still_pending(
    invoice: OurInvoice, pending: Sequence[StripeItem], view: StripeView, now: datetime
) -> list[Difference]:
    if not pending:
        return []
    sub_id = invoice.stripe_subscription_id or pending[0].subscription or ""
    subscription = view.subscriptions.get(sub_id)
    amount = money(sum(i.amount for i in pending), pending[0].currency)
    what = f"{len(pending)} item(s) ({amount}) still pending"
    if subscription is None:
        cause = f"{what} on subscription {sub_id or '?'}, which Stripe does not know"
    elif subscription.status == "canceled":
        when = subscription.canceled_at.isoformat() if subscription.canceled_at else "?"
        cause = (
            f"{what}: subscription {sub_id} was canceled (at {when}) before invoicing them; "
            "they wait for the customer's next invoice, which may never come"
        )
    elif (
        subscription.current_period_end is not None
        and now - subscription.current_period_end > STILL_PENDING_GRACE
    ):
        cause = (
            f"{what} although subscription {sub_id}'s period ended at "
            f"{subscription.current_period_end.isoformat()} (status {subscription.status}): "
            "its renewal invoice did not take them"
        )
    else:
        return []
    return [difference_of(invoice, STILL_PENDING, sub_id or None, cause, stripe=amount)]


def stray_differences(
    ours: set[str], accounts: Mapping[str, OurAccount], view: StripeView
) -> list[Difference]:
    """Live Stripe invoices and items carrying a ``billing_invoice_id`` we don't have."""
    account_of = {c: a.account_id for a in accounts.values() for c in a.customers}
    found = []
    objects: Iterable[tuple[str | None, str, str, str, str]] = [
        *(
            (s.billing_invoice_id, s.invoice_id, s.customer, s.status, "invoice")
            for s in view.invoices.values()
            if s.status != "void"
        ),
        *(
            (i.billing_invoice_id, i.item_id, i.customer, i.invoice or "pending", "item")
            for i in view.items
            if _live(i, view)
        ),
    ]
    for carried, obj, customer, state, what in objects:
        if carried is None or carried in ours:
            continue
        found.append(
            Difference(
                EXTRA_IN_STRIPE,
                carried,
                account_of.get(customer),
                obj,
                f"Stripe {what} {obj} ({state}, customer {customer}) carries billing_invoice_id "
                f"{carried!r}, which is no invoice of ours",
            )
        )
    return found


def _hours(span: timedelta) -> str:
    return f"{span.total_seconds() / 3600:g} h"

"""Reconciling one Stripe invoice's status, payments, refunds and total with ours: pure."""

from __future__ import annotations

from decimal import Decimal

from billing_worker.service.reconcile_kinds import (
    PAID_THERE_OPEN_HERE,
    PAYMENT_DIFFERS,
    REFUNDED_HERE_ONLY,
    REFUNDED_THERE_ONLY,
    STATUS_DIFFERS,
    TOTAL_DIFFERS,
)
from billing_worker.service.reconcile_model import (
    Difference,
    OurAccount,
    OurInvoice,
    StripeInvoice,
    difference_of,
    minor_sum,
    money,
)

# Refunds that take (or will take) the money back; failed and canceled ones give it back.
REFUND_COUNTED = frozenset({"succeeded", "pending", "requires_action"})


def payment_differences(
    invoice: OurInvoice, account: OurAccount, stripe: StripeInvoice, *, target: str
) -> list[Difference]:
    found = _status_differences(invoice, account, stripe, target=target)
    paid_here = minor_sum([account.payments.get(stripe.invoice_id, Decimal(0))], stripe.currency)
    lost_paid = any(d.kind == PAID_THERE_OPEN_HERE for d in found)
    if not lost_paid and paid_here != stripe.amount_paid:
        found.append(
            difference_of(
                invoice,
                PAYMENT_DIFFERS,
                stripe.invoice_id,
                f"Stripe invoice {stripe.invoice_id} ({stripe.status}) has "
                f"{money(stripe.amount_paid, stripe.currency)} paid; our payment ledger "
                f"records {money(paid_here, stripe.currency)} for it",
                ours=money(paid_here, stripe.currency),
                stripe=money(stripe.amount_paid, stripe.currency),
            )
        )
    found += _refund_differences(invoice, account, stripe)
    if invoice.stripe_total is not None:
        recorded = minor_sum([invoice.stripe_total], stripe.currency)
        if recorded != stripe.total:
            found.append(
                difference_of(
                    invoice,
                    TOTAL_DIFFERS,
                    stripe.invoice_id,
                    f"Stripe invoice {stripe.invoice_id} totals "
                    f"{money(stripe.total, stripe.currency)}; we recorded "
                    f"{money(recorded, stripe.currency)} as its total",
                    ours=money(recorded, stripe.currency),
                    stripe=money(stripe.total, stripe.currency),
                )
            )
    return found


def _status_differences(
    invoice: OurInvoice, account: OurAccount, stripe: StripeInvoice, *, target: str
) -> list[Difference]:
    theirs, ours = stripe.status, invoice.status
    sides = {"ours": ours, "stripe": theirs}
    if theirs == "paid" and ours == "open":
        payment = "has" if stripe.invoice_id in account.payments else "has no"
        cause = (
            f"Stripe invoice {stripe.invoice_id} is paid, ours is still open: its "
            f"invoice.paid webhook was lost or dead-lettered (our payment ledger {payment} "
            "payment for it)"
        )
        return [difference_of(invoice, PAID_THERE_OPEN_HERE, stripe.invoice_id, cause, **sides)]
    if theirs == ours or (theirs == "draft" and ours == "open" and target == "subscription"):
        return []
    if theirs == "draft":
        hint = "it was never finalized, so Stripe has not charged it"
    elif ours == "paid":
        hint = "ours was marked paid without Stripe collecting it"
    elif theirs in ("void", "uncollectible"):
        hint = f"someone marked it {theirs} in Stripe; ours was not told"
    elif theirs == "paid":
        hint = f"Stripe collected it after ours was marked {ours}"
    else:
        hint = f"ours was marked {ours} here; Stripe still collects it"
    cause = f"Stripe invoice {stripe.invoice_id} is {theirs}, ours is {ours}: {hint}"
    return [difference_of(invoice, STATUS_DIFFERS, stripe.invoice_id, cause, **sides)]


def _refund_differences(
    invoice: OurInvoice, account: OurAccount, stripe: StripeInvoice
) -> list[Difference]:
    charges = set(stripe.charges) | {r.charge for r in stripe.refunds if r.charge}
    intents = set(stripe.payment_intents) | {
        r.payment_intent for r in stripe.refunds if r.payment_intent
    }
    if not charges and not intents:
        return []
    there = sum(r.amount for r in stripe.refunds if r.status in REFUND_COUNTED)
    here = minor_sum(
        [
            r.amount
            for r in account.refunds
            if r.charge_id in charges
            or (r.payment_intent is not None and r.payment_intent in intents)
        ],
        stripe.currency,
    )
    if there == here:
        return []
    paid_by = ", ".join(sorted(intents | charges))
    sides = {"ours": money(here, stripe.currency), "stripe": money(there, stripe.currency)}
    if there > here:
        cause = (
            f"Stripe refunded {sides['stripe']} of invoice {stripe.invoice_id} ({paid_by}); "
            f"our payment ledger records {sides['ours']}: a charge.refunded webhook was lost"
        )
        return [difference_of(invoice, REFUNDED_THERE_ONLY, stripe.invoice_id, cause, **sides)]
    cause = (
        f"our payment ledger records {sides['ours']} refunded on invoice "
        f"{stripe.invoice_id} ({paid_by}); Stripe shows {sides['stripe']}: a refund that "
        "failed or was canceled in Stripe after we recorded it"
    )
    return [difference_of(invoice, REFUNDED_HERE_ONLY, stripe.invoice_id, cause, **sides)]

"""The kinds of difference between Stripe and our ledger, and how an operator repairs each."""

from __future__ import annotations

MISSING_IN_STRIPE = "missing_in_stripe"
AMOUNT_DIFFERS = "amount_differs"
EXTRA_IN_STRIPE = "extra_in_stripe"
PAID_THERE_OPEN_HERE = "paid_there_open_here"
STATUS_DIFFERS = "status_differs"
PAYMENT_DIFFERS = "payment_differs"
REFUNDED_THERE_ONLY = "refunded_there_only"
REFUNDED_HERE_ONLY = "refunded_here_only"
TOTAL_DIFFERS = "total_differs"
STILL_PENDING = "still_pending"
NOT_PUSHED = "not_pushed"

REPLAY = (
    "resend the Stripe event from the Dashboard (Developers > Events > Resend) or find it "
    "in the Stripe DLQ (`billing-worker dlq list --queue stripe`) and replay it after the fix"
)

REPAIRS: dict[str, str] = {
    MISSING_IN_STRIPE: (
        "find out who deleted or voided it in Stripe; if the customer must still pay, "
        "create the invoice in Stripe by hand with the same metadata (billing_invoice_id, "
        "line_no per item) and finalize it, else void ours (`billing-worker invoice void ID`)"
    ),
    AMOUNT_DIFFERS: (
        "while the Stripe invoice is open, void it and issue a corrected one by hand with "
        "our lines; once paid, refund or credit the difference in Stripe (a credit note)"
    ),
    EXTRA_IN_STRIPE: (
        "delete the stray item while it is pending or on a draft, void the duplicate "
        "invoice if unpaid, or refund it (a credit note) if the customer already paid it"
    ),
    PAID_THERE_OPEN_HERE: f"{REPLAY}: the invoice.paid event moves ours to paid",
    STATUS_DIFFERS: (
        "decide which side is right: replay the Stripe event that moved it there ("
        + REPLAY
        + "), or move ours (`billing-worker invoice void|mark-uncollectible ID`), or change "
        "it in Stripe (void, mark uncollectible) to match ours"
    ),
    PAYMENT_DIFFERS: f"{REPLAY}: the invoice.paid event records the payment once",
    REFUNDED_THERE_ONLY: f"{REPLAY}: the charge.refunded event records the refund once",
    REFUNDED_HERE_ONLY: (
        "check the refund in the Stripe Dashboard; if it failed or was canceled, record the "
        "money back with a reversing payment entry (the ledger is append-only)"
    ),
    TOTAL_DIFFERS: f"{REPLAY}: the invoice.finalized or invoice.updated event carries its total",
    STILL_PENDING: (
        "invoice the pending items now (Dashboard: the customer's pending items > Create "
        "invoice, or POST /v1/invoices with pending_invoice_items_behavior=include), or "
        "delete them and void ours if the customer is not to pay them"
    ),
    NOT_PUSHED: (
        "fix the cause the error names (a deleted customer: link the account to its new "
        "customer), then clear invoices.stripe_sync_error so the next sync round pushes "
        "it; with no error, check that the workers run with BILLING_STRIPE_API_KEY"
    ),
}

KINDS: tuple[str, ...] = tuple(REPAIRS)

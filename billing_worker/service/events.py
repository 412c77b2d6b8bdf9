"""Outgoing billing events: domain facts turned into CloudEvents envelopes with stable ids."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from billing_worker.domain.credits import AlertKind, CreditAlert
from billing_worker.domain.invoice_model import InvoiceDraft
from billing_worker.domain.periods import BillingPeriod
from billing_worker.domain.quotas import ThresholdCrossing
from billing_worker.service.ports import OutgoingEvent, QuotaAlert
from schemas.events import (
    BillingEvent,
    CreditsEventData,
    CreditsExhaustedEvent,
    CreditsLowEvent,
    InvoiceLineData,
    InvoicePaidEvent,
    InvoicePaymentData,
    InvoicePaymentFailedEvent,
    InvoiceReadyData,
    InvoiceReadyEvent,
    QuotaEventData,
    QuotaExceededEvent,
    QuotaWarningEvent,
    SubscriptionChangedData,
    SubscriptionChangedEvent,
    UsageRejectedData,
    UsageRejectedEvent,
    deterministic_event_id,
)


def _outgoing(envelope: BillingEvent[object]) -> OutgoingEvent:  # type: ignore[type-var]
    return OutgoingEvent(
        event_id=envelope.id,
        event_type=envelope.type,
        subject=envelope.subject,
        payload=envelope.model_dump(mode="json"),
    )


def quota_alert(crossing: ThresholdCrossing, at: datetime) -> QuotaAlert:
    """The event for a threshold crossing; its id names (account, meter, period, threshold)."""
    c = crossing
    event_id = deterministic_event_id(
        c.event_type, c.account, c.meter, c.period.start.isoformat(), str(c.threshold)
    )
    data = QuotaEventData(
        meter=c.meter,
        threshold=c.threshold,
        used=c.used,
        limit=c.limit,
        period_start=c.period.start,
        period_end=c.period.end,
        plan=c.plan,
        enforcement=c.enforcement.value,
    )
    envelope_type = QuotaExceededEvent if c.threshold >= 100 else QuotaWarningEvent
    envelope = envelope_type(id=event_id, subject=c.account, time=at, data=data)
    return QuotaAlert(crossing=c, event=_outgoing(envelope))


def credit_alert(alert: CreditAlert, at: datetime) -> OutgoingEvent:
    """The event for a balance crossing; its id names the usage event that caused it."""
    charge = alert.charge
    event_id = deterministic_event_id(
        alert.kind.value, alert.account, charge.source, charge.event_id, charge.meter
    )
    data = CreditsEventData(
        balance=alert.balance,
        threshold=alert.threshold,
        shortfall=alert.shortfall,
        meter=charge.meter,
    )
    envelope_type = CreditsLowEvent if alert.kind is AlertKind.LOW else CreditsExhaustedEvent
    return _outgoing(envelope_type(id=event_id, subject=alert.account, time=at, data=data))


def usage_rejected(
    *,
    reason: str,
    detail: str,
    queue: str,
    source: str | None,
    original_id: str | None,
    original_type: str | None,
    account: str | None,
    body_digest: str,
    at: datetime,
) -> OutgoingEvent:
    """``usage.rejected`` for a dead-lettered usage event.

    The id names the rejected message (its source and id when readable, else a digest of
    its body) and the reason, so a redelivered rejection carries the same id.
    """
    identity = (source, original_id) if source and original_id else ("body", body_digest)
    event_id = deterministic_event_id("usage.rejected", *identity, reason)
    data = UsageRejectedData(
        reason=reason,
        detail=detail,
        source=source,
        original_id=original_id,
        original_type=original_type,
        queue=queue,
    )
    envelope = UsageRejectedEvent(id=event_id, subject=account or "unknown", time=at, data=data)
    return _outgoing(envelope)


def subscription_changed(
    *,
    account: str,
    plan: str,
    status: str,
    previous_plan: str | None,
    previous_status: str | None,
    period: BillingPeriod | None,
    cause: str,
    change_id: str,
    at: datetime,
) -> OutgoingEvent:
    """``subscription.changed``; ``change_id`` identifies the change (e.g. a ledger key)."""
    event_id = deterministic_event_id("subscription.changed", account, change_id)
    data = SubscriptionChangedData(
        plan=plan,
        status=status,
        previous_plan=previous_plan,
        previous_status=previous_status,
        current_period_start=period.start if period else None,
        current_period_end=period.end if period else None,
        cause=cause,
    )
    envelope = SubscriptionChangedEvent(id=event_id, subject=account, time=at, data=data)
    return _outgoing(envelope)


def invoice_payment(
    *,
    event_type: str,
    account: str,
    stripe_invoice_id: str,
    invoice_id: str | None,
    amount: Decimal,
    currency: str,
    attempt_count: int | None,
    failure_message: str | None,
    hosted_invoice_url: str | None,
    at: datetime,
) -> OutgoingEvent:
    """``invoice.paid`` or ``invoice.payment_failed``; the id names the Stripe invoice and,
    for failures, the attempt (each failed attempt is news)."""
    parts = [account, stripe_invoice_id]
    if event_type == "invoice.payment_failed":
        parts.append(str(attempt_count or 0))
    event_id = deterministic_event_id(event_type, *parts)
    data = InvoicePaymentData(
        invoice_id=invoice_id,
        stripe_invoice_id=stripe_invoice_id,
        amount=amount,
        currency=currency,
        attempt_count=attempt_count,
        failure_message=failure_message,
        hosted_invoice_url=hosted_invoice_url,
    )
    envelope_type = InvoicePaidEvent if event_type == "invoice.paid" else InvoicePaymentFailedEvent
    return _outgoing(envelope_type(id=event_id, subject=account, time=at, data=data))


def invoice_ready(
    invoice_id: str, draft: InvoiceDraft, *, at: datetime, number: str | None = None
) -> OutgoingEvent:
    """``invoice.ready``; one per invoice, so its id names the invoice."""
    lines = [
        InvoiceLineData(
            line_no=n,
            kind=line.kind,  # type: ignore[arg-type]
            description=line.description,
            meter=line.meter,
            quantity=line.quantity,
            billable=line.billable,
            amount=line.amount,
            refers_to_period_start=line.refers_to.start if line.refers_to else None,
            billed_by=line.billed_by,  # type: ignore[arg-type]
        )
        for n, line in enumerate(draft.lines, start=1)
    ]
    data = InvoiceReadyData(
        invoice_id=invoice_id,
        period_start=draft.period.start,
        period_end=draft.period.end,
        plan=draft.plan,
        lines=lines,
        subtotal=draft.subtotal,
        credits_applied=draft.credits_applied,
        credits_shortfall=draft.credits_shortfall,
        total=draft.total,
        billed_by_worker=draft.billed_by_worker,
        billed_by_subscription=draft.billed_by_subscription,
        currency=draft.currency,
        pricebook_version=draft.pricebook_version,
        number=number,
    )
    event_id = deterministic_event_id("invoice.ready", draft.account, invoice_id)
    return _outgoing(InvoiceReadyEvent(id=event_id, subject=draft.account, time=at, data=data))

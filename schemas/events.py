"""Billing events, version 1: CloudEvents 1.0 envelopes (structured mode) the worker publishes.

Every event goes through the outbox to the topic exchange ``billing.events`` with the event
``type`` as routing key. ``source`` is always ``billing-worker``, ``subject`` is the account,
and ``id`` is deterministic (:func:`deterministic_event_id`), so subscribers drop
redeliveries by ``id``. Money and quantities are decimal strings on the wire (``"81234"``,
``"10.90"``, never a JSON number or an exponent) and times are RFC 3339 in UTC with ``Z``.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from types import MappingProxyType
from typing import Annotated, Any, Final, Generic, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)

from schemas.usage import EventType, Identifier
from schemas.wire_values import (
    DECIMAL_PATTERN,
    EVENT_ID_NAMESPACE,
    NON_NEGATIVE_DECIMAL_PATTERN,
    DecimalString,
    Name,
    NonNegativeDecimalString,
    UtcDatetime,
    deterministic_event_id,
    format_decimal,
    format_time,
)

SCHEMA_BASE = "https://billing-worker.dev/schemas"
"""Prefix of every published schema ``$id``."""

EVENT_SOURCE: Final = "billing-worker"
"""The CloudEvents ``source`` of everything the worker publishes."""


class _Payload(BaseModel):
    """Common configuration of every event payload: strict, closed, immutable."""

    model_config = ConfigDict(
        strict=True,
        extra="forbid",
        frozen=True,
        json_schema_serialization_defaults_required=True,
    )


class QuotaEventData(_Payload):
    """``data`` of ``quota.warning`` and ``quota.exceeded``: a usage threshold was crossed."""

    meter: Name = Field(description="The meter whose usage crossed the threshold, e.g. tokens.")
    threshold: int = Field(ge=1, le=1000, description="The threshold crossed, percent of limit.")
    used: NonNegativeDecimalString = Field(description="Usage in the period so far.")
    limit: NonNegativeDecimalString = Field(description="The plan's limit on the meter.")
    period_start: UtcDatetime = Field(description="Start of the usage period (inclusive).")
    period_end: UtcDatetime = Field(description="End of the usage period (exclusive).")
    plan: Name = Field(description="The account's plan when the threshold was crossed.")
    enforcement: Literal["hard", "soft"] = Field(
        description="hard: usage past the limit is refused; soft: it is only reported."
    )

    @model_validator(mode="after")
    def _period_is_forward(self) -> QuotaEventData:
        if self.period_start >= self.period_end:
            raise ValueError("period_start must be before period_end")
        return self


class CreditsEventData(_Payload):
    """``data`` of ``credits.low`` and ``credits.exhausted``: a credit balance fell."""

    balance: NonNegativeDecimalString = Field(description="Credit balance after the fall.")
    threshold: NonNegativeDecimalString = Field(
        description="The alert level crossed; 0 for credits.exhausted."
    )
    shortfall: NonNegativeDecimalString = Field(
        description="Credits used that no grant covered, cumulative in this crossing; usually 0."
    )
    meter: Name | None = Field(description="The meter whose usage caused the fall, if any.")


class UsageRejectedData(_Payload):
    """``data`` of ``usage.rejected``: an incoming usage event was dead-lettered.

    The producer may have sent garbage, so ``source``, ``original_id`` and
    ``original_type`` are null when they could not be read.
    """

    reason: Name = Field(description="Machine-readable code, e.g. schema_violation.")
    detail: str = Field(description="Human-readable explanation.")
    source: str | None = Field(description="The rejected event's source, if readable.")
    original_id: str | None = Field(description="The rejected event's id, if readable.")
    original_type: str | None = Field(description="The rejected event's type, if readable.")
    queue: Name = Field(description="The queue the event was consumed from.")


class SubscriptionChangedData(_Payload):
    """``data`` of ``subscription.changed``: an account's plan or status changed."""

    plan: Name = Field(description="The plan now.")
    status: Name = Field(description="The subscription status now, e.g. active, canceled.")
    previous_plan: Name | None = Field(description="The plan before; null if none.")
    previous_status: Name | None = Field(description="The status before; null if none.")
    current_period_start: UtcDatetime | None = Field(
        description="Start of the current billing period, if known."
    )
    current_period_end: UtcDatetime | None = Field(
        description="End of the current billing period, if known."
    )
    cause: Name = Field(description="What changed it, e.g. operator or stripe.")


CurrencyCode = Annotated[str, StringConstraints(pattern=r"^[a-z]{3}$")]
"""A three-letter ISO 4217 currency code in lower case, as Stripe writes it: ``usd``."""


class InvoicePaymentData(_Payload):
    """``data`` of ``invoice.paid`` and ``invoice.payment_failed``: a Stripe invoice's payment.

    ``amount`` is in the currency's major unit: 990 cents of ``usd`` is ``"9.90"``, while a
    zero-decimal currency such as ``jpy`` has no fraction (``"990"``).
    """

    invoice_id: Identifier | None = Field(
        description="Our invoice id when the Stripe invoice was synced from one; null otherwise."
    )
    stripe_invoice_id: Identifier = Field(description="The Stripe invoice id, e.g. in_1Pq...")
    amount: NonNegativeDecimalString = Field(
        description=(
            "Money in the currency's major unit, e.g. 9.90: the amount paid (invoice.paid) "
            "or the amount that could not be collected (invoice.payment_failed)."
        )
    )
    currency: CurrencyCode = Field(description="Lower-case ISO 4217 code, e.g. usd.")
    attempt_count: Annotated[int, Field(ge=0)] | None = Field(
        description="Payment attempts Stripe has made on the invoice, if known."
    )
    failure_message: str | None = Field(
        description="Why the last attempt failed, if known; usually null for invoice.paid."
    )
    hosted_invoice_url: str | None = Field(
        description="Stripe's page where the customer can view and pay the invoice, if any."
    )


class InvoiceLineData(_Payload):
    """One line of an invoice, as the customer reads it."""

    line_no: int = Field(ge=1, description="Position on the invoice, from 1.")
    kind: Literal["plan_fee", "usage", "credits", "adjustment"] = Field(
        description="plan_fee, usage (a meter), credits (informational) or adjustment "
        "(late usage of an earlier, closed period)."
    )
    description: str = Field(description="What the line is, in words.")
    meter: Name | None = Field(description="The meter of usage and adjustment lines.")
    quantity: NonNegativeDecimalString = Field(description="Usage in the period.")
    billable: NonNegativeDecimalString = Field(
        description="Usage charged for, after included and free quantities."
    )
    amount: DecimalString = Field(
        description="Money, rounded once to the currency's minor unit (adjustments may be "
        "negative)."
    )
    refers_to_period_start: UtcDatetime | None = Field(
        description="Adjustments: the start of the closed period they correct."
    )
    billed_by: Literal["worker", "stripe_subscription"] = Field(
        default="worker",
        description="Who charges the amount: the worker (pushed to Stripe as an invoice "
        "item), or the account's Stripe subscription (a plan fee on a licensed price, which "
        "Stripe invoices itself; shown so the total explains every cent).",
    )


class InvoiceReadyData(_Payload):
    """``data`` of ``invoice.ready``: a billing period was closed into an invoice."""

    invoice_id: Identifier = Field(description="Our invoice id.")
    period_start: UtcDatetime = Field(description="Start of the billed period (inclusive).")
    period_end: UtcDatetime = Field(description="End of the billed period (exclusive).")
    plan: Name = Field(description="The plan in force at the end of the period.")
    lines: list[InvoiceLineData] = Field(description="The invoice lines, in order.")
    subtotal: DecimalString = Field(description="Sum of the line amounts.")
    credits_applied: NonNegativeDecimalString = Field(
        description="Prepaid credits grants paid for the period's usage (credits, not money)."
    )
    credits_shortfall: NonNegativeDecimalString = Field(
        default=Decimal(0),
        description="Credits the period's usage cost beyond every grant; charged on a line "
        "of its own only when the price book sets credits.shortfall_price.",
    )
    total: DecimalString = Field(description="What is owed.")
    billed_by_worker: DecimalString | None = Field(
        default=None,
        description="The part of the total the worker charges (the lines billed_by worker).",
    )
    billed_by_subscription: DecimalString | None = Field(
        default=None,
        description="The part of the total a Stripe subscription charges itself.",
    )
    currency: CurrencyCode = Field(description="Lower-case ISO 4217 code, e.g. usd.")
    pricebook_version: Name = Field(description="The price book the invoice was rated with.")
    number: Name | None = Field(
        default=None,
        description="The invoice number, gap-free within the year of issue: "
        "YYYY-NNNNNN (e.g. 2026-000042). Given when the invoice is issued (open).",
    )


DataT_co = TypeVar("DataT_co", bound=BaseModel, covariant=True)
"""The payload model of an envelope. Covariant (envelopes are frozen), so every per-type
envelope is a ``BillingEvent[BaseModel]`` to code that handles events generically."""


class BillingEvent(BaseModel, Generic[DataT_co]):
    """A CloudEvents 1.0 envelope (structured mode) the worker publishes to ``billing.events``.

    Use a per-type subclass (:class:`QuotaWarningEvent`, ...): it fixes ``type`` and the
    ``data`` model, and only ``id``, ``subject``, ``time`` and ``data`` need be given.
    """

    model_config = ConfigDict(
        strict=True,
        extra="forbid",
        frozen=True,
        json_schema_serialization_defaults_required=True,
    )

    specversion: Literal["1.0"] = "1.0"
    id: Identifier = Field(description="Deterministic; subscribers drop redeliveries by id.")
    source: Literal["billing-worker"] = EVENT_SOURCE
    type: EventType = Field(description="The event type; also the routing key.")
    subject: Identifier = Field(description="The account the event is about.")
    time: UtcDatetime = Field(description="When it happened, in UTC.")
    datacontenttype: Literal["application/json"] = "application/json"
    data: DataT_co


def _config(name: str, title: str) -> ConfigDict:
    """Per-type envelope configuration: the schema ``$id`` and title."""
    return ConfigDict(title=title, json_schema_extra={"$id": f"{SCHEMA_BASE}/{name}/v1.json"})


class QuotaWarningEvent(BillingEvent[QuotaEventData]):
    """``quota.warning``: a usage threshold below 100% of the limit was crossed."""

    model_config = _config("quota-warning", "QuotaWarningEvent")

    type: Literal["quota.warning"] = "quota.warning"

    @model_validator(mode="after")
    def _below_limit(self) -> QuotaWarningEvent:
        if self.data.threshold >= 100:
            raise ValueError("quota.warning is for thresholds below 100; use quota.exceeded")
        return self


class QuotaExceededEvent(BillingEvent[QuotaEventData]):
    """``quota.exceeded``: 100% (or more) of the limit was crossed.

    At most one per account, meter, period and threshold, ever.
    """

    model_config = _config("quota-exceeded", "QuotaExceededEvent")

    type: Literal["quota.exceeded"] = "quota.exceeded"

    @model_validator(mode="after")
    def _at_or_over_limit(self) -> QuotaExceededEvent:
        if self.data.threshold < 100:
            raise ValueError("quota.exceeded is for thresholds of 100 or more; use quota.warning")
        return self


class CreditsLowEvent(BillingEvent[CreditsEventData]):
    """``credits.low``: a credit balance fell below its alert level."""

    model_config = _config("credits-low", "CreditsLowEvent")

    type: Literal["credits.low"] = "credits.low"


class CreditsExhaustedEvent(BillingEvent[CreditsEventData]):
    """``credits.exhausted``: a credit balance fell to zero (balance and threshold are 0)."""

    model_config = _config("credits-exhausted", "CreditsExhaustedEvent")

    type: Literal["credits.exhausted"] = "credits.exhausted"

    @model_validator(mode="after")
    def _at_zero(self) -> CreditsExhaustedEvent:
        if self.data.balance != 0 or self.data.threshold != 0:
            raise ValueError("credits.exhausted has balance 0 and threshold 0")
        return self


class UsageRejectedEvent(BillingEvent[UsageRejectedData]):
    """``usage.rejected``: an incoming usage event was dead-lettered."""

    model_config = _config("usage-rejected", "UsageRejectedEvent")

    type: Literal["usage.rejected"] = "usage.rejected"


class SubscriptionChangedEvent(BillingEvent[SubscriptionChangedData]):
    """``subscription.changed``: an account's plan or subscription status changed."""

    model_config = _config("subscription-changed", "SubscriptionChangedEvent")

    type: Literal["subscription.changed"] = "subscription.changed"


class InvoiceReadyEvent(BillingEvent[InvoiceReadyData]):
    """``invoice.ready``: a billing period was closed into an invoice."""

    model_config = _config("invoice-ready", "InvoiceReadyEvent")

    type: Literal["invoice.ready"] = "invoice.ready"


class InvoicePaidEvent(BillingEvent[InvoicePaymentData]):
    """``invoice.paid``: a Stripe invoice of the account was paid."""

    model_config = _config("invoice-paid", "InvoicePaidEvent")

    type: Literal["invoice.paid"] = "invoice.paid"


class InvoicePaymentFailedEvent(BillingEvent[InvoicePaymentData]):
    """``invoice.payment_failed``: an attempt to collect a Stripe invoice of the account failed."""

    model_config = _config("invoice-payment-failed", "InvoicePaymentFailedEvent")

    type: Literal["invoice.payment_failed"] = "invoice.payment_failed"


EVENT_TYPES: Mapping[str, type[BillingEvent[Any]]] = MappingProxyType(
    {
        "quota.warning": QuotaWarningEvent,
        "quota.exceeded": QuotaExceededEvent,
        "credits.low": CreditsLowEvent,
        "credits.exhausted": CreditsExhaustedEvent,
        "usage.rejected": UsageRejectedEvent,
        "subscription.changed": SubscriptionChangedEvent,
        "invoice.ready": InvoiceReadyEvent,
        "invoice.paid": InvoicePaidEvent,
        "invoice.payment_failed": InvoicePaymentFailedEvent,
    }
)
"""Event ``type`` -> its envelope class, for every billing event modelled here."""

# The wire value types live in schemas.wire_values; importable from here as before.
__all__ = [
    "DECIMAL_PATTERN",
    "EVENT_ID_NAMESPACE",
    "EVENT_SOURCE",
    "EVENT_TYPES",
    "NON_NEGATIVE_DECIMAL_PATTERN",
    "SCHEMA_BASE",
    "BillingEvent",
    "CreditsEventData",
    "CreditsExhaustedEvent",
    "CreditsLowEvent",
    "CurrencyCode",
    "DataT_co",
    "DecimalString",
    "InvoiceLineData",
    "InvoicePaidEvent",
    "InvoicePaymentData",
    "InvoicePaymentFailedEvent",
    "InvoiceReadyData",
    "InvoiceReadyEvent",
    "Name",
    "NonNegativeDecimalString",
    "QuotaEventData",
    "QuotaExceededEvent",
    "QuotaWarningEvent",
    "SubscriptionChangedData",
    "SubscriptionChangedEvent",
    "UsageRejectedData",
    "UsageRejectedEvent",
    "UtcDatetime",
    "deterministic_event_id",
    "format_decimal",
    "format_time",
]

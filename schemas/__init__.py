"""Wire contracts of billing-worker: pydantic v2 models of every message on the bus.

Product services may import this package; it never imports ``billing_worker``.
"""

from schemas.events import (
    EVENT_TYPES,
    BillingEvent,
    CreditsEventData,
    CreditsExhaustedEvent,
    CreditsLowEvent,
    DecimalString,
    InvoicePaidEvent,
    InvoicePaymentData,
    InvoicePaymentFailedEvent,
    NonNegativeDecimalString,
    QuotaEventData,
    QuotaExceededEvent,
    QuotaWarningEvent,
    SubscriptionChangedData,
    SubscriptionChangedEvent,
    UsageRejectedData,
    UsageRejectedEvent,
    UtcDatetime,
    deterministic_event_id,
)
from schemas.quota_check import (
    QUOTA_CHECK_ROUTING_KEY,
    QuotaCheckError,
    QuotaCheckReply,
    QuotaCheckRequest,
)
from schemas.usage import (
    USAGE_EVENT_SCHEMA_ID,
    DimensionValue,
    UsageData,
    UsageEvent,
    UsageEventV1,
)

__all__ = [
    "EVENT_TYPES",
    "QUOTA_CHECK_ROUTING_KEY",
    "USAGE_EVENT_SCHEMA_ID",
    "BillingEvent",
    "CreditsEventData",
    "CreditsExhaustedEvent",
    "CreditsLowEvent",
    "DecimalString",
    "DimensionValue",
    "InvoicePaidEvent",
    "InvoicePaymentData",
    "InvoicePaymentFailedEvent",
    "NonNegativeDecimalString",
    "QuotaCheckError",
    "QuotaCheckReply",
    "QuotaCheckRequest",
    "QuotaEventData",
    "QuotaExceededEvent",
    "QuotaWarningEvent",
    "SubscriptionChangedData",
    "SubscriptionChangedEvent",
    "UsageData",
    "UsageEvent",
    "UsageEventV1",
    "UsageRejectedData",
    "UsageRejectedEvent",
    "UtcDatetime",
    "deterministic_event_id",
]

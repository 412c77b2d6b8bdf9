"""For product services: publish usage to billing-worker and subscribe to its billing events.

This package imports only aio-pika, httpx and :mod:`schemas` (and the broker names of the
topology), never the worker's database, Stripe or observability code, so a service can
use it without loading any of that. :class:`BillingApi` is the HTTP API's client.
"""

from billing_worker.client.billing_events import (
    BillingEventHandler,
    BillingEventSubscriber,
    UnknownBillingEventType,
    parse_billing_event,
)
from billing_worker.client.http_api import ApiError, BillingApi
from billing_worker.client.publisher import (
    UsageNotPublished,
    UsagePublisher,
    UsageRefused,
    UsageUnroutable,
)
from billing_worker.client.usage_event import (
    DEFAULT_AMQP_URL,
    InvalidUsageEvent,
    UsagePublishError,
    build_usage_event,
    new_event_id,
    usage_event_body,
    usage_routing_key,
)

__all__ = [
    "DEFAULT_AMQP_URL",
    "ApiError",
    "BillingApi",
    "BillingEventHandler",
    "BillingEventSubscriber",
    "InvalidUsageEvent",
    "UnknownBillingEventType",
    "UsageNotPublished",
    "UsagePublishError",
    "UsagePublisher",
    "UsageRefused",
    "UsageUnroutable",
    "build_usage_event",
    "new_event_id",
    "parse_billing_event",
    "usage_event_body",
    "usage_routing_key",
]

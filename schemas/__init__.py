"""Wire contracts of billing-worker: pydantic v2 models of every message on the bus.

Product services may import this package; it never imports ``billing_worker``.
"""

from schemas.usage import (
    USAGE_EVENT_SCHEMA_ID,
    DimensionValue,
    UsageData,
    UsageEvent,
    UsageEventV1,
)

__all__ = [
    "USAGE_EVENT_SCHEMA_ID",
    "DimensionValue",
    "UsageData",
    "UsageEvent",
    "UsageEventV1",
]

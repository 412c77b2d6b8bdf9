"""Quota check, version 1: the request a service sends to ``billing.quota.check`` and the reply.

A service publishes a :class:`QuotaCheckRequest` to the default exchange with routing key
``billing.quota.check``, ``reply_to`` and ``correlation_id`` set; the worker answers on
``reply_to`` with the same ``correlation_id``: a :class:`QuotaCheckReply`, or a
:class:`QuotaCheckError` when the request is malformed.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from schemas.events import SCHEMA_BASE, DecimalString, NonNegativeDecimalString, UtcDatetime
from schemas.usage import Identifier, Quantity

QUOTA_CHECK_ROUTING_KEY = "billing.quota.check"
"""Routing key (on the default exchange, so also the queue name) of quota-check requests."""

MeterName = Annotated[str, StringConstraints(min_length=1, max_length=128)]
"""A meter name, e.g. tokens."""


class QuotaCheckRequest(BaseModel):
    """Would ``quantity`` more of ``meter`` stay within ``account``'s plan?"""

    model_config = ConfigDict(
        strict=True,
        extra="forbid",
        frozen=True,
        title="QuotaCheckRequest",
        json_schema_extra={"$id": f"{SCHEMA_BASE}/quota-check-request/v1.json"},
    )

    account: Identifier = Field(description="The account to check, e.g. acct_42.")
    meter: MeterName = Field(description="The meter to check, e.g. tokens.")
    quantity: Quantity = Field(
        default=Decimal(1),
        description="The usage about to happen, a JSON number or a decimal string; 1 when absent.",
    )


class QuotaCheckReply(BaseModel):
    """The answer to a :class:`QuotaCheckRequest`.

    ``limit`` and ``remaining`` are null when the plan has no limit on the meter; they are
    always present.
    """

    model_config = ConfigDict(
        strict=True,
        extra="forbid",
        frozen=True,
        title="QuotaCheckReply",
        json_schema_extra={"$id": f"{SCHEMA_BASE}/quota-check-reply/v1.json"},
        json_schema_serialization_defaults_required=True,
    )

    account: Identifier = Field(description="The account checked, as requested.")
    meter: MeterName = Field(description="The meter checked, as requested.")
    allowed: bool = Field(description="Whether the requested quantity may be used.")
    used: NonNegativeDecimalString = Field(description="Usage in the current period so far.")
    limit: NonNegativeDecimalString | None = Field(
        description="The plan's limit on the meter; null when unlimited."
    )
    remaining: DecimalString | None = Field(description="limit minus used; null when unlimited.")
    period_end: UtcDatetime = Field(description="When the current usage period ends.")


class QuotaCheckError(BaseModel):
    """The answer to a malformed quota-check request."""

    model_config = ConfigDict(
        strict=True,
        extra="forbid",
        frozen=True,
        title="QuotaCheckError",
        json_schema_extra={"$id": f"{SCHEMA_BASE}/quota-check-error/v1.json"},
    )

    error: Annotated[str, StringConstraints(min_length=1)] = Field(
        description="What is wrong with the request, for a human."
    )

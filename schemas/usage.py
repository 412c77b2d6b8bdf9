"""Usage event, version 1: a CloudEvents 1.0 envelope (structured mode) carrying a quantity."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    WithJsonSchema,
    field_validator,
    model_validator,
)

USAGE_EVENT_SCHEMA_ID = "https://billing-worker.dev/schemas/usage-event/v1.json"

MIN_YEAR, MAX_YEAR = 1970, 9998
"""Usage times outside these years are producer bugs (and year 1 or 9999 with an offset
cannot even be converted to UTC)."""

MAX_DIMENSIONS = 32
"""More dimensions than this on one event is a producer bug, not a pricing need."""

Identifier = Annotated[str, StringConstraints(min_length=1, max_length=256)]
EventType = Annotated[
    str, StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
]
DimensionKey = Annotated[str, StringConstraints(min_length=1, max_length=64)]
DimensionValue = (
    Annotated[str, StringConstraints(max_length=256)]
    | Annotated[int, Field(ge=-(2**63), le=2**63 - 1)]
    | Annotated[float, Field(allow_inf_nan=False)]
    | bool
    | None
)
"""A flat scalar a price may depend on (``model = "gpt-4"``): a string, a 64-bit integer,
a finite number, a boolean or null. Nested objects and arrays are refused."""

Quantity = Annotated[
    Decimal,
    Field(ge=0, max_digits=38, decimal_places=18, allow_inf_nan=False),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "number", "minimum": 0},
                {"type": "string", "pattern": r"^[0-9]+(\.[0-9]+)?([eE][+-]?[0-9]+)?$"},
            ]
        }
    ),
]
"""Non-negative, finite, at most 38 significant digits of which at most 18 after the point."""


class UsageData(BaseModel):
    """The ``data`` member: ``quantity`` plus flat dimension fields."""

    model_config = ConfigDict(strict=True, extra="allow", frozen=True)

    quantity: Quantity = Field(
        default=Decimal(1),
        description="Amount used, a JSON number or a decimal string; 1 when absent.",
    )
    __pydantic_extra__: dict[DimensionKey, DimensionValue] = Field(init=False)

    @model_validator(mode="after")
    def _bounded_dimensions(self) -> UsageData:
        extra = self.__pydantic_extra__ or {}
        if len(extra) > MAX_DIMENSIONS:
            raise ValueError(f"data has {len(extra)} dimension fields; at most {MAX_DIMENSIONS}")
        return self

    @property
    def dimensions(self) -> dict[str, str | int | float | bool | None]:
        """Every ``data`` field but ``quantity``."""
        return dict(self.__pydantic_extra__ or {})


class UsageEventV1(BaseModel):
    """A usage event as product services publish it to ``billing.usage``.

    The idempotency key is (``source``, ``id``); ``subject`` is the billed account.
    """

    model_config = ConfigDict(
        strict=True,
        extra="forbid",
        frozen=True,
        json_schema_extra={"$id": USAGE_EVENT_SCHEMA_ID},
        title="UsageEvent",
    )

    specversion: Literal["1.0"]
    id: Identifier = Field(description="Unique per source; with source, the idempotency key.")
    source: Identifier = Field(description="The producing service, e.g. chat-service.")
    type: EventType = Field(description="Selects the meter(s), e.g. chat.tokens.")
    subject: Identifier = Field(description="The billed account id.")
    time: AwareDatetime = Field(
        # lax only so the check below may see the text first; it lets through strings only
        strict=False,
        description="When the usage happened; must carry a UTC offset.",
    )
    datacontenttype: Literal["application/json"] | None = None
    dataschema: Annotated[str, StringConstraints(max_length=512)] | None = None
    data: UsageData = Field(default_factory=UsageData)

    @field_validator("time", mode="before")
    @classmethod
    def _calendar_time(cls, value: object) -> object:
        """A date-time with its offset, not a unix time in a string: pydantic would read
        ``"1700000000"`` as seconds (or milliseconds, by its size) and assume UTC."""
        if isinstance(value, datetime):
            return value  # a Python producer's own datetime (an aware one, checked next)
        if not isinstance(value, str):
            raise ValueError(  # noqa: TRY004 - pydantic reports only ValueError as invalid
                "time must be a string: an RFC 3339 date-time with an offset"
            )
        if value.strip().replace(".", "", 1).isdigit():
            raise ValueError("time must be an RFC 3339 date-time with an offset, not a number")
        return value

    @field_validator("time")
    @classmethod
    def _plausible_utc_time(cls, value: datetime) -> datetime:
        """Normalised to UTC; years 1970-9998 only, as written (so every offset converts
        safely) and in UTC (``1970-01-01T00:00:00+14:00`` is 1969: its period could not be
        named in a billing event)."""
        if not MIN_YEAR <= value.year <= MAX_YEAR:
            raise ValueError(f"time must fall in the years {MIN_YEAR}-{MAX_YEAR}")
        utc = value.astimezone(UTC)
        if not MIN_YEAR <= utc.year <= MAX_YEAR:
            raise ValueError(f"time must fall in the years {MIN_YEAR}-{MAX_YEAR} in UTC")
        return utc


UsageEvent = UsageEventV1
"""The current version of the usage event."""

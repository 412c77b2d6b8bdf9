"""The value types of the wire that every message shares: decimal strings (never a JSON
number or an exponent), RFC 3339 UTC times written with ``Z``, short names, and the
deterministic event ids."""

from __future__ import annotations

import hashlib
import re
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BeforeValidator,
    Field,
    PlainSerializer,
    StringConstraints,
    ValidationInfo,
    WithJsonSchema,
)

from schemas.usage import MAX_YEAR, MIN_YEAR

DECIMAL_PATTERN = r"^-?[0-9]+(\.[0-9]+)?$"
"""A decimal string on the wire: optional minus, digits, optional fraction; no exponent."""

NON_NEGATIVE_DECIMAL_PATTERN = r"^[0-9]+(\.[0-9]+)?$"
"""A non-negative decimal string on the wire."""

_DECIMAL_RE = re.compile(DECIMAL_PATTERN)


def _wire_decimal_only(value: object, info: ValidationInfo) -> object:
    """In JSON, a decimal string becomes a ``Decimal``; numbers and exponents are refused.

    In Python, anything but a ``Decimal`` is left to the strict check, which refuses it.
    """
    if isinstance(value, bool | int | float):
        # ValueError, not TypeError: pydantic turns only ValueError into a ValidationError.
        raise ValueError("must be a decimal string such as '10.90', not a number")  # noqa: TRY004
    if isinstance(value, str) and info.mode == "json":
        if not _DECIMAL_RE.fullmatch(value):
            raise ValueError("must be a decimal string such as '10.90' (digits, no exponent)")
        return Decimal(value)
    return value


def format_decimal(value: Decimal) -> str:
    """``value`` in plain positional notation: ``1E+5`` -> ``"100000"``, ``-0`` -> ``"0"``.

    Trailing fraction zeros are kept (``"10.90"`` stays ``"10.90"``): they carry the
    currency's precision.
    """
    if value.is_zero():
        value = value.copy_abs()
    return format(value, "f")


DecimalString = Annotated[
    Decimal,
    BeforeValidator(_wire_decimal_only),
    Field(allow_inf_nan=False),
    PlainSerializer(format_decimal, return_type=str, when_used="json"),
    WithJsonSchema({"type": "string", "pattern": DECIMAL_PATTERN}),
]
"""An exact, finite decimal: a ``Decimal`` in Python, a decimal string in JSON."""

NonNegativeDecimalString = Annotated[
    DecimalString,
    Field(ge=0),
    WithJsonSchema({"type": "string", "pattern": NON_NEGATIVE_DECIMAL_PATTERN}),
]
"""A :data:`DecimalString` that is zero or more (quantities, limits, balances)."""


def _to_utc(value: datetime) -> datetime:
    """Normalised to UTC; years 1970-9998 only (so every offset converts safely)."""
    if not MIN_YEAR <= value.year <= MAX_YEAR:
        raise ValueError(f"time must fall in the years {MIN_YEAR}-{MAX_YEAR}")
    return value.astimezone(UTC)


def format_time(value: datetime) -> str:
    """RFC 3339 in UTC with ``Z``: ``2026-12-01T00:00:00Z``."""
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


UtcDatetime = Annotated[
    AwareDatetime,
    AfterValidator(_to_utc),
    PlainSerializer(format_time, return_type=str, when_used="json"),
    WithJsonSchema({"type": "string", "format": "date-time"}, mode="validation"),
    WithJsonSchema(
        {"type": "string", "format": "date-time", "pattern": "Z$"}, mode="serialization"
    ),
]
"""An aware datetime, converted to UTC; in JSON always written with ``Z``."""

Name = Annotated[str, StringConstraints(min_length=1, max_length=128)]
"""A short machine name: a meter, a plan, a status, a reason code."""


EVENT_ID_NAMESPACE = uuid.UUID("15724aae-4689-5fd5-a511-2621cde48fe0")
"""Namespace of :func:`deterministic_event_id`: ``uuid5(NAMESPACE_URL,
"https://billing-worker.dev/events")``. Changing it changes every event id, so
subscribers would stop recognising redeliveries: never change it."""


def deterministic_event_id(event_type: str, *parts: str) -> str:
    """The id of the event of ``event_type`` about ``parts``, the same on every call.

    A UUIDv5 (SHA-1, RFC 9562) in :data:`EVENT_ID_NAMESPACE` of the type and the parts,
    each length-prefixed (``"<len>:<text>"``) so no two different tuples of parts share a
    name, whatever characters the parts contain. The outbox may publish an event more than
    once; because the id is a pure function of what the event is about (e.g. account,
    meter, period start, threshold), subscribers drop redeliveries by ``id``.
    """
    pieces = (event_type, *parts)
    for piece in pieces:
        if not isinstance(piece, str):
            raise TypeError(f"event id parts must be str, not {type(piece).__name__}")
    name = "".join(f"{len(piece)}:{piece}" for piece in pieces)
    # UUIDv5 is SHA-1 by definition; the id is not a secret.
    digest = hashlib.sha1(
        EVENT_ID_NAMESPACE.bytes + name.encode("utf-8", "surrogatepass"),
        usedforsecurity=False,
    ).digest()
    return str(uuid.UUID(bytes=digest[:16], version=5))

"""A usage event built from a service's arguments, validated as the worker validates it.

Pure: no I/O. :mod:`billing_worker.client.publisher` sends what this builds.
"""

from __future__ import annotations

import json
import secrets
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from time import time_ns
from typing import Final

from pydantic import ValidationError

from schemas.usage import DimensionValue, UsageEvent

DEFAULT_AMQP_URL: Final = "amqp://guest:guest@127.0.0.1:5672/"
"""The broker billing-worker uses by default (``BILLING_AMQP_URL``)."""

MAX_BODY_BYTES: Final = 64 * 1024
"""The worker dead-letters larger bodies as ``too_large``; refused here before sending."""

MAX_ROUTING_KEY_BYTES: Final = 255
"""AMQP routing keys are short strings."""

Quantity = Decimal | int | float | str
"""A usage quantity: exact as a ``Decimal`` or a decimal string, or a JSON number."""


class UsagePublishError(Exception):
    """Root of the errors the usage publisher raises on purpose."""


class InvalidUsageEvent(UsagePublishError, ValueError):
    """The arguments do not make a valid usage event; nothing was published."""


def new_event_id(unix_ms: int | None = None) -> str:
    """A fresh idempotency key: a UUIDv7 (RFC 9562), ordered by its millisecond timestamp.

    Time-ordered keys keep the worker's idempotency index compact, where random UUIDv4 keys
    scatter it.
    """
    ms = time_ns() // 1_000_000 if unix_ms is None else unix_ms
    if not 0 <= ms < 1 << 48:
        raise ValueError(f"unix_ms must fit in 48 bits, not {ms}")
    value = ms << 80 | 0x7 << 76 | secrets.randbits(12) << 64 | 0b10 << 62 | secrets.randbits(62)
    return str(uuid.UUID(int=value))


def _wire_quantity(quantity: Quantity) -> object:
    """Decimals travel as decimal strings, so they stay exact."""
    return str(quantity) if isinstance(quantity, Decimal) else quantity


_ARGUMENT_OF: Final = {
    "id": "event_id (id)",
    "type": "event_type (type)",
    "subject": "account (subject)",
}
"""Envelope attributes named after the arguments that set them, in error messages."""


def _describe(error: ValidationError) -> str:
    parts = []
    for item in error.errors(include_url=False):
        path = [str(p) for p in item["loc"]]
        if path:
            path[0] = _ARGUMENT_OF.get(path[0], path[0])
        parts.append(f"{'.'.join(path) or '(event)'}: {item['msg']}")
    return "; ".join(parts)


def build_usage_event(
    *,
    source: str,
    event_type: str,
    account: str,
    quantity: Quantity = 1,
    dimensions: Mapping[str, DimensionValue] | None = None,
    event_id: str | None = None,
    time: datetime | None = None,
) -> UsageEvent:
    """The usage event these arguments describe, validated as the worker validates it.

    ``account`` is the CloudEvents ``subject``; ``dimensions`` are the other ``data`` fields
    (``{"model": "gpt-4"}``); ``time`` defaults to now and must carry a UTC offset;
    ``event_id`` defaults to :func:`new_event_id`. Raises :class:`InvalidUsageEvent`.
    """
    dimensions = dict(dimensions or {})
    if "quantity" in dimensions:
        raise InvalidUsageEvent("pass the quantity as quantity=, not as a dimension")
    if time is not None and not isinstance(time, datetime):
        raise InvalidUsageEvent(f"time must be a datetime, not {type(time).__name__}")
    raw = {
        "specversion": "1.0",
        "id": new_event_id() if event_id is None else event_id,
        "source": source,
        "type": event_type,
        "subject": account,
        "time": (time or datetime.now(UTC)).isoformat(),
        "datacontenttype": "application/json",
        "data": {"quantity": _wire_quantity(quantity), **dimensions},
    }
    try:
        text = json.dumps(raw, allow_nan=False, ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        raise InvalidUsageEvent(f"not representable as JSON: {exc}") from exc
    try:
        event = UsageEvent.model_validate_json(text)
    except ValidationError as exc:
        raise InvalidUsageEvent(f"invalid usage event: {_describe(exc)}") from exc
    usage_event_body(event)  # refuse what the worker would refuse for its size
    usage_routing_key(event.source, event.type)
    return event


def usage_event_body(event: UsageEvent) -> bytes:
    """The event as compact JSON: the same bytes for the same event, so a retry is a duplicate."""
    envelope = {k: v for k, v in event.model_dump(mode="json").items() if v is not None}
    body = json.dumps(envelope, ensure_ascii=False, separators=(",", ":")).encode()
    if len(body) > MAX_BODY_BYTES:
        raise InvalidUsageEvent(f"the event is {len(body)} bytes; at most {MAX_BODY_BYTES}")
    return body


def usage_routing_key(source: str, event_type: str) -> str:
    """``usage.<source>.<type>``, the routing key the contract asks for."""
    key = f"usage.{source}.{event_type}"
    if len(key.encode()) > MAX_ROUTING_KEY_BYTES:
        raise InvalidUsageEvent(f"routing key {key[:40]!r}... is over 255 bytes")
    return key

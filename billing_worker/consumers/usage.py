"""The ``billing-worker.usage`` consumer: decode a delivery into a usage record, record batches."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Sequence
from datetime import datetime, timedelta

import orjson
from pydantic import ValidationError

from billing_worker.adapters.amqp.dead_letters import DeadLetter
from billing_worker.adapters.amqp.delivery import Delivery
from billing_worker.consumers.settlement import Outcome, Settled
from billing_worker.domain.errors import (
    IdempotencyConflict,
    InvalidJson,
    PermanentError,
    SchemaViolation,
)
from billing_worker.domain.pricebook import MeterFeed, PriceBook
from billing_worker.domain.usage import UsageOutcome, UsageRecord, check_not_in_future
from billing_worker.service.events import usage_rejected
from billing_worker.service.ports import Clock, OutgoingEvent, UnitOfWorkFactory
from billing_worker.service.record_usage import record_usage_batch
from schemas.usage import UsageEvent

MAX_BODY_BYTES = 64 * 1024
JSON_CONTENT_TYPES = frozenset({"application/json", "application/cloudevents+json"})


def describe_validation_error(error: ValidationError, limit: int = 5) -> str:
    """``loc: message`` for the first few problems, readable in a DLQ header."""
    parts = []
    for item in error.errors(include_url=False)[:limit]:
        location = ".".join(str(p) for p in item["loc"]) or "(message)"
        parts.append(f"{location}: {item['msg']}")
    more = error.error_count() - limit
    if more > 0:
        parts.append(f"... and {more} more")
    return "; ".join(parts)


def parse_usage_event(body: bytes, content_type: str | None) -> UsageEvent:
    """Validate one usage event straight from its bytes, or raise a ``PermanentError``."""
    if len(body) > MAX_BODY_BYTES:
        raise PermanentError(
            f"body is {len(body)} bytes; at most {MAX_BODY_BYTES}", reason="too_large"
        )
    if content_type and content_type.split(";")[0].strip().lower() not in JSON_CONTENT_TYPES:
        raise PermanentError(
            f"content_type {content_type!r} is not application/json",
            reason="unsupported_content_type",
        )
    try:
        event = UsageEvent.model_validate_json(body)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        if any(e["type"] == "json_invalid" and "recursion limit" in e["msg"] for e in errors):
            raise SchemaViolation(
                "nested deeper than a usage event can be (data fields are flat scalars): "
                f"{describe_validation_error(exc)}"
            ) from exc
        if any(e["type"] == "json_invalid" for e in errors):
            raise InvalidJson(f"body is not UTF-8 JSON: {describe_validation_error(exc)}") from exc
        raise SchemaViolation(describe_validation_error(exc)) from exc
    # JSON can carry NUL only escaped; the search is cheap, the walk rare.
    if b"\\u0000" in body:
        _refuse_nul_characters(event)
    return event


def _refuse_nul_characters(event: UsageEvent) -> None:
    """PostgreSQL text can't hold NUL: refuse it here, naming the fields, rather than have
    the database refuse the whole batch, which is then bisected down to this event."""
    envelope = {"id": event.id, "source": event.source, "subject": event.subject}
    envelope["dataschema"] = event.dataschema or ""
    bad = [name for name, value in envelope.items() if "\x00" in value]
    for key, value in event.data.dimensions.items():
        if "\x00" in key or (isinstance(value, str) and "\x00" in value):
            bad.append(f"data[{key!r}]")
    if bad:
        raise SchemaViolation(
            f"{', '.join(bad)}: NUL characters (\\u0000) are not allowed in strings"
        )


def validate_usage_event(
    body: bytes, content_type: str | None, book: PriceBook, *, now: datetime, max_skew: timedelta
) -> tuple[UsageEvent, tuple[MeterFeed, ...]]:
    """Everything the worker checks of one usage event before recording it (the schema,
    the event type, the time), and the meters it feeds; a ``PermanentError`` naming what
    is wrong. HTTP ingest checks events with this too, so both refuse the same events."""
    event = parse_usage_event(body, content_type)
    feeds = book.feeds(event.type, event.data.quantity, event.data.dimensions)
    check_not_in_future(event.time, now=now, max_skew=max_skew)
    return event, feeds


class UsageConsumer:
    """``BatchHandler`` for usage events."""

    def __init__(
        self,
        uow_factory: UnitOfWorkFactory,
        book: PriceBook,
        *,
        max_clock_skew: timedelta,
        clock: Clock,
    ) -> None:
        self._uow_factory = uow_factory
        self._book = book
        self._max_clock_skew = max_clock_skew
        self._clock = clock

    def decode(self, message: Delivery) -> UsageRecord:
        """A usage record, or a ``PermanentError`` naming what is wrong."""
        event, feeds = validate_usage_event(
            message.body,
            message.content_type,
            self._book,
            now=self._clock(),
            max_skew=self._max_clock_skew,
        )
        return UsageRecord(
            source=event.source,
            event_id=event.id,
            event_type=event.type,
            account=event.subject,
            occurred_at=event.time,
            quantity=event.data.quantity,
            dimensions=event.data.dimensions,
            feeds=feeds,
        )

    async def handle(self, commands: Sequence[UsageRecord]) -> Sequence[Outcome]:
        """Record the batch; duplicates settle quietly, conflicts are dead-lettered."""
        outcomes = await record_usage_batch(
            self._uow_factory, self._book, commands, clock=self._clock
        )
        return [
            _settlement(outcome, record) for outcome, record in zip(outcomes, commands, strict=True)
        ]


def _settlement(outcome: UsageOutcome, record: UsageRecord) -> Outcome:
    if outcome is UsageOutcome.RECORDED:
        return Settled.RECORDED
    if outcome is UsageOutcome.DUPLICATE:
        return Settled.DUPLICATE
    if outcome is UsageOutcome.LATE:
        return PermanentError(
            f"event time {record.occurred_at.isoformat()} falls in a period already invoiced, "
            'and a meter it feeds rejects late events (price book late_events = "reject")',
            reason="late_event",
        )
    return IdempotencyConflict(
        f"key (source={record.source!r}, id={record.event_id!r}) was already recorded "
        "with different content"
    )


def _readable(value: object) -> str | None:
    return value[:256] if isinstance(value, str) and value else None


def usage_rejected_notice(queue: str, letter: DeadLetter, at: datetime) -> OutgoingEvent:
    """``usage.rejected`` for a dead-lettered usage delivery.

    Whatever of ``source``, ``id``, ``type`` and ``subject`` can be read from the body is
    carried over (bad input may have none); the event id names the original event, or
    a digest of the body when it has no readable key.
    """
    body = letter.message.body
    fields: dict[str, object] = {}
    if len(body) <= MAX_BODY_BYTES:
        with contextlib.suppress(orjson.JSONDecodeError):
            parsed = orjson.loads(body)
            if isinstance(parsed, dict):
                fields = parsed
    return usage_rejected(
        reason=letter.reason,
        detail=letter.detail[:1000],
        queue=queue,
        source=_readable(fields.get("source")),
        original_id=_readable(fields.get("id")),
        original_type=_readable(fields.get("type")),
        account=_readable(fields.get("subject")),
        body_digest=hashlib.sha256(body).hexdigest(),
        at=at,
    )

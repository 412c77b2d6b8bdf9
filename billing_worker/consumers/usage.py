"""The ``billing-worker.usage`` consumer: decode a delivery into a usage record, record batches."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

from pydantic import ValidationError

from billing_worker.adapters.amqp.delivery import Delivery
from billing_worker.consumers.settlement import Outcome, Settled
from billing_worker.domain.errors import (
    IdempotencyConflict,
    InvalidJson,
    PermanentError,
    SchemaViolation,
)
from billing_worker.domain.meters import MeterCatalog
from billing_worker.domain.usage import UsageOutcome, UsageRecord, check_not_in_future
from billing_worker.service.ports import UnitOfWorkFactory
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
        return UsageEvent.model_validate_json(body)
    except ValidationError as exc:
        if any(e["type"] == "json_invalid" for e in exc.errors()):
            raise InvalidJson(f"body is not UTF-8 JSON: {describe_validation_error(exc)}") from exc
        raise SchemaViolation(describe_validation_error(exc)) from exc


class UsageConsumer:
    """``BatchHandler`` for usage events."""

    def __init__(
        self,
        uow_factory: UnitOfWorkFactory,
        catalog: MeterCatalog,
        *,
        max_clock_skew: timedelta,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._uow_factory = uow_factory
        self._catalog = catalog
        self._max_clock_skew = max_clock_skew
        self._clock = clock

    def decode(self, message: Delivery) -> UsageRecord:
        """A usage record, or a ``PermanentError`` naming what is wrong."""
        event = parse_usage_event(message.body, message.content_type)
        self._catalog.meters_for(event.type)
        check_not_in_future(event.time, now=self._clock(), max_skew=self._max_clock_skew)
        return UsageRecord(
            source=event.source,
            event_id=event.id,
            event_type=event.type,
            account=event.subject,
            occurred_at=event.time,
            quantity=event.data.quantity,
            dimensions=event.data.dimensions,
        )

    async def handle(self, commands: Sequence[UsageRecord]) -> Sequence[Outcome]:
        """Record the batch; duplicates settle quietly, conflicts are dead-lettered."""
        outcomes = await record_usage_batch(self._uow_factory, self._catalog, commands)
        return [
            _settlement(outcome, record) for outcome, record in zip(outcomes, commands, strict=True)
        ]


def _settlement(outcome: UsageOutcome, record: UsageRecord) -> Outcome:
    if outcome is UsageOutcome.RECORDED:
        return Settled.RECORDED
    if outcome is UsageOutcome.DUPLICATE:
        return Settled.DUPLICATE
    return IdempotencyConflict(
        f"key (source={record.source!r}, id={record.event_id!r}) was already recorded "
        "with different content"
    )

"""Publish rejected deliveries to their DLQ with a reason, confirmed before the ack."""

from __future__ import annotations

import asyncio
import math
import struct
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

import aio_pika
import orjson
import structlog
from aio_pika.abc import AbstractChannel, AbstractExchange
from pamqp import encode
from pamqp.common import FieldValue
from prometheus_client import Counter

from billing_worker.adapters.amqp.billing_events import billing_event_message
from billing_worker.adapters.amqp.delivery import Delivery
from billing_worker.service.ports import Clock, OutgoingEvent

log = structlog.get_logger(__name__)

MAX_DETAIL_CHARS = 1000
REASON_HEADER = "x-billing-reason"
DETAIL_HEADER = "x-billing-detail"
SHORT_STRING_BYTES = 255


def encodable(value: FieldValue) -> FieldValue:
    """A header value as it can be published again.

    What the client decodes is not always what it can encode: a long string that is not
    UTF-8 arrives as ``bytes`` (kept, as a byte array), a double as a ``float`` that is
    encoded as a 32-bit one (kept as text when it does not fit), a decimal whose mantissa
    does not fit 32 signed bits (text). Without this, such a header would fail every
    attempt to dead-letter its message, which would go back to the queue for ever.
    """
    if isinstance(value, dict):
        return {str(key): encodable(item) for key, item in value.items()}
    if isinstance(value, list):
        return [encodable(item) for item in value]
    if isinstance(value, bytes):
        return bytearray(value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    try:
        encode.encode_table_value(value)
    except (TypeError, ValueError, OverflowError, struct.error):
        return str(value)
    return value


def _short(value: str | None) -> str | None:
    """A property that must fit a short string (255 bytes) when encoded again; decoding
    may have widened bytes that were not UTF-8 into three-byte replacement characters."""
    if value is None or len(value.encode()) <= SHORT_STRING_BYTES:
        return value
    return value.encode()[:SHORT_STRING_BYTES].decode("utf-8", "ignore")


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A delivery to dead-letter and why."""

    message: Delivery
    reason: str
    detail: str


RejectionNotice = Callable[[str, DeadLetter, datetime], OutgoingEvent]
"""Builds the billing event announcing a rejection (``usage.rejected``) for a queue, at a time."""


class DeadLetterPublisher:
    """Copies rejected deliveries into ``<queue>.dlq`` on a confirming channel.

    Publishes go out concurrently but at most ``window`` at a time: thousands of
    unconfirmed publishes at once are slower than a modest window.

    For queues with a ``notices`` builder, each dead letter is also announced on the
    billing-events exchange (``usage.rejected``), confirmed like the dead letter itself:
    a letter counts as sent only when both are confirmed, else the original goes back to
    its queue and comes round again (the notice's id is the same each time). The notice
    is published directly rather than through the outbox, so rejecting bad input never
    depends on the database being up.
    """

    def __init__(
        self,
        channel: AbstractChannel,
        *,
        clock: Clock,
        window: int = 128,
        events_exchange: str | None = None,
        notices: Mapping[str, RejectionNotice] | None = None,
        published: Counter | None = None,
        on_announced: Callable[[Sequence[OutgoingEvent]], Awaitable[None]] | None = None,
    ) -> None:
        self._channel = channel
        self._clock = clock
        self._window = asyncio.Semaphore(window)
        self._events_exchange_name = events_exchange
        self._events_exchange: AbstractExchange | None = None
        self._notices = dict(notices or {})
        self._published = published
        self._on_announced = on_announced

    async def publish(self, queue: str, letters: Sequence[DeadLetter]) -> list[bool]:
        """Dead-letter each of ``letters``; return, aligned, whether the broker confirmed it."""
        dlq = f"{queue}.dlq"
        results = await asyncio.gather(
            *(self._publish_one(dlq, queue, letter) for letter in letters),
            return_exceptions=True,
        )
        confirmed = []
        announced = []
        for letter, result in zip(letters, results, strict=True):
            if isinstance(result, BaseException):
                log.warning(
                    "dead_letter_publish_failed",
                    queue=queue,
                    reason=letter.reason,
                    error=repr(result),
                )
                confirmed.append(False)
            else:
                confirmed.append(True)
                if result is not None:
                    announced.append(result)
        if announced and self._on_announced is not None:
            await self._record(announced)
        return confirmed

    async def _record(self, announced: Sequence[OutgoingEvent]) -> None:
        """Hand the confirmed notices on (the record of rejections the API looks events up
        in). Best effort: the dead letters are safe in their queue whatever happens here."""
        assert self._on_announced is not None  # noqa: S101 - checked by the caller
        try:
            await self._on_announced(announced)
        except Exception as exc:  # noqa: BLE001 - never fails a dead letter; logged
            log.warning("rejections_not_recorded", count=len(announced), error=repr(exc))

    async def _publish_one(self, dlq: str, queue: str, letter: DeadLetter) -> OutgoingEvent | None:
        original = letter.message
        rejected_at = self._clock()
        headers = {str(key): encodable(value) for key, value in (original.headers or {}).items()}
        headers.update(
            {
                REASON_HEADER: letter.reason,
                DETAIL_HEADER: letter.detail[:MAX_DETAIL_CHARS],
                "x-billing-queue": queue,
                "x-billing-routing-key": original.routing_key or "",
                "x-billing-rejected-at": rejected_at.isoformat(),
            }
        )
        message = aio_pika.Message(
            body=original.body,
            headers=headers,
            content_type=_short(original.content_type),
            content_encoding=_short(original.content_encoding),
            message_id=_short(original.message_id),
            correlation_id=_short(original.correlation_id),
            timestamp=original.timestamp,
            type=_short(original.type),
            app_id=_short(original.app_id),
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        )
        async with self._window:
            await self._channel.default_exchange.publish(message, routing_key=dlq, mandatory=True)
            notice = self._notices.get(queue)
            if notice is not None and self._events_exchange_name is not None:
                event = notice(queue, letter, rejected_at)
                await self._announce(self._events_exchange_name, event)
                return event
        return None

    async def _announce(self, exchange_name: str, event: OutgoingEvent) -> None:
        if self._events_exchange is None:
            self._events_exchange = await self._channel.get_exchange(exchange_name, ensure=False)
        body = orjson.dumps(event.payload)
        await self._events_exchange.publish(
            billing_event_message(event.event_id, event.event_type, body),
            routing_key=event.event_type,
            mandatory=False,  # no subscriber yet is not a failure
        )
        if self._published is not None:
            self._published.labels(type=event.event_type).inc()

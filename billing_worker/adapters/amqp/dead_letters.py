"""Publish rejected deliveries to their DLQ with a reason, confirmed before the ack."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import aio_pika
import structlog
from aio_pika.abc import AbstractChannel

from billing_worker.adapters.amqp.delivery import Delivery

log = structlog.get_logger(__name__)

MAX_DETAIL_CHARS = 1000
REASON_HEADER = "x-billing-reason"
DETAIL_HEADER = "x-billing-detail"


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A delivery to dead-letter and why."""

    message: Delivery
    reason: str
    detail: str


class DeadLetterPublisher:
    """Copies rejected deliveries into ``<queue>.dlq`` on a confirming channel.

    Publishes go out concurrently but at most ``window`` at a time: thousands of
    unconfirmed publishes at once are slower than a modest window.
    """

    def __init__(self, channel: AbstractChannel, *, window: int = 128) -> None:
        self._channel = channel
        self._window = asyncio.Semaphore(window)

    async def publish(self, queue: str, letters: Sequence[DeadLetter]) -> list[bool]:
        """Dead-letter each of ``letters``; return, aligned, whether the broker confirmed it."""
        dlq = f"{queue}.dlq"
        results = await asyncio.gather(
            *(self._publish_one(dlq, queue, letter) for letter in letters),
            return_exceptions=True,
        )
        confirmed = []
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
        return confirmed

    async def _publish_one(self, dlq: str, queue: str, letter: DeadLetter) -> None:
        original = letter.message
        headers = dict(original.headers or {})
        headers.update(
            {
                REASON_HEADER: letter.reason,
                DETAIL_HEADER: letter.detail[:MAX_DETAIL_CHARS],
                "x-billing-queue": queue,
                "x-billing-routing-key": original.routing_key or "",
                "x-billing-rejected-at": datetime.now(UTC).isoformat(),
            }
        )
        message = aio_pika.Message(
            body=original.body,
            headers=headers,
            content_type=original.content_type,
            content_encoding=original.content_encoding,
            message_id=original.message_id,
            correlation_id=original.correlation_id,
            timestamp=original.timestamp,
            type=original.type,
            app_id=original.app_id,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        )
        async with self._window:
            await self._channel.default_exchange.publish(message, routing_key=dlq, mandatory=True)

"""The quota-check consumer: one reply per request, on the request's ``reply_to``.

Every request gets an answer or an ``{"error": ...}`` reply, never silence: a malformed
request, an unknown meter, and a database that cannot be read all answer with an error
the caller can act on (fail open or closed, its choice). A request without ``reply_to``
cannot be answered; it is acked, counted and logged.
"""

from __future__ import annotations

import asyncio
import time

import aio_pika
import structlog
from aio_pika.abc import AbstractExchange
from pydantic import ValidationError

from billing_worker.adapters.amqp.delivery import Delivery, DeliverySource
from billing_worker.adapters.observability.metrics import Metrics
from billing_worker.consumers.usage import describe_validation_error
from billing_worker.domain.errors import PermanentError, TransientError
from billing_worker.domain.pricebook import PriceBook
from billing_worker.service.ports import Clock
from billing_worker.service.quota_check import UsageReader, answer_request
from schemas.quota_check import QuotaCheckError, QuotaCheckRequest

log = structlog.get_logger(__name__)

MAX_REQUEST_BYTES = 4096


class QuotaCheckConsumer:
    """Answers quota checks concurrently (as many as the channel's prefetch lets in)."""

    def __init__(
        self,
        queue: DeliverySource,
        reply_exchange: AbstractExchange,
        reader: UsageReader,
        book: PriceBook,
        metrics: Metrics,
        *,
        clock: Clock,
    ) -> None:
        self._queue = queue
        self._exchange = reply_exchange
        self._reader = reader
        self._book = book
        self._metrics = metrics
        self._clock = clock
        self._tag: str | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._answers = {
            answer: metrics.quota_checks.labels(answer=answer)
            for answer in ("allowed", "denied", "error", "unanswerable")
        }

    async def start(self) -> None:
        """Subscribe."""
        self._tag = await self._queue.consume(self._on_delivery)

    async def stop(self, grace: float) -> None:
        """Stop taking requests; let the ones in hand finish (up to ``grace`` seconds)."""
        if self._tag is not None:
            await self._queue.cancel(self._tag)
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=grace)
        for task in list(self._tasks):  # past the grace: their callers time out
            task.cancel()

    def _on_delivery(self, delivery: Delivery) -> None:
        task = asyncio.create_task(self._answer(delivery))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer(self, delivery: Delivery) -> None:
        started = time.perf_counter()
        reply_to = getattr(delivery, "reply_to", None)
        if not reply_to:
            self._answers["unanswerable"].inc()
            log.warning("quota_check_without_reply_to", correlation_id=delivery.correlation_id)
            await _ack(delivery)
            return
        body, answer = await self._reply_body(delivery.body)
        try:
            await self._exchange.publish(
                aio_pika.Message(
                    body=body,
                    content_type="application/json",
                    correlation_id=delivery.correlation_id,
                    delivery_mode=aio_pika.DeliveryMode.NOT_PERSISTENT,
                ),
                routing_key=reply_to,
                # RabbitMQ returns every mandatory publish to a direct reply-to name as
                # unroutable, even when it delivers it.
                mandatory=False,
            )
        except Exception as exc:  # noqa: BLE001 - the caller times out; nothing to keep
            log.warning("quota_check_reply_failed", error=repr(exc))
        await _ack(delivery)
        self._answers[answer].inc()
        self._metrics.quota_check_duration.observe(time.perf_counter() - started)

    async def _reply_body(self, body: bytes) -> tuple[bytes, str]:
        try:
            request = parse_quota_request(body)
            reply = await answer_request(self._reader, self._book, request, self._clock())
        except PermanentError as exc:
            return _error(exc.detail), "error"
        except TransientError as exc:
            log.warning("quota_check_unavailable", error=str(exc))
            return _error(
                "quota check temporarily unavailable: the database is unreachable"
            ), "error"
        except Exception:  # every request is answered, even when the worker has a bug
            log.exception("quota_check_failed")
            return _error("quota check failed inside the worker (see its logs)"), "error"
        return reply.model_dump_json().encode(), "allowed" if reply.allowed else "denied"


def parse_quota_request(body: bytes) -> QuotaCheckRequest:
    """A quota-check request from its bytes (over AMQP or HTTP), or a ``PermanentError``."""
    if len(body) > MAX_REQUEST_BYTES:
        raise PermanentError(
            f"request is {len(body)} bytes; at most {MAX_REQUEST_BYTES}", reason="too_large"
        )
    try:
        return QuotaCheckRequest.model_validate_json(body)
    except ValidationError as exc:
        raise PermanentError(
            f"malformed quota check: {describe_validation_error(exc)}", reason="schema_violation"
        ) from exc


def _error(message: str) -> bytes:
    return QuotaCheckError(error=message).model_dump_json().encode()


async def _ack(delivery: Delivery) -> None:
    try:
        await delivery.ack()
    except Exception as exc:  # noqa: BLE001 - a dead channel redelivers; answering twice is harmless
        log.warning("quota_check_ack_failed", error=repr(exc))

"""The outbox relay's loop and the quota-check consumer, with their I/O replaced by fakes."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, cast

from billing_worker.adapters.amqp.billing_events import OutboxRelay
from billing_worker.adapters.observability.metrics import Metrics
from billing_worker.consumers.quota_check import QuotaCheckConsumer
from billing_worker.domain.periods import BillingPeriod, calendar_month_of
from tests.fakes import FakeChannel
from tests.pricebooks import DEFAULT_BOOK


async def test_relay_survives_a_cancelled_publish() -> None:
    """aiormq fails pending confirms with CancelledError when its connection dies; the
    relay treats that as a failed round and keeps relaying, rather than ending quietly."""
    relay = OutboxRelay(cast(Any, None), cast(Any, None), "x", Metrics(), retry_pause=0.01)
    rounds: list[str] = []

    async def relay_once() -> int:
        rounds.append("round")
        if len(rounds) == 1:
            raise asyncio.CancelledError
        return 0

    relay.relay_once = relay_once  # type: ignore[method-assign]
    task = asyncio.create_task(relay._run())
    relay.wake()
    for _ in range(100):
        if len(rounds) >= 2:
            break
        await asyncio.sleep(0.01)
    assert len(rounds) >= 2, "the relay stopped after a cancelled publish"
    assert not task.done()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert task.cancelled(), "a real cancellation still stops it"


@dataclass
class RecordingExchange:
    """Captures published replies."""

    published: list[tuple[bytes, str, str | None]] = field(default_factory=list)

    async def publish(self, message: Any, routing_key: str, **_: Any) -> None:
        self.published.append((message.body, routing_key, message.correlation_id))


@dataclass
class Request:
    """A quota-check delivery."""

    body: bytes
    reply_to: str | None = "amq.rabbitmq.reply-to.abc"
    correlation_id: str | None = "corr-1"
    acked: bool = False
    channel: FakeChannel = field(default_factory=FakeChannel)

    async def ack(self, multiple: bool = False) -> None:
        self.acked = True


class BrokenReader:
    async def plan_and_usage(
        self, account: str, meter: str, now: datetime
    ) -> tuple[str | None, Decimal, BillingPeriod]:
        raise RuntimeError("a bug")


class FixedReader:
    async def plan_and_usage(
        self, account: str, meter: str, now: datetime
    ) -> tuple[str | None, Decimal, BillingPeriod]:
        return "FREE", Decimal(99_000), calendar_month_of(now)


def consumer(reader: Any, exchange: RecordingExchange, metrics: Metrics) -> QuotaCheckConsumer:
    return QuotaCheckConsumer(
        cast(Any, None),
        cast(Any, exchange),
        reader,
        DEFAULT_BOOK,
        metrics,
        clock=lambda: datetime(2026, 11, 21, tzinfo=UTC),
    )


async def test_a_bug_still_gets_an_error_reply_and_an_ack() -> None:
    """An unforeseen failure answers {"error": ...} to reply_to with the correlation id, and
    acks, so the request neither hangs its caller nor holds a prefetch slot."""
    exchange, metrics = RecordingExchange(), Metrics()
    request = Request(b'{"account": "a", "meter": "tokens", "quantity": 1}')
    await consumer(BrokenReader(), exchange, metrics)._answer(cast(Any, request))
    ((body, routing_key, correlation_id),) = exchange.published
    assert "failed inside the worker" in json.loads(body)["error"]
    assert (routing_key, correlation_id) == ("amq.rabbitmq.reply-to.abc", "corr-1")
    assert request.acked
    assert metrics.registry.get_sample_value("billing_quota_checks_total", {"answer": "error"}) == 1


async def test_denied_past_a_hard_limit_and_unanswerable_without_reply_to() -> None:
    """99,000 used + 2,000 asked > 100,000: denied with remaining 1000; a request without
    reply_to is acked and counted, nothing is published."""
    exchange, metrics = RecordingExchange(), Metrics()
    checker = consumer(FixedReader(), exchange, metrics)
    await checker._answer(
        cast(Any, Request(b'{"account": "a", "meter": "tokens", "quantity": 2000}'))
    )
    reply = json.loads(exchange.published[0][0])
    assert (reply["allowed"], reply["used"], reply["remaining"]) == (False, "99000", "1000")
    lost = Request(b"{}", reply_to=None)
    await checker._answer(cast(Any, lost))
    assert lost.acked
    assert len(exchange.published) == 1
    assert (
        metrics.registry.get_sample_value("billing_quota_checks_total", {"answer": "unanswerable"})
        == 1
    )

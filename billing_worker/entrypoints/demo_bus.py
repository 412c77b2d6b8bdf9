"""The demo's side of the broker: publish usage as a producer does, watch billing events."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from typing import Any

import aio_pika
from aio_pika.abc import AbstractExchange, AbstractIncomingMessage, AbstractRobustConnection

from billing_worker.entrypoints.demo_day import DemoEvent
from billing_worker.entrypoints.progress import progress

PUBLISH_WINDOW = 50
HOUR_PAUSE_SECONDS = 0.15
"""Between the day's hours, so the billing events can be seen arriving as the day goes."""


async def publish_usage(
    connection: AbstractRobustConnection, exchange_name: str, events: Sequence[DemoEvent]
) -> None:
    """Publish hour by hour, persistently with publisher confirms, with a progress bar."""
    channel = await connection.channel(publisher_confirms=True)
    try:
        exchange = await channel.get_exchange(exchange_name)
        by_hour: dict[int, list[DemoEvent]] = {}
        for event in events:
            by_hour.setdefault(event.occurred_at.hour, []).append(event)
        with progress("publishing", total=len(events), unit="event") as bar:
            for hour, hourly in sorted(by_hour.items()):
                bar.set_description(f"publishing {hour:02d}:00")
                for start in range(0, len(hourly), PUBLISH_WINDOW):
                    window = hourly[start : start + PUBLISH_WINDOW]
                    await asyncio.gather(*(_publish(exchange, e) for e in window))
                    bar.update(len(window))
                await asyncio.sleep(HOUR_PAUSE_SECONDS)
    finally:
        await channel.close()


async def _publish(exchange: AbstractExchange, event: DemoEvent) -> None:
    message = aio_pika.Message(
        event.body,
        content_type="application/json",
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
    )
    await exchange.publish(message, routing_key=event.routing_key)


class BillingEventFeed:
    """A temporary queue on the billing-events exchange: one account's events, as they come.

    Exclusive and auto-deleted, so it goes away with the connection and never keeps
    messages nobody reads.
    """

    def __init__(self, account: str, on_event: Callable[[dict[str, Any]], None]) -> None:
        self.account = account
        self.seen: list[dict[str, Any]] = []
        self._on_event = on_event

    async def subscribe(self, connection: AbstractRobustConnection, exchange: str) -> None:
        """Bind a server-named queue with ``#`` (every event type) and start consuming."""
        channel = await connection.channel()
        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        await queue.bind(exchange, routing_key="#")
        await queue.consume(self._deliver, no_ack=True)

    async def _deliver(self, message: AbstractIncomingMessage) -> None:
        try:
            event = json.loads(message.body)
        except ValueError:
            return
        if isinstance(event, dict) and event.get("subject") == self.account:
            self.seen.append(event)
            self._on_event(event)

    def has(self, event_type: str, threshold: int | None = None) -> bool:
        """Whether an event of ``event_type`` (at ``threshold``, for quota events) came."""
        return any(
            e.get("type") == event_type
            and (threshold is None or (e.get("data") or {}).get("threshold") == threshold)
            for e in self.seen
        )

    def count(self, event_type: str) -> int:
        """How many events of ``event_type`` came."""
        return sum(1 for e in self.seen if e.get("type") == event_type)


def describe_event(event: dict[str, Any]) -> str:
    """A billing event in one line."""
    kind, data = str(event.get("type")), event.get("data") or {}
    if kind in ("quota.warning", "quota.exceeded"):
        return (
            f"{kind:<20} {data.get('meter')} {data.get('threshold')}%: {data.get('used')} of "
            f"{data.get('limit')} used (plan {data.get('plan')}, {data.get('enforcement')} limit)"
        )
    if kind == "invoice.ready":
        return (
            f"{kind:<20} {data.get('invoice_id')}: {len(data.get('lines') or [])} lines, "
            f"total {data.get('total')} {data.get('currency')}"
        )
    if kind == "subscription.changed":
        return f"{kind:<20} plan {data.get('plan')} ({data.get('status')})"
    if kind in ("credits.low", "credits.exhausted"):
        return f"{kind:<20} balance {data.get('balance')} ({data.get('meter')})"
    if kind == "usage.rejected":
        return f"{kind:<20} {data.get('original_id')}: {data.get('reason')}"
    return f"{kind:<20} {event.get('id')}"

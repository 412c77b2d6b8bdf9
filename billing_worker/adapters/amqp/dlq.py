"""Dead-letter queues read, replayed and purged without losing or reordering a message.

Every operation works on a snapshot: the DLQ's ready count when it starts. The messages
are taken with ``basic.get`` and manual acknowledgement on one channel, and kept unacked
until the operation ends; only a message replayed (after the broker confirmed the copy)
or purged is acked. Everything else is handed back at the end with one
``basic.nack(multiple, requeue)``, which returns the messages to the head of the queue in
their order. If the process dies half way, the broker takes them back when the channel
closes: nothing is lost.

Operations always read the whole snapshot: a quorum queue serves returned messages first,
in the order they were returned, so handing back only part of the queue would put that
part behind the rest. Holding the snapshot also keeps the count honest: a replayed message
the worker dead-letters again lands behind the snapshot and is not taken twice.

Each read counts as a delivery on a quorum queue (``x-delivery-count`` grows by one); the
DLQs are declared without a delivery limit, and a policy that sets one should leave room
for inspections.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage

from billing_worker.adapters.amqp.dead_letters import DETAIL_HEADER, REASON_HEADER
from billing_worker.adapters.amqp.topology import Topology

QUEUE_HEADER = "x-billing-queue"
ROUTING_KEY_HEADER = "x-billing-routing-key"
REJECTED_AT_HEADER = "x-billing-rejected-at"
BROKER_REASON_PREFIX = "broker:"
"""Reasons of messages the broker dead-lettered itself (``x-death``): ``broker:rejected``,
``broker:expired``, ``broker:maxlen``, ``broker:delivery_limit``."""
UNKNOWN_REASON = "unknown"
STRIPPED_PREFIXES = ("x-billing-", "x-death", "x-first-death-", "x-last-death-")
STRIPPED_HEADERS = frozenset({"x-delivery-count"})


class DeadLetterQueueMissing(Exception):
    """The dead-letter queue does not exist on the broker."""


@dataclass(frozen=True, slots=True)
class DeadLetterSource:
    """A consumed queue, its DLQ, and where its messages are replayed to."""

    queue: str
    dead_letter_queue: str
    exchange: str | None
    """Exchange the queue's producers publish to; None when the queue is not the worker's
    (replay then uses the exchange ``x-death`` names, if any)."""
    fanout: bool = False
    """The exchange ignores routing keys (Stripe's), so any key will do."""


def resolve_source(topology: Topology, name: str) -> DeadLetterSource:
    """``usage``, ``stripe``, or a full queue name (its ``.dlq`` or the queue itself)."""
    usage = DeadLetterSource(
        topology.usage_queue,
        Topology.dead_letter_queue(topology.usage_queue),
        topology.usage_exchange,
    )
    stripe = DeadLetterSource(
        topology.stripe_queue,
        Topology.dead_letter_queue(topology.stripe_queue),
        topology.stripe_exchange,
        fanout=True,
    )
    queue = {"usage": usage.queue, "stripe": stripe.queue}.get(name, name.removesuffix(".dlq"))
    for known in (usage, stripe):
        if known.queue == queue:
            return known
    return DeadLetterSource(queue, Topology.dead_letter_queue(queue), None)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """What one dead letter says about itself."""

    position: int
    """1 for the head of the queue."""
    reason: str
    detail: str
    queue: str | None
    """The queue it was rejected from, when the message says."""
    routing_key: str | None
    """The routing key it was first published with, when the message says."""
    exchange: str | None
    """The exchange it was first published to, when the broker dead-lettered it."""
    rejected_at: datetime | None
    headers: Mapping[str, Any]
    body: bytes
    body_size: int
    content_type: str | None
    message_id: str | None


def describe(message: AbstractIncomingMessage, position: int, body_limit: int) -> DeadLetter:
    """Read reason, detail and origin from the worker's headers, else from ``x-death``."""
    headers = dict(message.headers or {})
    death = _first_death(headers)
    reason = headers.get(REASON_HEADER)
    if reason is None:
        reason = f"{BROKER_REASON_PREFIX}{death['reason']}" if death else UNKNOWN_REASON
    routing_key = headers.get(ROUTING_KEY_HEADER)
    if routing_key is None and death and death.get("routing-keys"):
        routing_key = death["routing-keys"][0]
    return DeadLetter(
        position=position,
        reason=str(reason),
        detail=str(headers.get(DETAIL_HEADER, "")),
        queue=_text(headers.get(QUEUE_HEADER)) or (_text(death.get("queue")) if death else None),
        routing_key=_text(routing_key),
        exchange=_text(death.get("exchange")) if death else None,
        rejected_at=_rejected_at(headers, death, message.timestamp),
        headers=headers,
        body=message.body[:body_limit],
        body_size=len(message.body),
        content_type=message.content_type,
        message_id=message.message_id,
    )


def _first_death(headers: Mapping[str, Any]) -> Mapping[str, Any] | None:
    deaths = headers.get("x-death")
    if isinstance(deaths, list) and deaths and isinstance(deaths[0], Mapping):
        return deaths[0]
    return None


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _rejected_at(
    headers: Mapping[str, Any], death: Mapping[str, Any] | None, timestamp: datetime | None
) -> datetime | None:
    stamp = headers.get(REJECTED_AT_HEADER)
    if isinstance(stamp, str):
        try:
            return datetime.fromisoformat(stamp).astimezone(UTC)
        except ValueError:
            pass
    moment = death.get("time") if death else None
    moment = moment if isinstance(moment, datetime) else timestamp
    if moment is None:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def replay_message(message: AbstractIncomingMessage) -> aio_pika.Message:
    """The message as first published: same body and properties, persistent, without the
    dead-lettering headers (nor an expiry or user id that would refuse or drop it)."""
    headers = {
        name: value
        for name, value in (message.headers or {}).items()
        if not name.startswith(STRIPPED_PREFIXES) and name not in STRIPPED_HEADERS
    }
    return aio_pika.Message(
        body=message.body,
        headers=headers,
        content_type=message.content_type,
        content_encoding=message.content_encoding,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        priority=message.priority,
        correlation_id=message.correlation_id,
        reply_to=message.reply_to,
        message_id=message.message_id,
        timestamp=message.timestamp,
        type=message.type,
        app_id=message.app_id,
    )


class Snapshot:
    """The DLQ's messages at the start, taken unacked; see the module docstring."""

    def __init__(self, channel: AbstractChannel, queue: aio_pika.abc.AbstractQueue, size: int):
        self._channel = channel
        self._queue = queue
        self.size = size
        """Ready messages when the snapshot was taken: at most this many are read."""

    async def messages(self) -> AsyncIterator[AbstractIncomingMessage]:
        """The snapshot's messages, head first."""
        for _ in range(self.size):
            message = await self._queue.get(no_ack=False, fail=False)
            if message is None:
                return  # someone else took some: fewer than counted
            yield message

    async def hand_back(self) -> None:
        """Requeue every message taken and not acked, in order."""
        channel = await self._channel.get_underlay_channel()
        await channel.basic_nack(delivery_tag=0, multiple=True, requeue=True)


@asynccontextmanager
async def snapshot(
    connection: AbstractConnection, dead_letter_queue: str
) -> AsyncIterator[Snapshot]:
    """Take a snapshot of ``dead_letter_queue``; whatever is not acked goes back on exit."""
    channel = await connection.channel(publisher_confirms=False)
    try:
        try:
            queue = await channel.declare_queue(dead_letter_queue, passive=True)
        except aio_pika.exceptions.ChannelNotFoundEntity as exc:
            raise DeadLetterQueueMissing(dead_letter_queue) from exc
        taken = Snapshot(channel, queue, int(queue.declaration_result.message_count or 0))
        try:
            yield taken
        finally:
            if not channel.is_closed:
                await asyncio.shield(taken.hand_back())
    finally:
        if not channel.is_closed:
            await channel.close()

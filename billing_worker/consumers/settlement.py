"""Settling deliveries with the broker: acks (one multiple-ack per channel), nacks, counts."""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Awaitable, Iterable

import structlog
from aio_pika.exceptions import ChannelInvalidStateError
from aiormq.exceptions import AMQPError

from billing_worker.adapters.amqp.dead_letters import DeadLetter
from billing_worker.adapters.amqp.delivery import Delivery
from billing_worker.adapters.observability.metrics import QueueMetrics
from billing_worker.domain.errors import PermanentError

log = structlog.get_logger(__name__)


class Settled(enum.Enum):
    """A handled command that needs no dead letter."""

    RECORDED = "recorded"
    DUPLICATE = "duplicate"


Outcome = Settled | PermanentError
"""What a handler reports per command: settled, or the reason to dead-letter it."""


def channel_open(message: Delivery) -> bool:
    """False for a delivery whose channel died: its tag is void and it will be redelivered."""
    try:
        return not message.channel.is_closed
    except ChannelInvalidStateError:
        return False


def channel_key(message: Delivery) -> int:
    try:
        return id(message.channel)
    except ChannelInvalidStateError:
        return -1


async def settle_safely(settlement: Awaitable[None], queue: str) -> bool:
    """Ack or nack; False if the channel died meanwhile (the broker redelivers, dedupe absorbs).

    aiormq fails pending frames with ``CancelledError`` when it force-closes a channel;
    that is a lost channel, not this task being cancelled, and must not unwind the caller.
    """
    try:
        await settlement
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise
        log.warning("settlement_lost_with_channel", queue=queue, error="cancelled by aiormq")
        return False
    except (AMQPError, ChannelInvalidStateError, ConnectionError, RuntimeError) as exc:
        # aiormq's ChannelInvalidStateError is a RuntimeError
        log.warning("settlement_lost_with_channel", queue=queue, error=repr(exc))
        return False
    return True


async def acknowledge(
    queue: str,
    batch: list[Delivery],
    give_back: set[Delivery],
    dirty_channels: set[int],
) -> None:
    """Ack the batch with one multiple-ack per channel, or one by one where that is unsafe.

    A multiple-ack covers every earlier tag of the channel, so it is used only when all of
    them are settled: the consumer settles batches in delivery order, and marks a channel
    dirty when a batch on it could not be settled. Deliveries in ``give_back`` are nacked.
    """
    if not give_back:
        last_per_channel: dict[int, Delivery] = {}
        for message in batch:  # delivery order: the last one per channel has the top tag
            last_per_channel[channel_key(message)] = message
        for key, last in last_per_channel.items():
            if key not in dirty_channels:
                await settle_safely(last.ack(multiple=True), queue)
        batch = [m for m in batch if channel_key(m) in dirty_channels]
    for message in batch:
        if message in give_back:
            await settle_safely(message.nack(requeue=True), queue)
        else:
            await settle_safely(message.ack(), queue)


def count_outcomes(
    metrics: QueueMetrics,
    settled: dict[Settled, int],
    letters: Iterable[DeadLetter],
    unconfirmed: set[Delivery],
) -> int:
    """Count settled deliveries; return how many were dead-lettered.

    ``received`` goes first: a scrape may catch receipts not yet split into outcomes,
    never outcomes without their receipts.
    """
    recorded = settled.get(Settled.RECORDED, 0)
    duplicate = settled.get(Settled.DUPLICATE, 0)
    rejected = [letter for letter in letters if letter.message not in unconfirmed]
    metrics.received.inc(recorded + duplicate + len(rejected))
    for letter in rejected:
        metrics.rejected(letter.reason).inc()
    metrics.recorded.inc(recorded)
    metrics.duplicate.inc(duplicate)
    metrics.requeued.inc(len(unconfirmed))
    return len(rejected)

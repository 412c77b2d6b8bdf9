"""Settling deliveries with the broker: acks (one multiple-ack per channel), nacks, counts."""

from __future__ import annotations

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


def _channel_key(message: Delivery) -> int:
    try:
        return id(message.channel)
    except ChannelInvalidStateError:
        return -1


async def settle_safely(settlement: Awaitable[None], queue: str) -> None:
    """Ack or nack; if the channel died meanwhile the broker redelivers, and dedupe absorbs it."""
    try:
        await settlement
    except (AMQPError, ChannelInvalidStateError, ConnectionError, RuntimeError) as exc:
        # aiormq's ChannelInvalidStateError is a RuntimeError
        log.warning("settlement_lost_with_channel", queue=queue, error=repr(exc))


async def acknowledge(
    queue: str,
    batch: list[Delivery],
    give_back: set[Delivery],
) -> None:
    """Ack the batch with one multiple-ack per channel, or one by one if some go back.

    Only correct when every earlier delivery of the channel is already settled: the
    consumer guarantees it by settling batches strictly in delivery order.
    """
    if not give_back:
        last_per_channel: dict[int, Delivery] = {}
        for message in batch:  # delivery order: the last one per channel has the top tag
            last_per_channel[_channel_key(message)] = message
        for last in last_per_channel.values():
            await settle_safely(last.ack(multiple=True), queue)
        return
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

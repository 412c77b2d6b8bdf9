"""What an operator does with dead letters: read them, replay them after a fix, purge them.

All three work on a snapshot of the DLQ (``dlq.snapshot``): nothing is acked except a
message replayed after the broker confirmed its copy, or purged. A replayed message goes
to the exchange and routing key it was first published with, so it takes the normal path:
the worker deduplicates it by its idempotency key (or Stripe event id), and dead-letters
it again, with its reason, if it is still bad.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import aio_pika
from aio_pika.abc import (
    AbstractChannel,
    AbstractConnection,
    AbstractExchange,
    AbstractIncomingMessage,
)
from pamqp.commands import Basic

from billing_worker.adapters.amqp.dlq import (
    DeadLetter,
    DeadLetterSource,
    describe,
    replay_message,
    snapshot,
)

REPLAY_WINDOW = 64
"""Replays awaiting their confirms at once: a modest window beats thousands in flight."""
CONFIRM_TIMEOUT_SECONDS = 30.0

Advance = Callable[[int], object]
"""Told how many more messages were handled (a progress bar's ``update``)."""
Sized = Callable[[int], object]
"""Told how many messages the snapshot holds, before the first is handled."""


def _nothing(_: int) -> None:
    return None


@dataclass(slots=True)
class Survey:
    """The DLQ at the time of reading: its size and the dead letters selected."""

    size: int
    letters: list[DeadLetter] = field(default_factory=list)
    reasons: Counter[str] = field(default_factory=Counter)
    """Every message of the snapshot read, by reason (selected or not)."""


async def survey(
    connection: AbstractConnection,
    source: DeadLetterSource,
    *,
    reason: str | None = None,
    limit: int | None = None,
    body_limit: int = 0,
) -> Survey:
    """The dead letters (of ``reason``; the first ``limit``), every one handed back.

    The whole snapshot is read even with a ``limit``: a quorum queue puts returned
    messages behind those returned before, so handing back only the head would reorder it.
    """
    async with snapshot(connection, source.dead_letter_queue) as taken:
        found = Survey(taken.size)
        position = 0
        async for message in taken.messages():
            position += 1
            letter = describe(message, position, body_limit)
            found.reasons[letter.reason] += 1
            selected = reason is None or letter.reason == reason
            if selected and (limit is None or len(found.letters) < limit):
                found.letters.append(letter)
    return found


@dataclass(slots=True)
class Replay:
    """What a replay did with each message of the snapshot."""

    size: int = 0
    replayed: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    """Messages left in the DLQ, by why: ``other reason``, ``over limit``, ``no destination``,
    ``not confirmed`` (the broker refused or returned the copy)."""
    reasons: Counter[str] = field(default_factory=Counter)
    """Reasons of the messages replayed (or, in a dry run, that would be)."""

    @property
    def failed(self) -> int:
        """Selected messages whose copy the broker did not take: they stay in the DLQ."""
        return self.skipped["not confirmed"]


async def replay(
    connection: AbstractConnection,
    source: DeadLetterSource,
    *,
    reason: str | None = None,
    limit: int | None = None,
    dry_run: bool = False,
    advance: Advance = _nothing,
    sized: Sized = _nothing,
) -> Replay:
    """Republish the selected dead letters where they first went; ack each DLQ copy only
    after the broker confirmed the republished one. Unselected ones stay, in order."""
    outcome = Replay()
    publisher = await connection.channel(publisher_confirms=True)
    try:
        exchanges = _Exchanges(connection, publisher)
        async with snapshot(connection, source.dead_letter_queue) as taken:
            outcome.size = taken.size
            sized(taken.size)
            window: list[tuple[AbstractIncomingMessage, AbstractExchange, str, str]] = []
            selected = position = 0
            async for message in taken.messages():
                position += 1
                letter = describe(message, position, 0)
                if reason is not None and letter.reason != reason:
                    outcome.skipped["other reason"] += 1
                elif limit is not None and selected >= limit:
                    outcome.skipped["over limit"] += 1
                else:
                    selected += 1
                    target = await _destination(source, letter, exchanges)
                    if target is None:
                        outcome.skipped["no destination"] += 1
                    elif dry_run:
                        outcome.replayed += 1
                        outcome.reasons[letter.reason] += 1
                    else:
                        window.append((message, target[0], target[1], letter.reason))
                if len(window) >= REPLAY_WINDOW:
                    await _flush(window, outcome)
                    window = []
                advance(1)
            await _flush(window, outcome)
    finally:
        if not publisher.is_closed:
            await publisher.close()
    return outcome


async def _destination(
    source: DeadLetterSource, letter: DeadLetter, exchanges: _Exchanges
) -> tuple[AbstractExchange, str] | None:
    """The exchange and routing key a dead letter first went to, if it can be told."""
    if letter.queue is not None and letter.queue != source.queue:
        return None  # rejected from another queue: not ours to route
    name = source.exchange or letter.exchange
    routing_key = letter.routing_key
    if routing_key is None and source.fanout:
        routing_key = ""
    if not name or routing_key is None:
        return None
    exchange = await exchanges.get(name)
    return None if exchange is None else (exchange, routing_key)


class _Exchanges:
    """Exchanges looked up once each (passively, on a channel a missing one may close)."""

    def __init__(self, connection: AbstractConnection, publisher: AbstractChannel) -> None:
        self._connection = connection
        self._publisher = publisher
        self._known: dict[str, AbstractExchange | None] = {}

    async def get(self, name: str) -> AbstractExchange | None:
        if name not in self._known:
            probe = await self._connection.channel(publisher_confirms=False)
            try:
                await probe.get_exchange(name, ensure=True)
                self._known[name] = await self._publisher.get_exchange(name, ensure=False)
            except aio_pika.exceptions.ChannelNotFoundEntity:
                self._known[name] = None
            finally:
                if not probe.is_closed:
                    await probe.close()
        return self._known[name]


async def _flush(
    window: list[tuple[AbstractIncomingMessage, AbstractExchange, str, str]], outcome: Replay
) -> None:
    """Publish the window's copies at once; ack the DLQ copy of each one confirmed."""
    if not window:
        return
    confirms = await asyncio.gather(
        *(_publish(exchange, message, key) for message, exchange, key, _ in window),
        return_exceptions=True,
    )
    for (message, _, _, reason), confirmed in zip(window, confirms, strict=True):
        if confirmed is True:
            await message.ack()
            outcome.replayed += 1
            outcome.reasons[reason] += 1
        else:
            outcome.skipped["not confirmed"] += 1


async def _publish(exchange: AbstractExchange, message: AbstractIncomingMessage, key: str) -> bool:
    """Whether the broker confirmed the copy (routed to at least one queue)."""
    async with asyncio.timeout(CONFIRM_TIMEOUT_SECONDS):
        confirm = await exchange.publish(replay_message(message), routing_key=key, mandatory=True)
    return isinstance(confirm, Basic.Ack)  # a returned (unroutable) copy is not an ack


@dataclass(slots=True)
class Purge:
    """How many messages a purge deleted and kept."""

    size: int = 0
    purged: Counter[str] = field(default_factory=Counter)
    kept: int = 0


async def purge(
    connection: AbstractConnection,
    source: DeadLetterSource,
    *,
    reason: str | None = None,
    advance: Advance = _nothing,
    sized: Sized = _nothing,
) -> Purge:
    """Delete the snapshot's dead letters (of ``reason``); the others stay, in order."""
    outcome = Purge()
    async with snapshot(connection, source.dead_letter_queue) as taken:
        outcome.size = taken.size
        sized(taken.size)
        position = 0
        async for message in taken.messages():
            position += 1
            letter = describe(message, position, 0)
            if reason is None or letter.reason == reason:
                await message.ack()
                outcome.purged[letter.reason] += 1
            else:
                outcome.kept += 1
            advance(1)
    return outcome

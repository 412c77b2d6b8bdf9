"""In-memory stand-ins for aio-pika deliveries, queues and the dead-letter publisher."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from billing_worker.adapters.amqp.dead_letters import DeadLetter

_tags = itertools.count(1)


@dataclass
class FakeChannel:
    """A channel that records acks and nacks by delivery tag."""

    is_closed: bool = False
    acks: list[tuple[int, bool]] = field(default_factory=list)
    nacks: list[tuple[int, bool]] = field(default_factory=list)

    def acked_tags(self, delivered: Sequence[FakeMessage]) -> set[int]:
        """Tags covered by the acks, expanding multiple-acks over ``delivered``."""
        covered: set[int] = set()
        for tag, multiple in self.acks:
            if multiple:
                covered |= {m.delivery_tag for m in delivered if m.delivery_tag <= tag}
            else:
                covered.add(tag)
        return covered


@dataclass(eq=False)
class FakeMessage:
    """Enough of ``AbstractIncomingMessage`` for the batching machinery."""

    body: bytes
    fake_channel: FakeChannel
    content_type: str | None = "application/json"
    headers: dict[str, Any] = field(default_factory=dict)
    routing_key: str = "usage.test"
    delivery_tag: int = field(default_factory=lambda: next(_tags))

    @property
    def channel(self) -> FakeChannel:
        """The delivering channel."""
        return self.fake_channel

    async def ack(self, multiple: bool = False) -> None:
        """Record an ack."""
        self.fake_channel.acks.append((self.delivery_tag, multiple))

    async def nack(self, multiple: bool = False, requeue: bool = True) -> None:
        """Record a nack."""
        self.fake_channel.nacks.append((self.delivery_tag, requeue))


@dataclass
class FakeQueue:
    """A queue whose deliveries the test pushes by hand."""

    name: str = "test.billing-worker.usage"
    callback: Callable[[Any], None] | None = None
    cancelled: bool = False

    async def consume(self, callback: Callable[[Any], None]) -> str:
        """Remember the consumer callback."""
        self.callback = callback
        return "ctag-1"

    async def cancel(self, consumer_tag: str) -> None:
        """Stop delivering."""
        self.cancelled = True

    async def deliver(self, *messages: FakeMessage) -> None:
        """Hand deliveries to the consumer as the broker would."""
        assert self.callback is not None, "consume() was not called"
        for message in messages:
            self.callback(message)


@dataclass
class FakeDeadLetters:
    """Records dead letters; bodies listed in ``refuse`` are not confirmed."""

    refuse: set[bytes] = field(default_factory=set)
    published: list[DeadLetter] = field(default_factory=list)

    async def publish(self, queue: str, letters: Sequence[DeadLetter]) -> list[bool]:
        """Confirm every letter but the refused ones."""
        results = []
        for letter in letters:
            ok = letter.message.body not in self.refuse
            if ok:
                self.published.append(letter)
            results.append(ok)
        return results


def usage_body(**overrides: Any) -> bytes:
    """A valid usage event body, with top-level fields overridden."""
    event: dict[str, Any] = {
        "specversion": "1.0",
        "id": "evt-1",
        "source": "chat-service",
        "type": "chat.tokens",
        "subject": "acct_42",
        "time": "2026-11-21T10:15:00Z",
        "datacontenttype": "application/json",
        "data": {"quantity": 1234, "model": "gpt-4"},
    }
    event.update(overrides)
    return json.dumps(event).encode()

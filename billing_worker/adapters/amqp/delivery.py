"""A delivery as the settling machinery sees it, and its implementation over aiormq.

aio-pika wraps every delivery in an ``IncomingMessage`` (twenty-odd attributes set under
a lock, plus a task per message). On this hot path that wrapper cost more than all of
our own per-event work, so deliveries are taken straight from the aiormq channel that
aio-pika manages and exposed through this small type instead.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, Protocol

import aiormq.abc


class DeliveryChannel(Protocol):
    """The channel a delivery came on; its tags are void once it is closed."""

    @property
    def is_closed(self) -> bool: ...


class Delivery(Protocol):
    """One message handed to this consumer, to be acked or nacked exactly once."""

    body: bytes
    delivery_tag: int
    routing_key: str

    @property
    def channel(self) -> DeliveryChannel: ...

    @property
    def content_type(self) -> str | None: ...

    @property
    def content_encoding(self) -> str | None: ...

    @property
    def headers(self) -> dict[str, Any]: ...

    @property
    def message_id(self) -> str | None: ...

    @property
    def correlation_id(self) -> str | None: ...

    @property
    def timestamp(self) -> datetime | None: ...

    @property
    def type(self) -> str | None: ...

    @property
    def app_id(self) -> str | None: ...

    def ack(self, multiple: bool = False) -> Awaitable[None]: ...

    def nack(self, multiple: bool = False, requeue: bool = True) -> Awaitable[None]: ...


DeliveryCallback = Callable[[Delivery], None]
"""Takes a delivery synchronously, so deliveries keep their order."""


class AmqpDelivery:
    """``Delivery`` over an aiormq ``DeliveredMessage``; properties are read lazily."""

    __slots__ = ("_channel", "_properties", "body", "delivery_tag", "routing_key")

    def __init__(self, raw: aiormq.abc.DeliveredMessage) -> None:
        self.body: bytes = raw.body
        self._channel = raw.channel
        delivery = raw.delivery
        self.delivery_tag: int = int(getattr(delivery, "delivery_tag", 0) or 0)
        self.routing_key: str = getattr(delivery, "routing_key", "") or ""
        self._properties = raw.header.properties

    @property
    def channel(self) -> aiormq.abc.AbstractChannel:
        """The aiormq channel that delivered this message."""
        return self._channel

    @property
    def content_type(self) -> str | None:
        """The ``content_type`` property."""
        return self._properties.content_type

    @property
    def content_encoding(self) -> str | None:
        """The ``content_encoding`` property."""
        return self._properties.content_encoding

    @property
    def headers(self) -> dict[str, Any]:
        """Application headers (empty when absent)."""
        return dict(self._properties.headers or {})

    @property
    def message_id(self) -> str | None:
        """The ``message_id`` property."""
        return self._properties.message_id

    @property
    def correlation_id(self) -> str | None:
        """The ``correlation_id`` property."""
        return self._properties.correlation_id

    @property
    def timestamp(self) -> datetime | None:
        """The ``timestamp`` property."""
        return self._properties.timestamp

    @property
    def reply_to(self) -> str | None:
        """The ``reply_to`` property (request/reply)."""
        return self._properties.reply_to

    @property
    def type(self) -> str | None:
        """The ``type`` property."""
        return self._properties.message_type

    @property
    def app_id(self) -> str | None:
        """The ``app_id`` property."""
        return self._properties.app_id

    def ack(self, multiple: bool = False) -> Awaitable[None]:
        """Acknowledge (up to and including this tag when ``multiple``)."""
        return self._channel.basic_ack(self.delivery_tag, multiple=multiple)

    def nack(self, multiple: bool = False, requeue: bool = True) -> Awaitable[None]:
        """Reject, back to the queue when ``requeue``."""
        return self._channel.basic_nack(self.delivery_tag, multiple=multiple, requeue=requeue)


class DeliverySource(Protocol):
    """A queue subscription: deliveries go to a callback until cancelled."""

    name: str

    async def consume(self, callback: DeliveryCallback) -> str:
        """Start delivering; return the consumer tag."""
        ...

    async def cancel(self, consumer_tag: str) -> None:
        """Stop delivering."""
        ...

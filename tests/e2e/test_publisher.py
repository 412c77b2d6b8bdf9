"""The client helpers on the real broker: UsagePublisher into a running worker, and
BillingEventSubscriber out of it."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from decimal import Decimal
from typing import Any

import aio_pika
import psycopg
import pytest
from aio_pika.abc import AbstractQueue

from billing_worker.client import (
    BillingEventSubscriber,
    InvalidUsageEvent,
    UsagePublisher,
    UsageRefused,
    UsageUnroutable,
)
from schemas import BillingEvent, UsageRejectedData, UsageRejectedEvent
from tests.clock import now
from tests.conftest import AMQP_URL
from tests.e2e.conftest import Bus, StartWorker, sample, wait_until


@pytest.fixture
async def usage(namespace: str) -> AsyncIterator[UsagePublisher]:
    """chat-service's publisher on this test's namespace."""
    publisher = await UsagePublisher.connect(AMQP_URL, source="chat-service", namespace=namespace)
    yield publisher
    await publisher.close()


@pytest.fixture
async def queue_named(bus: Bus) -> AsyncIterator[list[str]]:
    """Queues a test declares outside the worker's topology; deleted afterwards."""
    names: list[str] = []
    yield names
    for name in names:
        channel = await bus.connection.channel()
        with contextlib.suppress(aio_pika.exceptions.AMQPError):
            await channel.queue_delete(name)


async def tap(bus: Bus, queue_named: list[str], **arguments: Any) -> AbstractQueue:
    """A queue of the test's own bound to every usage routing key: what reached the broker."""
    name = bus.name(f"tap-{uuid.uuid4().hex[:6]}")
    queue_named.append(name)
    queue = await bus.channel.declare_queue(name, arguments=arguments or None)
    await queue.bind(bus.name("billing.usage"), routing_key="usage.#")
    return queue


async def test_published_usage_is_recorded(
    start_worker: StartWorker, usage: UsagePublisher, sql: psycopg.Connection
) -> None:
    """An event published with the helper is in the ledger once the broker confirmed it:
    account, meter, exact quantity, key and dimensions."""
    worker = await start_worker()
    event = await usage.publish(
        "chat.tokens", "acct_pub", Decimal("12.5"), dimensions={"model": "gpt-4"}, event_id="c-1"
    )
    assert (event.source, event.id, event.subject) == ("chat-service", "c-1", "acct_pub")
    await wait_until(lambda: sample(worker, "billing_events_recorded_total") == 1)
    rows = sql.execute(
        "SELECT account_id, meter, quantity, event_source, event_id, dimensions FROM usage_ledger"
    ).fetchall()
    assert rows == [
        ("acct_pub", "tokens", Decimal("12.5"), "chat-service", "c-1", {"model": "gpt-4"})
    ]


async def test_retry_with_the_same_key_counts_once(
    start_worker: StartWorker, usage: UsagePublisher, sql: psycopg.Connection
) -> None:
    """Publishing again with the same event_id and time, or republishing the returned event,
    is a duplicate: one ledger row, the others counted as duplicates."""
    worker = await start_worker()
    at = now()
    first = await usage.publish("chat.tokens", "acct_r", 5, event_id="req-7", time=at)
    again = await usage.publish("chat.tokens", "acct_r", 5, event_id="req-7", time=at)
    await usage.publish_event(first)
    assert again == first
    await wait_until(lambda: sample(worker, "billing_events_received_total") == 3)
    assert sample(worker, "billing_events_recorded_total") == 1
    assert sample(worker, "billing_events_duplicate_total") == 2
    assert sql.execute("SELECT count(*), sum(quantity) FROM usage_ledger").fetchone() == (
        1,
        Decimal(5),
    )


async def test_message_is_persistent_json_with_the_contract_routing_key(
    usage: UsagePublisher, bus: Bus, queue_named: list[str]
) -> None:
    """The message goes to billing.usage as usage.<source>.<type>, persistent, JSON, with
    the event id as message_id, and its body is the CloudEvents envelope."""
    queue = await tap(bus, queue_named)
    event = await usage.publish("api.call", "acct_1", event_id="call-1")
    message = await queue.get(no_ack=True)
    assert message.routing_key == "usage.chat-service.api.call"
    assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    assert message.content_type == "application/json"
    assert message.message_id == "call-1"
    assert type(event).model_validate_json(message.body) == event


@pytest.mark.parametrize(
    "arguments",
    [
        {"quantity": -1},
        {"quantity": "ten"},
        {"account": ""},
        {"event_type": "chat tokens"},
        {"time": datetime(2026, 11, 21, 10, 15)},  # noqa: DTZ001 - naive on purpose
        {"dimensions": {"model": {"nested": True}}},
        {"dimensions": {"quantity": 3}},
        {"dimensions": {f"d{i}": i for i in range(33)}},
    ],
    ids=[
        "negative",
        "not-a-number",
        "no-account",
        "bad-type",
        "naive-time",
        "nested",
        "quantity-twice",
        "too-many-dimensions",
    ],
)
async def test_invalid_input_raises_before_publishing(
    usage: UsagePublisher, bus: Bus, queue_named: list[str], arguments: dict[str, Any]
) -> None:
    """Invalid input raises InvalidUsageEvent and nothing reaches the broker."""
    queue = await tap(bus, queue_named)
    call: dict[str, Any] = {"event_type": "chat.tokens", "account": "acct_1"} | arguments
    with pytest.raises(InvalidUsageEvent):
        await usage.publish(**call)
    await usage.publish("chat.tokens", "acct_1", event_id="marker")
    messages = [await queue.get(no_ack=True)]
    while (more := await queue.get(no_ack=True, fail=False)) is not None:
        messages.append(more)
    assert [m.message_id for m in messages] == ["marker"]


async def test_unroutable_raises_and_the_event_can_be_sent_again(
    usage: UsagePublisher, bus: Bus, queue_named: list[str]
) -> None:
    """With no queue bound (no worker ever ran here) the broker returns the event and
    UsageUnroutable carries it; once a queue exists, the same event goes through."""
    with pytest.raises(UsageUnroutable) as caught:
        await usage.publish("chat.tokens", "acct_1", event_id="lost-1")
    assert caught.value.event.id == "lost-1"
    queue = await tap(bus, queue_named)
    await usage.publish_event(caught.value.event)
    assert (await queue.get(no_ack=True)).message_id == "lost-1"


async def test_nack_raises_refused(usage: UsagePublisher, bus: Bus, queue_named: list[str]) -> None:
    """A broker nack (here: a full queue that rejects publishes) raises UsageRefused."""
    await tap(bus, queue_named, **{"x-max-length": 1, "x-overflow": "reject-publish"})
    await usage.publish("chat.tokens", "acct_1", event_id="fits")
    with pytest.raises(UsageRefused) as caught:
        await usage.publish("chat.tokens", "acct_1", event_id="overflows")
    assert caught.value.event.id == "overflows"


@pytest.fixture
async def subscriber(
    namespace: str, queue_named: list[str]
) -> AsyncIterator[BillingEventSubscriber]:
    """An ops service's subscription to usage.rejected on this test's namespace."""
    queue_named.append(f"{namespace}.ops.billing-events")
    subscription = await BillingEventSubscriber.connect(
        AMQP_URL, queue="ops.billing-events", namespace=namespace, event_types=["usage.rejected"]
    )
    yield subscription
    await subscription.close()


async def test_subscriber_receives_typed_events_from_the_worker(
    start_worker: StartWorker, usage: UsagePublisher, subscriber: BillingEventSubscriber
) -> None:
    """A usage event of a type the price book does not meter comes back to the subscriber as
    a typed usage.rejected naming the original key."""
    await start_worker()
    received: asyncio.Queue[BillingEvent[Any]] = asyncio.Queue()
    consuming = asyncio.create_task(subscriber.consume(received.put))
    try:
        await usage.publish("chat.emojis", "acct_1", event_id="emoji-1")
        event = await asyncio.wait_for(received.get(), timeout=20)
    finally:
        consuming.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await consuming
    assert isinstance(event, UsageRejectedEvent)
    assert (event.data.reason, event.data.source, event.data.original_id) == (
        "unknown_event_type",
        "chat-service",
        "emoji-1",
    )


async def test_failing_handler_stops_and_the_event_stays_queued(
    bus: Bus, subscriber: BillingEventSubscriber
) -> None:
    """A handler that raises ends consume() with its error and the event goes back to the
    queue, so the next consumer gets it."""
    event = UsageRejectedEvent(
        id="rej-1",
        subject="acct_1",
        time=now(),
        data=UsageRejectedData(
            reason="schema_violation",
            detail="data.quantity: negative",
            source="chat-service",
            original_id="x",
            original_type="chat.tokens",
            queue="billing-worker.usage",
        ),
    )
    exchange = await bus.channel.get_exchange(bus.name("billing.events"))
    await exchange.publish(
        aio_pika.Message(event.model_dump_json().encode()), routing_key="usage.rejected"
    )

    async def failing(_: BillingEvent[Any]) -> None:
        raise RuntimeError("handler bug")

    with pytest.raises(RuntimeError, match="handler bug"):
        await asyncio.wait_for(subscriber.consume(failing), timeout=20)
    received: asyncio.Queue[BillingEvent[Any]] = asyncio.Queue()
    consuming = asyncio.create_task(subscriber.consume(received.put))
    try:
        assert await asyncio.wait_for(received.get(), timeout=20) == event
    finally:
        consuming.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await consuming

"""Usage in, billing events out: quota and credit events, usage.rejected, the outbox relay
surviving a crash between publish and mark, and the quota check's request/reply."""

from __future__ import annotations

import asyncio
import json
import uuid
from decimal import Decimal
from typing import Any

import aio_pika
import psycopg
import pytest
from aio_pika.abc import AbstractIncomingMessage, AbstractQueue

from billing_worker.adapters.amqp import billing_events
from billing_worker.adapters.postgres.database import create_engine_for
from billing_worker.adapters.postgres.unit_of_work import PostgresUnitOfWork
from billing_worker.domain.periods import calendar_month_of
from billing_worker.domain.usage import UsageRecord
from billing_worker.service.record_usage import record_usage_batch
from tests.clock import now
from tests.e2e.conftest import Bus, StartWorker, encode, event, received, wait_until
from tests.pricebooks import DEFAULT_BOOK


def now_z() -> str:
    return now().replace(microsecond=0).isoformat().replace("+00:00", "Z")


def bodies(messages: list[AbstractIncomingMessage]) -> list[dict[str, Any]]:
    return [json.loads(m.body) for m in messages]


async def test_quota_events_arrive_exactly_once_each(
    start_worker: StartWorker, bus: Bus, events_queue: AbstractQueue
) -> None:
    """FREE (100,000 tokens): 85,000 then 20,000 give quota.warning 80, then 90 and
    quota.exceeded 100; routing key = type, message_id = id, redeliveries add nothing."""
    worker = await start_worker()
    first = event("q1", subject="acct_q", time=now_z(), data={"quantity": 85_000})
    await bus.publish(encode(first))
    warning = bodies(await received(events_queue, 1))
    assert [(e["type"], e["data"]["threshold"]) for e in warning] == [("quota.warning", 80)]
    second = event("q2", subject="acct_q", time=now_z(), data={"quantity": 20_000})
    await bus.publish(encode(second))
    await bus.publish(encode(first))  # a redelivery: a duplicate, no new event
    messages = await received(events_queue, 2)
    got = bodies(messages)
    assert sorted((e["type"], e["data"]["threshold"]) for e in got) == [
        ("quota.exceeded", 100),
        ("quota.warning", 90),
    ]
    for message, body in zip(messages, got, strict=True):
        assert message.routing_key == body["type"]
        assert message.message_id == body["id"]
        assert message.content_type == "application/json"
    exceeded = next(e for e in got if e["type"] == "quota.exceeded")
    assert exceeded["data"]["used"] == "105000"
    assert exceeded["data"]["limit"] == "100000"
    assert exceeded["subject"] == "acct_q"
    published = worker.metrics.registry.get_sample_value(
        "billing_outbox_published_total", {"type": "quota.warning"}
    )
    assert published == 2


async def test_rejected_usage_is_announced(
    start_worker: StartWorker, bus: Bus, events_queue: AbstractQueue
) -> None:
    """A dead-lettered usage event also goes out as usage.rejected with its reason and key."""
    await start_worker()
    bad = event("r1", subject="acct_r", type="chat.emojis")
    await bus.publish(encode(bad))
    await bus.publish(b"{not json")
    got = sorted(bodies(await received(events_queue, 2)), key=lambda e: e["data"]["reason"])
    assert [e["type"] for e in got] == ["usage.rejected", "usage.rejected"]
    invalid, unknown = got
    assert invalid["data"]["reason"] == "invalid_json"
    assert invalid["data"]["original_id"] is None
    assert unknown["data"]["reason"] == "unknown_event_type"
    assert (unknown["subject"], unknown["data"]["source"], unknown["data"]["original_id"]) == (
        "acct_r",
        "chat-service",
        "r1",
    )
    assert "chat.emojis" in unknown["data"]["detail"]
    assert len(await bus.take_all("billing-worker.usage.dlq")) == 2


async def test_crash_between_commit_and_publish_publishes_once_by_id(  # noqa: PLR0917
    start_worker: StartWorker,
    bus: Bus,
    events_queue: AbstractQueue,
    database_url: str,
    sql: psycopg.Connection,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Events committed by a worker that died before publishing go out after restart; a
    relay that dies between the broker's confirm and marking the rows publishes them
    again with the same ids and bodies, so a subscriber deduplicating by id sees each once."""
    engine = create_engine_for(database_url, pool_size=1)
    record = UsageRecord(
        source="chat-service",
        event_id="crash-1",
        event_type="chat.tokens",
        account="acct_c",
        occurred_at=now(),
        quantity=Decimal(100_000),
    )
    # the transaction commits, then "the process dies" before any relay runs
    await record_usage_batch(lambda: PostgresUnitOfWork(engine), DEFAULT_BOOK, [record], clock=now)
    await engine.dispose()
    assert sql.execute("SELECT count(*) FROM outbox WHERE published_at IS NULL").fetchone() == (3,)

    real_mark = billing_events.mark_published
    failures = iter([RuntimeError("killed between publish and mark")])

    async def mark_or_die(conn: Any, ids: Any) -> None:
        failure = next(failures, None)
        if failure is not None:
            raise failure
        await real_mark(conn, ids)

    monkeypatch.setattr(billing_events, "mark_published", mark_or_die)
    await start_worker()
    messages = await received(events_queue, 6)
    got = bodies(messages)
    assert len(got) == 6, "each of the 3 events published twice: before and after the crash"
    by_id: dict[str, list[bytes]] = {}
    for message in messages:
        by_id.setdefault(str(message.message_id), []).append(message.body)
    assert len(by_id) == 3
    assert all(len(set(copies)) == 1 for copies in by_id.values()), "same id, same content"
    unique = {e["id"]: e for e in got}
    assert sorted(e["data"]["threshold"] for e in unique.values()) == [80, 90, 100]
    await wait_until(
        lambda: (
            sql.execute("SELECT count(*) FROM outbox WHERE published_at IS NULL").fetchone() == (0,)
        ),
        what="the outbox to be marked",
    )


class QuotaClient:
    """A service asking the quota check over direct reply-to."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.replies: dict[str, asyncio.Future[dict[str, Any]]] = {}

    async def start(self) -> None:
        self.channel = await self.bus.connection.channel()
        reply_queue = await self.channel.get_queue("amq.rabbitmq.reply-to", ensure=False)
        await reply_queue.consume(self._on_reply, no_ack=True)

    async def _on_reply(self, message: AbstractIncomingMessage) -> None:
        future = self.replies.pop(str(message.correlation_id), None)
        if future is not None:
            future.set_result(json.loads(message.body))

    async def ask(self, body: bytes) -> dict[str, Any]:
        correlation_id = uuid.uuid4().hex
        future = asyncio.get_running_loop().create_future()
        self.replies[correlation_id] = future
        await self.channel.default_exchange.publish(
            aio_pika.Message(
                body,
                content_type="application/json",
                correlation_id=correlation_id,
                reply_to="amq.rabbitmq.reply-to",
            ),
            routing_key=self.bus.name("billing.quota.check"),
        )
        return await asyncio.wait_for(future, 10)


async def test_quota_check_answers_and_errors(
    start_worker: StartWorker, bus: Bus, events_queue: AbstractQueue
) -> None:
    """The contract's request gets the contract's reply; malformed ones get an error reply."""
    worker = await start_worker()
    await bus.publish(
        encode(event("u1", subject="acct_42", time=now_z(), data={"quantity": 81_234}))
    )
    await received(events_queue, 1)  # the 80% warning: usage is committed
    client = QuotaClient(bus)
    await client.start()
    asked_at = now()
    reply = await client.ask(b'{"account": "acct_42", "meter": "tokens", "quantity": 2000}')
    next_month = calendar_month_of(asked_at).end
    assert reply == {
        "account": "acct_42",
        "meter": "tokens",
        "allowed": True,
        "used": "81234",
        "limit": "100000",
        "remaining": "18766",
        "period_end": next_month.isoformat().replace("+00:00", "Z"),
    }
    refused = await client.ask(b'{"account": "acct_42", "meter": "tokens", "quantity": "18767"}')
    assert (refused["allowed"], refused["remaining"]) == (False, "18766")
    unlimited = await client.ask(b'{"account": "acct_42", "meter": "images_generated"}')
    assert (unlimited["allowed"], unlimited["limit"], unlimited["remaining"]) == (True, None, None)
    for bad, fragment in [
        (b"{oops", "malformed quota check"),
        (b'{"account": "acct_42", "meter": "tokens", "quantity": -5}', "quantity"),
        (b'{"account": "acct_42"}', "meter"),
        (b'{"account": "acct_42", "meter": "bananas"}', "no meter 'bananas'"),
    ]:
        answer = await client.ask(bad)
        assert list(answer) == ["error"]
        assert fragment in answer["error"]
    registry = worker.metrics.registry
    assert registry.get_sample_value("billing_quota_checks_total", {"answer": "allowed"}) == 2
    assert registry.get_sample_value("billing_quota_checks_total", {"answer": "denied"}) == 1
    assert registry.get_sample_value("billing_quota_checks_total", {"answer": "error"}) == 4


async def test_usage_closed_into_invoice_ready_on_the_bus(
    start_worker: StartWorker,
    bus: Bus,
    events_queue: AbstractQueue,
    database_url: str,
) -> None:
    """Usage of last month through the broker, the period closed, and invoice.ready arrives
    on billing.events with the exact amounts (3 websites 1.50 + 2 images 0.20 on FREE)."""
    from datetime import timedelta  # noqa: PLC0415

    from billing_worker.service.invoices import close_due_periods  # noqa: PLC0415

    await start_worker()
    moment = now()
    last_month = (moment.replace(day=1) - timedelta(days=1)).replace(hour=12, microsecond=0)
    when = last_month.isoformat().replace("+00:00", "Z")
    for i, (kind, qty) in enumerate(
        [("generator.website_generated", 3), ("generator.image_generated", 2)]
    ):
        body = event(f"inv{i}", subject="acct_i", type=kind, time=when, data={"quantity": qty})
        await bus.publish(encode(body))
    engine = create_engine_for(database_url, pool_size=1)

    async def recorded() -> bool:
        async with engine.connect() as conn:
            from sqlalchemy import text  # noqa: PLC0415

            count = (await conn.execute(text("SELECT count(*) FROM usage_ledger"))).scalar_one()
        return bool(count == 2)

    await wait_until(recorded, what="the usage to be recorded")
    closed = await close_due_periods(
        lambda: PostgresUnitOfWork(engine),
        DEFAULT_BOOK,
        as_of=moment,
        grace=timedelta(0),
        account="acct_i",
    )
    await engine.dispose()
    assert [c.total for c in closed] == ["1.70"]
    messages = await received(events_queue, 1)
    ready = [b for b in bodies(messages) if b["type"] == "invoice.ready"]
    assert len(ready) == 1
    data = ready[0]["data"]
    assert (data["total"], data["currency"], data["plan"]) == ("1.70", "usd", "FREE")
    assert [(x["meter"], x["amount"]) for x in data["lines"]] == [
        (None, "0.00"),
        ("images_generated", "0.20"),
        ("websites_generated", "1.50"),
    ]
    assert ready[0]["subject"] == "acct_i"

"""Relayed Stripe events through the broker into a running worker: verified first, then
deduplicated, ordered and applied; forged and replayed deliveries dead-lettered."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import aio_pika
import psycopg

from tests import stripe_payloads as sp
from tests.clock import unix_now
from tests.e2e.conftest import Bus, StartWorker, wait_until

T0 = int(datetime(2026, 11, 20, tzinfo=UTC).timestamp())


async def relay(bus: Bus, body: bytes, signature: str | None) -> None:
    """What the relay does: the raw body and its signature header, to billing.stripe."""
    exchange = await bus.channel.get_exchange(bus.name("billing.stripe"))
    headers = {} if signature is None else {"stripe-signature": signature}
    await exchange.publish(
        aio_pika.Message(
            body,
            headers=headers,
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        ),
        routing_key="",
    )


async def deliver(bus: Bus, event: dict[str, Any], *, signed_at: int | None = None) -> None:
    body = sp.encode(event, indent=2)  # Stripe pretty-prints; verification uses raw bytes
    await relay(bus, body, sp.sign(body, sp.WEBHOOK_SECRET, timestamp=signed_at))


def subscription_event(kind: str, status: str, created: int) -> dict[str, Any]:
    obj = sp.subscription(
        "sub_e2e",
        customer="cus_e2e",
        price_id="price_pro_monthly",
        status=status,
        current_period_start=T0,
        current_period_end=T0 + 30 * 86_400,
    )
    return sp.event(f"customer.subscription.{kind}", obj, created=created)


async def test_verified_ordered_and_applied_end_to_end(
    start_worker: StartWorker, bus: Bus, sql: psycopg.Connection
) -> None:
    """A customer, a subscription, a duplicate, a late update after the cancellation, a
    forged and a replayed delivery: the account ends canceled on FREE, the two bad ones
    are in the DLQ with their reasons, and every outcome is counted."""
    worker = await start_worker(stripe_webhook_secret=sp.WEBHOOK_SECRET)
    customer = sp.event("customer.created", sp.customer("cus_e2e", account_id="acct_s"), created=T0)
    created = subscription_event("created", "active", T0 + 1)
    await deliver(bus, customer)
    await deliver(bus, created)
    await deliver(bus, created)  # Stripe delivers at least once
    await deliver(bus, subscription_event("deleted", "canceled", T0 + 9))
    await deliver(bus, subscription_event("updated", "active", T0 + 5))  # late
    forged = sp.encode(subscription_event("updated", "active", T0 + 20))
    await relay(bus, forged, sp.sign(forged, "whsec_not_the_secret"))
    await deliver(bus, customer, signed_at=unix_now() - 3600)  # a replay

    def state() -> tuple[Any, ...] | None:
        return sql.execute(
            "SELECT plan, status FROM accounts WHERE account_id = 'acct_s'"
        ).fetchone()

    await wait_until(lambda: state() == ("FREE", "canceled"), what="the cancellation")
    letters = []

    async def two_letters() -> bool:
        letters.extend(await bus.take_all("billing-worker.stripe.dlq"))
        return len(letters) >= 2

    await wait_until(two_letters, what="two dead letters")
    assert sorted(m.headers["x-billing-reason"] for m in letters) == [
        "bad_signature",
        "stale_signature",
    ]
    assert all(b"sub_e2e" not in str(m.headers).encode() for m in letters)
    registry = worker.metrics.registry

    def count(event_type: str, outcome: str) -> float:
        labels = {"type": event_type, "outcome": outcome}
        return registry.get_sample_value("billing_stripe_events_total", labels) or 0

    await wait_until(
        lambda: count("customer.subscription.updated", "stale") == 1, what="the stale count"
    )
    assert count("customer.subscription.created", "applied") == 1
    assert count("customer.subscription.created", "duplicate") == 1
    assert count("customer.subscription.deleted", "applied") == 1
    assert count("unknown", "bad_signature") == 1
    assert count("unknown", "stale_signature") == 1
    changed = sql.execute(
        "SELECT payload->'data'->>'plan', payload->'data'->>'status' FROM outbox "
        "WHERE event_type = 'subscription.changed' ORDER BY outbox_id"
    ).fetchall()
    assert changed == [("PRO", "active"), ("FREE", "canceled")]
    assert worker.readiness.notes["stripe"].startswith("on:")


async def test_without_a_secret_nothing_is_consumed(start_worker: StartWorker) -> None:
    """No BILLING_STRIPE_WEBHOOK_SECRET: the Stripe consumer does not run, and /readyz's
    notes say so plainly."""
    worker = await start_worker()
    assert worker.readiness.notes["stripe"].startswith("off: BILLING_STRIPE_WEBHOOK_SECRET")
    assert worker.components.stripe_consumer is None

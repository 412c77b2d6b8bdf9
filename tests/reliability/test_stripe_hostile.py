"""Hostile relayed Stripe deliveries through the real broker and worker: signature headers
that are forged, truncated or of the wrong type, replays of applied events, and genuinely
signed events that name an account other than the one their customer belongs to. None is
applied, none moves any account's state, and the queue keeps flowing.

(Unit tests pin the verification rules one by one, and tests/e2e/test_stripe_consumer.py a
forged, a stale and an identical duplicate delivery; these add what only the wire shows.)
"""

# ruff: noqa: F811 - the e2e fixtures are imported, then named as test parameters

from __future__ import annotations

import struct
from datetime import UTC, datetime
from typing import Any

import aio_pika
import psycopg

from tests import stripe_payloads as sp
from tests.clock import unix_now
from tests.e2e.conftest import (  # noqa: F401 - fixtures used by the tests below
    Bus,
    StartWorker,
    bus,
    start_worker,
    wait_until,
)
from tests.reliability.hostile_support import RawField, raw_wire_values

T0 = int(datetime(2026, 11, 20, tzinfo=UTC).timestamp())
DLQ = "billing-worker.stripe.dlq"


async def relay(bus: Bus, body: bytes, headers: dict[str, Any]) -> None:
    """Publish as the relay does: the raw body and the given headers, to billing.stripe."""
    exchange = await bus.channel.get_exchange(bus.name("billing.stripe"))
    with raw_wire_values():
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
    """A genuine delivery of ``event``, signed (now, unless told) and stamped as relayed
    at the same moment."""
    body = sp.encode(event, indent=2)
    at = signed_at or unix_now()
    signature = sp.sign(body, sp.WEBHOOK_SECRET, timestamp=at)
    await relay(bus, body, {"stripe-signature": signature, "x-relayed-at": at})


def stripe_count(worker: Any, event_type: str, outcome: str) -> float:
    labels = {"type": event_type, "outcome": outcome}
    return worker.metrics.registry.get_sample_value("billing_stripe_events_total", labels) or 0


async def dead_letters(bus: Bus, expected: int) -> list[aio_pika.abc.AbstractIncomingMessage]:
    """Wait for ``expected`` letters in the Stripe DLQ and take them."""
    letters: list[aio_pika.abc.AbstractIncomingMessage] = []

    async def enough() -> bool:
        letters.extend(await bus.take_all(DLQ))
        return len(letters) >= expected

    await wait_until(enough, what=f"{expected} Stripe dead letters")
    return letters


def state(sql: psycopg.Connection) -> dict[str, list[tuple[Any, ...]]]:
    """Everything a Stripe event could change, for before/after comparison."""
    queries = {
        "accounts": "SELECT account_id, plan, status FROM accounts ORDER BY 1",
        "customers": "SELECT customer_id, account_id FROM stripe_customers ORDER BY 1",
        "subscriptions": "SELECT subscription_id, account_id, plan, status "
        "FROM subscriptions ORDER BY 1",
        "grants": "SELECT account_id, source, amount FROM credit_grants ORDER BY 1, 2",
        "payments": "SELECT account_id, kind, amount FROM payment_ledger ORDER BY entry_id",
        "account_ledger": "SELECT account_id, kind FROM account_ledger ORDER BY entry_id",
        "outbox": "SELECT event_type, payload->>'subject' FROM outbox ORDER BY outbox_id",
    }
    return {name: sql.execute(query).fetchall() for name, query in queries.items()}


def subscription_event(
    kind: str, sub_id: str, *, customer: str, account: str | None, price: str, created: int
) -> dict[str, Any]:
    obj = sp.subscription(
        sub_id,
        customer=customer,
        price_id=price,
        status="active",
        account_id=account,
        current_period_start=T0,
        current_period_end=T0 + 30 * 86_400,
    )
    return sp.event(f"customer.subscription.{kind}", obj, created=created)


class TestSignatureHeaders:
    async def test_forged_truncated_and_mistyped_headers(
        self, start_worker: StartWorker, bus: Bus, sql: psycopg.Connection
    ) -> None:
        """Signature headers cut short at every part, of the wrong AMQP type or not UTF-8,
        missing, or stamped by the relay long after signing, are each
        dead-lettered as ``bad_signature`` or ``stale_signature`` and counted; nothing is
        applied, and a genuine delivery behind them still is."""
        worker = await start_worker(stripe_webhook_secret=sp.WEBHOOK_SECRET)
        event = sp.event("customer.created", sp.customer("cus_h", account_id="acct_h"), created=T0)
        body = sp.encode(event)
        now = unix_now()
        genuine = sp.sign(body, sp.WEBHOOK_SECRET, timestamp=now)
        cut = genuine.index("v1=") + 3
        bad_headers: list[Any] = [
            genuine[:cut],  # "t=...,v1=" and nothing
            genuine[: cut + 32],  # half a signature
            genuine[:-1],  # one hex digit short
            genuine.split(",")[0],  # the timestamp alone
            genuine.split(",")[1],  # the signature without its timestamp
            "",
            " ",
            "t=,v1=",
            f"t={now}\n,v1={'0' * 64}",
            "x" * 4000,
            now,  # an integer header
            [genuine],  # an array header
            {"t": now},  # a table header
            RawField(b"S" + struct.pack(">I", 4) + b"t=\xff\xfe"),  # a string, not UTF-8
        ]
        for header in bad_headers:
            await relay(bus, body, {"stripe-signature": header, "x-relayed-at": now})
        await relay(bus, body, {"x-relayed-at": now})  # no header at all
        old = sp.sign(body, sp.WEBHOOK_SECRET, timestamp=now - 3600)
        await relay(bus, body, {"stripe-signature": old, "x-relayed-at": now})  # a replay
        await deliver(bus, event)

        letters = await dead_letters(bus, len(bad_headers) + 2)
        reasons = sorted(str(m.headers["x-billing-reason"]) for m in letters)
        assert reasons == sorted(["bad_signature"] * (len(bad_headers) + 1) + ["stale_signature"])
        assert all(sp.WEBHOOK_SECRET not in str(m.headers) for m in letters)
        await wait_until(
            lambda: stripe_count(worker, "customer.created", "applied") == 1, what="genuine one"
        )
        assert stripe_count(worker, "unknown", "bad_signature") == len(bad_headers) + 1
        assert stripe_count(worker, "unknown", "stale_signature") == 1
        assert sql.execute("SELECT count(*) FROM stripe_events").fetchone() == (1,)


class TestReplays:
    async def test_an_event_id_is_applied_once_whatever_its_body(
        self, start_worker: StartWorker, bus: Bus, sql: psycopg.Connection
    ) -> None:
        """The same event id delivered again, as Stripe's retries do (other bytes, a fresh
        signature), or an old delivery replayed onto the queue with a relay stamp forged to
        pass the age check, or the id genuinely signed over different content, is a
        duplicate: the first one's effect stands, once."""
        worker = await start_worker(stripe_webhook_secret=sp.WEBHOOK_SECRET)
        await deliver(
            bus, sp.event("customer.created", sp.customer("cus_r", account_id="acct_r"), created=T0)
        )
        first = subscription_event(
            "created",
            "sub_r",
            customer="cus_r",
            account="acct_r",
            price="price_pro_monthly",
            created=T0 + 1,
        )
        await deliver(bus, first)
        retried = {**first, "pending_webhooks": 3}  # Stripe's retry: same id, other bytes
        await deliver(bus, retried)
        # an old delivery put back on the queue with a relay stamp forged to match its age
        await deliver(bus, first, signed_at=unix_now() - 3600)
        other = subscription_event(
            "created",
            "sub_r",
            customer="cus_r",
            account="acct_r",
            price="price_plus_monthly",
            created=T0 + 2,
        )
        other["id"] = first["id"]  # the same id, other content, still genuinely signed
        await deliver(bus, other)

        await wait_until(
            lambda: stripe_count(worker, "customer.subscription.created", "duplicate") == 3,
            what="three duplicates",
        )
        assert stripe_count(worker, "customer.subscription.created", "applied") == 1
        assert sql.execute(
            "SELECT plan, status FROM accounts WHERE account_id = 'acct_r'"
        ).fetchone() == ("PRO", "active")
        changes = sql.execute(
            "SELECT count(*) FROM outbox WHERE event_type = 'subscription.changed'"
        ).fetchone()
        assert changes == (1,)
        assert await bus.depth(DLQ) == 0


class TestAccountBoundaries:
    async def test_signed_events_cannot_move_another_accounts_state(
        self, start_worker: StartWorker, bus: Bus, sql: psycopg.Connection
    ) -> None:
        """Genuinely signed events about customer A's objects that name account B (in their
        metadata or client_reference_id), or name two accounts, are dead-lettered as
        ``account_mismatch``; one of an unknown customer naming no account as
        ``unknown_account``. Neither account, the customer links, the subscriptions, the
        credit, payment and account ledgers nor the outbox change, and a consistent event
        behind them is applied."""
        worker = await start_worker(stripe_webhook_secret=sp.WEBHOOK_SECRET)
        for customer, account in (("cus_A", "acct_A"), ("cus_B", "acct_B")):
            customer_event = sp.customer(customer, account_id=account)
            await deliver(bus, sp.event("customer.created", customer_event, created=T0))
        await deliver(
            bus,
            subscription_event(
                "created",
                "sub_A",
                customer="cus_A",
                account="acct_A",
                price="price_pro_monthly",
                created=T0 + 1,
            ),
        )
        await wait_until(
            lambda: stripe_count(worker, "customer.subscription.created", "applied") == 1,
            what="account A on PRO",
        )
        before = state(sql)
        assert ("acct_A", "PRO", "active") in before["accounts"]

        hostile = [
            # A's subscription, claimed for B
            subscription_event(
                "updated",
                "sub_A",
                customer="cus_A",
                account="acct_B",
                price="price_plus_monthly",
                created=T0 + 2,
            ),
            # a new subscription of A's customer, for B
            subscription_event(
                "created",
                "sub_X",
                customer="cus_A",
                account="acct_B",
                price="price_pro_monthly",
                created=T0 + 3,
            ),
            # A's subscription, ended, but carried by B's customer
            subscription_event(
                "deleted",
                "sub_A",
                customer="cus_B",
                account=None,
                price="price_pro_monthly",
                created=T0 + 4,
            ),
            # a credit pack paid by A's customer, for B
            sp.event(
                "checkout.session.completed",
                sp.checkout_session(
                    "cs_1",
                    mode="payment",
                    customer="cus_A",
                    client_reference_id="acct_B",
                    price_id="price_credits_1000",
                ),
                created=T0 + 5,
            ),
            # two names at once
            sp.event(
                "checkout.session.completed",
                sp.checkout_session(
                    "cs_2",
                    mode="payment",
                    client_reference_id="acct_A",
                    account_id="acct_B",
                    price_id="price_credits_1000",
                ),
                created=T0 + 6,
            ),
            # A's invoice and refund, booked to B
            sp.event(
                "invoice.paid",
                with_account(paid_invoice("in_1", "cus_A"), "acct_B"),
                created=T0 + 7,
            ),
            sp.event(
                "charge.refunded", with_account(refund("ch_1", "cus_A"), "acct_B"), created=T0 + 8
            ),
        ]
        unknown = sp.event("invoice.paid", paid_invoice("in_2", "cus_Z"), created=T0 + 9)
        for event in [*hostile, unknown]:
            await deliver(bus, event)
        letters = await dead_letters(bus, len(hostile) + 1)
        reasons = sorted(str(m.headers["x-billing-reason"]) for m in letters)
        assert reasons == sorted(["account_mismatch"] * len(hostile) + ["unknown_account"])
        details = [str(m.headers["x-billing-detail"]) for m in letters]
        assert any("acct_A" in d and "acct_B" in d for d in details)  # says which accounts
        assert state(sql) == before

        consistent = subscription_event(
            "updated",
            "sub_A",
            customer="cus_A",
            account="acct_A",
            price="price_plus_monthly",
            created=T0 + 10,
        )
        await deliver(bus, consistent)
        await wait_until(
            lambda: (
                sql.execute("SELECT plan FROM accounts WHERE account_id = 'acct_A'").fetchone()
                == ("PLUS",)
            ),
            what="the consistent update applied",
        )
        assert sql.execute("SELECT plan FROM accounts WHERE account_id = 'acct_B'").fetchone() == (
            "FREE",
        )


def paid_invoice(invoice_id: str, customer: str) -> dict[str, Any]:
    return sp.invoice(invoice_id, customer=customer, status="paid", amount_due=990, amount_paid=990)


def refund(charge_id: str, customer: str) -> dict[str, Any]:
    return sp.charge(charge_id, customer=customer, amount=990, amount_refunded=990)


def with_account(obj: dict[str, Any], account: str) -> dict[str, Any]:
    return {**obj, "metadata": {**obj.get("metadata", {}), "account_id": account}}

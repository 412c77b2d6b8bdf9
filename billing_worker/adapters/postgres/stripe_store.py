"""Stripe state on PostgreSQL: processed events, object ordering, customers,
subscriptions and the payment ledger."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

import orjson
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from billing_worker.domain.stripe import IntentPayment, StripeEvent, SubscriptionTerms

CLAIM_EVENT = text("""
    INSERT INTO stripe_events (event_id, event_type, object_id, created, outcome)
    VALUES (:id, :type, :object_id, :created, 'applied')
    ON CONFLICT (event_id) DO NOTHING
    RETURNING event_id
""")

SET_OUTCOME = text("""
    UPDATE stripe_events SET outcome = :outcome, account_id = :account WHERE event_id = :id
""")

# The first event of an object inserts its clock (a racing one waits on the insert, then
# finds the row); later ones lock the row and compare.
FIRST_OF_OBJECT = text("""
    INSERT INTO stripe_objects (object_id, object_type, last_created, last_event_id, terminal)
    VALUES (:id, :type, :created, :event_id, :terminal)
    ON CONFLICT (object_id) DO NOTHING
    RETURNING object_id
""")

LOCK_OBJECT = text("""
    SELECT last_created, terminal FROM stripe_objects WHERE object_id = :id FOR UPDATE
""")

ADVANCE_OBJECT = text("""
    UPDATE stripe_objects
       SET last_created = :created, last_event_id = :event_id, terminal = terminal OR :terminal
     WHERE object_id = :id
""")

LINK_CUSTOMER = text("""
    INSERT INTO stripe_customers (customer_id, account_id) VALUES (:customer, :account)
    ON CONFLICT (customer_id) DO UPDATE SET account_id = EXCLUDED.account_id, linked_at = now()
    RETURNING (xmax = 0) AS inserted
""")

CUSTOMER_ACCOUNT = text("SELECT account_id FROM stripe_customers WHERE customer_id = :customer")

SUBSCRIPTION_ACCOUNT = text("SELECT account_id FROM subscriptions WHERE subscription_id = :id")

UPSERT_SUBSCRIPTION = text("""
    INSERT INTO subscriptions (subscription_id, account_id, customer_id, price_id, plan, status,
                               current_period_start, current_period_end,
                               cancel_at_period_end, trial_end, started_at, updated_at)
    VALUES (:id, :account, :customer, :price, :plan, :status, :start, :end, :cancel,
            :trial_end, :started_at, now())
    ON CONFLICT (subscription_id) DO UPDATE
       SET account_id = EXCLUDED.account_id, customer_id = EXCLUDED.customer_id,
           price_id = EXCLUDED.price_id, plan = EXCLUDED.plan, status = EXCLUDED.status,
           current_period_start = EXCLUDED.current_period_start,
           current_period_end = EXCLUDED.current_period_end,
           cancel_at_period_end = EXCLUDED.cancel_at_period_end,
           trial_end = EXCLUDED.trial_end,
           started_at = coalesce(EXCLUDED.started_at, subscriptions.started_at),
           updated_at = now()
""")

APPEND_PAYMENT = text("""
    INSERT INTO payment_ledger (account_id, kind, amount, currency, stripe_object_id,
                                stripe_event_id, details, effective_at)
    VALUES (:account, :kind, :amount, :currency, :object_id, :event_id,
            CAST(:details AS jsonb), :at)
""")

OTHER_LIVE_SUBSCRIPTION = text("""
    SELECT plan, status, subscription_id FROM subscriptions
    WHERE account_id = :account AND subscription_id <> :id
      AND status IN ('trialing', 'active', 'past_due', 'unpaid')
    ORDER BY updated_at DESC, subscription_id
    LIMIT 1
""")

# payment_ledger_payment_intent ((details ->> 'payment_intent') WHERE kind = 'payment')
PAYMENT_OF_INTENT = text("""
    SELECT account_id, stripe_object_id, details FROM payment_ledger
    WHERE kind = 'payment' AND details ->> 'payment_intent' = :intent
    ORDER BY entry_id
    LIMIT 1
""")

REFUNDED_SO_FAR = text("""
    SELECT coalesce(-sum(amount), 0) FROM payment_ledger
    WHERE stripe_object_id = :object_id AND kind = 'refund'
""")


class PostgresStripe:
    """``StripeStore`` on one open transaction."""

    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    async def claim_event(self, event: StripeEvent) -> bool:
        """Record the event id; False if it was taken before (a duplicate delivery)."""
        result = await self._conn.execute(
            CLAIM_EVENT,
            {
                "id": event.event_id,
                "type": event.event_type,
                "object_id": event.object_id,
                "created": event.created,
            },
        )
        return result.first() is not None

    async def set_outcome(self, event: StripeEvent, outcome: str, account: str | None) -> None:
        """Say what became of a claimed event."""
        await self._conn.execute(
            SET_OUTCOME, {"id": event.event_id, "outcome": outcome, "account": account}
        )

    async def advance_object(self, event: StripeEvent, *, terminal: bool) -> bool:
        """Move the object's clock to this event; False if a newer event was applied already
        (or the object ended at this same second): the event is stale."""
        object_id = event.object_id
        if object_id is None:
            return True
        params = {
            "id": object_id,
            "type": event.object_type,
            "created": event.created,
            "event_id": event.event_id,
            "terminal": terminal,
        }
        if (await self._conn.execute(FIRST_OF_OBJECT, params)).first() is not None:
            return True
        last_created, was_terminal = (await self._conn.execute(LOCK_OBJECT, params)).one()
        if event.created < last_created or (event.created == last_created and was_terminal):
            return False
        await self._conn.execute(ADVANCE_OBJECT, params)
        return True

    async def link_customer(self, customer: str, account: str) -> bool:
        """Link a Stripe customer to an account; True if the link is new."""
        row = (
            await self._conn.execute(LINK_CUSTOMER, {"customer": customer, "account": account})
        ).first()
        return bool(row[0]) if row is not None else False

    async def customer_account(self, customer: str) -> str | None:
        """The account a Stripe customer is linked to."""
        row = (await self._conn.execute(CUSTOMER_ACCOUNT, {"customer": customer})).first()
        return str(row[0]) if row is not None else None

    async def subscription_account(self, subscription_id: str) -> str | None:
        """The account a Stripe subscription is kept under."""
        row = (await self._conn.execute(SUBSCRIPTION_ACCOUNT, {"id": subscription_id})).first()
        return str(row[0]) if row is not None else None

    async def save_subscription(self, terms: SubscriptionTerms, account: str, plan: str) -> None:
        """Keep the subscription's current state."""
        period = terms.period
        await self._conn.execute(
            UPSERT_SUBSCRIPTION,
            {
                "id": terms.subscription_id,
                "account": account,
                "customer": terms.customer,
                "price": terms.price_id,
                "plan": plan,
                "status": terms.status,
                "start": period.start if period else None,
                "end": period.end if period else None,
                "cancel": terms.cancel_at_period_end,
                "trial_end": terms.trial_end,
                "started_at": terms.started_at,
            },
        )

    async def append_payment(
        self,
        *,
        account: str,
        kind: str,
        amount: Decimal,
        currency: str,
        object_id: str,
        event_id: str,
        details: dict[str, Any],
        at: datetime,
    ) -> None:
        """Append a payment (+) or refund (-) entry."""
        await self._conn.execute(
            APPEND_PAYMENT,
            {
                "account": account,
                "kind": kind,
                "amount": amount,
                "currency": currency,
                "object_id": object_id,
                "event_id": event_id,
                "details": orjson.dumps(details).decode(),
                "at": at,
            },
        )

    async def other_live_subscription(
        self, account: str, subscription_id: str
    ) -> tuple[str, str, str] | None:
        """(plan, status, id) of another live subscription of the account, the latest one."""
        row = (
            await self._conn.execute(
                OTHER_LIVE_SUBSCRIPTION, {"account": account, "id": subscription_id}
            )
        ).first()
        return (str(row[0]), str(row[1]), str(row[2])) if row is not None else None

    async def refunded_so_far(self, charge_id: str) -> Decimal:
        """What refunds of the charge the ledger already holds."""
        row = (await self._conn.execute(REFUNDED_SO_FAR, {"object_id": charge_id})).one()
        return Decimal(row[0])

    async def payment_of_intent(self, payment_intent: str) -> IntentPayment | None:
        """The payment the ledger holds for a Stripe payment intent (the first, if several)."""
        row = (await self._conn.execute(PAYMENT_OF_INTENT, {"intent": payment_intent})).first()
        if row is None:
            return None
        return IntentPayment(account=str(row[0]), object_id=str(row[1]), details=dict(row[2]))

"""What the API's Stripe session routes read of an account: its Stripe customer and its
live subscription."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from billing_worker.domain.stripe import LIVE_STATUSES

ACCOUNT_STRIPE = text("""
    SELECT (SELECT customer_id FROM stripe_customers WHERE account_id = :account
            ORDER BY linked_at DESC LIMIT 1),
           (SELECT subscription_id FROM subscriptions
            WHERE account_id = :account AND status = ANY(:live)
            ORDER BY updated_at DESC, subscription_id LIMIT 1)
""")


async def account_stripe(conn: AsyncConnection, account: str) -> tuple[str | None, str | None]:
    """(the latest linked Stripe customer, the latest live subscription) of the account."""
    customer, subscription = (
        await conn.execute(ACCOUNT_STRIPE, {"account": account, "live": sorted(LIVE_STATUSES)})
    ).one()
    return customer, subscription

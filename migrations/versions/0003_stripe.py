"""Stripe: processed events, per-object ordering, customers, subscriptions, payments.

Revision ID: 0003_stripe
Revises: 0002_pricing
Create Date: 2026-11-21
"""

from __future__ import annotations

from alembic import op

revision = "0003_stripe"
down_revision = "0002_pricing"
branch_labels = None
depends_on = None

UPGRADE = """
-- Every relayed Stripe event taken, by its id: the dedupe record, written in the
-- transaction that applies it, with what became of it.
CREATE TABLE stripe_events (
    event_id     text PRIMARY KEY,
    event_type   text NOT NULL,
    object_id    text,
    created      timestamptz NOT NULL,
    outcome      text NOT NULL CHECK (outcome IN ('applied', 'stale', 'ignored')),
    account_id   text,
    received_at  timestamptz NOT NULL DEFAULT now()
);

-- Per Stripe object, the newest event applied: Stripe does not order deliveries, so an
-- older event for the same object is stale. A terminal object (a canceled subscription)
-- takes nothing more at the same second either.
CREATE TABLE stripe_objects (
    object_id      text PRIMARY KEY,
    object_type    text NOT NULL,
    last_created   timestamptz NOT NULL,
    last_event_id  text NOT NULL,
    terminal       boolean NOT NULL DEFAULT false
);

CREATE TABLE stripe_customers (
    customer_id  text PRIMARY KEY,
    account_id   text NOT NULL REFERENCES accounts (account_id),
    linked_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX stripe_customers_account ON stripe_customers (account_id);

CREATE TABLE subscriptions (
    subscription_id       text PRIMARY KEY,
    account_id            text NOT NULL REFERENCES accounts (account_id),
    customer_id           text,
    price_id              text,
    plan                  text NOT NULL,
    status                text NOT NULL,
    current_period_start  timestamptz,
    current_period_end    timestamptz,
    cancel_at_period_end  boolean NOT NULL DEFAULT false,
    trial_end             timestamptz,
    updated_at            timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX subscriptions_account ON subscriptions (account_id);

-- Money that moved: + for a payment, - for a refund (a reversing entry). Amounts are in
-- the currency's major unit. Append-only like the other ledgers.
CREATE TABLE payment_ledger (
    entry_id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id        text NOT NULL REFERENCES accounts (account_id),
    kind              text NOT NULL CHECK (kind IN ('payment', 'refund')),
    amount            numeric NOT NULL,
    currency          text NOT NULL,
    stripe_object_id  text NOT NULL,
    stripe_event_id   text NOT NULL,
    details           jsonb NOT NULL DEFAULT '{}'::jsonb,
    effective_at      timestamptz NOT NULL,
    recorded_at       timestamptz NOT NULL DEFAULT now(),
    CHECK ((kind = 'payment') = (amount >= 0))
);
CREATE INDEX payment_ledger_account ON payment_ledger (account_id, entry_id);
CREATE INDEX payment_ledger_object ON payment_ledger (stripe_object_id);
CREATE TRIGGER payment_ledger_append_only
    BEFORE UPDATE OR DELETE ON payment_ledger
    FOR EACH ROW EXECUTE FUNCTION refuse_ledger_rewrite();
CREATE TRIGGER payment_ledger_no_truncate
    BEFORE TRUNCATE ON payment_ledger
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_ledger_rewrite();
"""

DOWNGRADE = """
DROP TABLE payment_ledger;
DROP TABLE subscriptions;
DROP TABLE stripe_customers;
DROP TABLE stripe_objects;
DROP TABLE stripe_events;
"""


def upgrade() -> None:
    """Add the Stripe tables."""
    op.execute(UPGRADE)


def downgrade() -> None:
    """Remove them (only for test databases)."""
    op.execute(DOWNGRADE)

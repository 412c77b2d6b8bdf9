"""Accounts, idempotency records, the append-only usage ledger, aggregates and the outbox.

Revision ID: 0001_initial
Revises:
Create Date: 2026-11-21
"""

from __future__ import annotations

from alembic import op

revision = "0001_initial"
down_revision = None
branch_labels = None
depends_on = None

UPGRADE = """
CREATE TABLE accounts (
    account_id  text PRIMARY KEY,
    plan        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- The idempotency record is its own table, keyed by (source, event_id) alone, so the
-- ledger can later be partitioned by time without losing the unique guarantee.
CREATE TABLE idempotency_keys (
    source       text NOT NULL,
    event_id     text NOT NULL,
    fingerprint  bytea NOT NULL CHECK (octet_length(fingerprint) = 32),
    claimed_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (source, event_id)
);

CREATE TABLE usage_ledger (
    entry_id      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id    text NOT NULL REFERENCES accounts (account_id),
    meter         text NOT NULL,
    quantity      numeric NOT NULL,
    event_source  text NOT NULL,
    event_id      text NOT NULL,
    event_type    text NOT NULL,
    occurred_at   timestamptz NOT NULL,
    period_start  timestamptz NOT NULL,
    period_end    timestamptz NOT NULL,
    dimensions    jsonb NOT NULL DEFAULT '{}'::jsonb,
    recorded_at   timestamptz NOT NULL DEFAULT now(),
    CHECK (period_start <= occurred_at AND occurred_at < period_end)
);
CREATE INDEX usage_ledger_account_period ON usage_ledger (account_id, period_start, meter);
CREATE INDEX usage_ledger_event ON usage_ledger (event_source, event_id);

CREATE FUNCTION refuse_ledger_rewrite() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only: % refused', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'restrict_violation',
              HINT = 'Correct the ledger with a new, reversing entry.';
END;
$$;
CREATE TRIGGER usage_ledger_append_only
    BEFORE UPDATE OR DELETE ON usage_ledger
    FOR EACH ROW EXECUTE FUNCTION refuse_ledger_rewrite();
CREATE TRIGGER usage_ledger_no_truncate
    BEFORE TRUNCATE ON usage_ledger
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_ledger_rewrite();

-- A projection of the ledger: rebuildable with
--   SELECT account_id, meter, period_start, sum(quantity), count(*)
--   FROM usage_ledger GROUP BY 1, 2, 3
CREATE TABLE usage_aggregates (
    account_id    text NOT NULL REFERENCES accounts (account_id),
    meter         text NOT NULL,
    period_start  timestamptz NOT NULL,
    period_end    timestamptz NOT NULL,
    quantity      numeric NOT NULL DEFAULT 0,
    event_count   bigint NOT NULL DEFAULT 0,
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account_id, meter, period_start)
);

-- Events to publish to billing.events, written in the transaction that caused them.
-- event_id is deterministic, so writing the same event twice is a no-op.
CREATE TABLE outbox (
    outbox_id     bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id      text NOT NULL UNIQUE,
    event_type    text NOT NULL,
    subject       text,
    payload       jsonb NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    published_at  timestamptz
);
CREATE INDEX outbox_pending ON outbox (outbox_id) WHERE published_at IS NULL;
"""

DOWNGRADE = """
DROP TABLE outbox;
DROP TABLE usage_aggregates;
DROP TABLE usage_ledger;
DROP FUNCTION refuse_ledger_rewrite();
DROP TABLE idempotency_keys;
DROP TABLE accounts;
"""


def upgrade() -> None:
    """Create the initial schema."""
    op.execute(UPGRADE)


def downgrade() -> None:
    """Drop the initial schema (the ledger goes with it: only for empty test databases)."""
    op.execute(DOWNGRADE)

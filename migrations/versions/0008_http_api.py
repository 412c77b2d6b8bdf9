"""The HTTP API's keys, and the record of rejected events it answers lookups from.

Revision ID: 0008_http_api
Revises: 0007_invoice_precision
Create Date: 2026-12-04
"""

from __future__ import annotations

from alembic import op

revision = "0008_http_api"
down_revision = "0007_invoice_precision"
branch_labels = None
depends_on = None

UPGRADE = """
-- API keys: the key itself is never stored, only a SHA-256 of its secret part (keys are
-- 256 random bits, so a fast hash is enough); key_id is the public part that finds the row.
CREATE TABLE api_keys (
    name         text PRIMARY KEY,
    key_id       text NOT NULL UNIQUE,
    secret_hash  bytea NOT NULL,
    scope        text NOT NULL CHECK (scope IN ('read', 'ingest', 'write', 'admin')),
    created_at   timestamptz NOT NULL,
    revoked_at   timestamptz
);

-- What became of events the worker refused: one row per (source, id), the latest refusal,
-- kept for BILLING_REJECTED_RETENTION_DAYS (the dead-letter queue keeps the message).
CREATE TABLE rejected_events (
    event_source  text NOT NULL,
    event_id      text NOT NULL,
    reason        text NOT NULL,
    detail        text NOT NULL,
    queue         text NOT NULL,
    rejected_at   timestamptz NOT NULL,
    PRIMARY KEY (event_source, event_id)
);
CREATE INDEX rejected_events_age ON rejected_events (rejected_at);

-- An account's ledger entries newest first (the API's ledger pages, account show). On a
-- big ledger, create it first with CREATE INDEX CONCURRENTLY under this name: the
-- migration then keeps it instead of blocking writes while it builds.
CREATE INDEX IF NOT EXISTS usage_ledger_account_entry ON usage_ledger (account_id, entry_id);
"""

DOWNGRADE = """
DROP INDEX usage_ledger_account_entry;
DROP TABLE rejected_events;
DROP TABLE api_keys;
"""


def upgrade() -> None:
    """Add the tables."""
    op.execute(UPGRADE)


def downgrade() -> None:
    """Remove them (only for test databases)."""
    op.execute(DOWNGRADE)

"""Subscription-aligned billing periods: each account's cycle changes.

Revision ID: 0005_period_cycles
Revises: 0004_invoices
Create Date: 2026-11-21
"""

from __future__ import annotations

from alembic import op

revision = "0005_period_cycles"
down_revision = "0004_invoices"
branch_labels = None
depends_on = None

UPGRADE = """
-- An account's periods are calendar months until its first row here; from each row's
-- effective_from on, they follow the cycle anchored at `anchor`, `months` months long.
-- A row only ever takes effect at a boundary of the periods before it, later than any
-- usage recorded for the account, so a period that holds usage never moves.
CREATE TABLE account_period_cycles (
    account_id      text NOT NULL REFERENCES accounts (account_id),
    effective_from  timestamptz NOT NULL,
    anchor          timestamptz NOT NULL,
    months          integer NOT NULL CHECK (months >= 1),
    subscription_id text,
    recorded_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account_id, effective_from)
);
"""

DOWNGRADE = """
DROP TABLE account_period_cycles;
"""


def upgrade() -> None:
    """Add the cycle changes table."""
    op.execute(UPGRADE)


def downgrade() -> None:
    """Remove it (only for test databases)."""
    op.execute(DOWNGRADE)

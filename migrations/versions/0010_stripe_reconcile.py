"""The open differences between Stripe and our ledger, as the last reconcile run found them.

Revision ID: 0010_stripe_reconcile
Revises: 0009_subscription_billing
Create Date: 2026-12-08
"""

from __future__ import annotations

from alembic import op

revision = "0010_stripe_reconcile"
down_revision = "0009_subscription_billing"
branch_labels = None
depends_on = None

UPGRADE = """
-- One row per scope a run covered ('all', or a month 'YYYY-MM' of period starts): when it
-- last ran and what it found. billing_stripe_reconcile_last_run_timestamp_seconds reads it.
CREATE TABLE stripe_reconcile_runs (
    scope             text PRIMARY KEY CHECK (scope = 'all' OR scope ~ '^[0-9]{4}-[0-9]{2}$'),
    ran_at            timestamptz NOT NULL,
    invoices_checked  integer NOT NULL CHECK (invoices_checked >= 0),
    differences       integer NOT NULL CHECK (differences >= 0)
);

-- The differences still open after the newest run over their invoice's month: a run
-- replaces every row of its scope (all rows for 'all', the month's rows for a month), so
-- overlapping runs never count a difference twice. Not a ledger: nothing here is money.
-- billing_stripe_reconcile_differences{kind} counts them.
CREATE TABLE stripe_reconcile_differences (
    difference_id     bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    period            text CHECK (period ~ '^[0-9]{4}-[0-9]{2}$'),  -- NULL: no invoice of ours
    kind              text NOT NULL CHECK (kind ~ '^[a-z][a-z_]*$'),
    invoice_id        text NOT NULL,
    account_id        text,
    stripe_object_id  text,
    cause             text NOT NULL,
    found_at          timestamptz NOT NULL
);
CREATE INDEX stripe_reconcile_differences_period ON stripe_reconcile_differences (period);
"""

DOWNGRADE = """
DROP TABLE stripe_reconcile_differences;
DROP TABLE stripe_reconcile_runs;
"""


def upgrade() -> None:
    """Add the reconcile findings."""
    op.execute(UPGRADE)


def downgrade() -> None:
    """Remove them (only for test databases)."""
    op.execute(DOWNGRADE)

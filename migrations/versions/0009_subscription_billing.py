"""Who bills what: plan fees a Stripe subscription bills, usage pushed onto a
subscription's next invoice, and the tax Stripe computed.

Revision ID: 0009_subscription_billing
Revises: 0008_http_api
Create Date: 2026-12-06
"""

from __future__ import annotations

from alembic import op

revision = "0009_subscription_billing"
down_revision = "0008_http_api"
branch_labels = None
depends_on = None

UPGRADE = """
-- Who charges the customer for a line: the worker (pushed to Stripe by the invoice sync)
-- or a Stripe subscription (a plan fee on a licensed price Stripe invoices itself). The
-- line stays on our invoice either way, so the invoice explains every cent.
ALTER TABLE invoice_lines
    ADD COLUMN billed_by text NOT NULL DEFAULT 'worker'
        CHECK (billed_by IN ('worker', 'stripe_subscription')),
    ADD COLUMN stripe_subscription_id text;

-- How the sync pushed the invoice: as a Stripe invoice of its own ('invoice': its id in
-- stripe_invoice_id) or as pending invoice items on a subscription ('subscription': they
-- land on its next invoice, whose id stripe_invoice_id gets once Stripe finalizes it).
-- stripe_synced_at now says "pushed"; stripe_invoice_id alone no longer does.
ALTER TABLE invoices
    ADD COLUMN stripe_sync_target text CHECK (stripe_sync_target IN ('invoice', 'subscription')),
    ADD COLUMN stripe_subscription_id text,
    ADD COLUMN tax numeric,
    ADD COLUMN stripe_total numeric;
UPDATE invoices SET stripe_sync_target = 'invoice' WHERE stripe_invoice_id IS NOT NULL;
UPDATE invoices SET stripe_synced_at = coalesce(stripe_synced_at, closed_at)
    WHERE stripe_invoice_id IS NOT NULL;
DROP INDEX invoices_to_sync;
CREATE INDEX invoices_to_sync ON invoices (invoice_id)
    WHERE stripe_synced_at IS NULL AND stripe_sync_error IS NULL AND status IN ('draft', 'open');

-- When a subscription began: its plan applies from then (within the open period), not
-- from when its event happened to be processed.
ALTER TABLE subscriptions ADD COLUMN started_at timestamptz;

-- Who bills the account's present plan fee, and under which subscription: a change of
-- who bills it (an operator's PLUS taken over by a Stripe subscription on PLUS) is a plan
-- change of its own, so the fee is never charged by both.
ALTER TABLE accounts
    ADD COLUMN plan_billed_by text NOT NULL DEFAULT 'worker'
        CHECK (plan_billed_by IN ('worker', 'stripe_subscription')),
    ADD COLUMN plan_subscription_id text;
"""

DOWNGRADE = """
ALTER TABLE accounts DROP COLUMN plan_subscription_id, DROP COLUMN plan_billed_by;
ALTER TABLE subscriptions DROP COLUMN started_at;
DROP INDEX invoices_to_sync;
CREATE INDEX invoices_to_sync ON invoices (invoice_id)
    WHERE stripe_invoice_id IS NULL AND stripe_sync_error IS NULL AND status IN ('draft', 'open');
ALTER TABLE invoices
    DROP COLUMN stripe_total,
    DROP COLUMN tax,
    DROP COLUMN stripe_subscription_id,
    DROP COLUMN stripe_sync_target;
ALTER TABLE invoice_lines DROP COLUMN stripe_subscription_id, DROP COLUMN billed_by;
"""


def upgrade() -> None:
    """Add who-bills-what columns."""
    op.execute(UPGRADE)


def downgrade() -> None:
    """Remove them (only for test databases)."""
    op.execute(DOWNGRADE)

"""Invoices: one per account and billing period, with explainable lines.

Revision ID: 0004_invoices
Revises: 0003_stripe
Create Date: 2026-11-21
"""

from __future__ import annotations

from alembic import op

revision = "0004_invoices"
down_revision = "0003_stripe"
branch_labels = None
depends_on = None

UPGRADE = """
-- The unique (account, period) is the "closed exactly once" guarantee: a closer inserts it
-- in the transaction that writes the whole invoice, so a crash leaves nothing or all.
CREATE TABLE invoices (
    invoice_id            text PRIMARY KEY,
    account_id            text NOT NULL REFERENCES accounts (account_id),
    period_start          timestamptz NOT NULL,
    period_end            timestamptz NOT NULL,
    status                text NOT NULL
        CHECK (status IN ('draft', 'open', 'paid', 'uncollectible', 'void')),
    plan                  text NOT NULL,
    currency              text NOT NULL,
    subtotal              numeric NOT NULL,
    credits_applied       numeric NOT NULL,
    total                 numeric NOT NULL,
    pricebook_version     text NOT NULL REFERENCES pricebooks (version),
    -- every usage-ledger entry of the account and period up to this id is on the invoice;
    -- later ones are late usage, for the next invoice's adjustment lines
    last_entry_id         bigint,
    closed_at             timestamptz NOT NULL DEFAULT now(),
    stripe_invoice_id     text,
    stripe_sync_error     text,
    stripe_sync_attempts  integer NOT NULL DEFAULT 0,
    stripe_synced_at      timestamptz,
    UNIQUE (account_id, period_start)
);
CREATE INDEX invoices_to_sync ON invoices (invoice_id)
    WHERE stripe_invoice_id IS NULL AND stripe_sync_error IS NULL AND status IN ('draft', 'open');

CREATE TABLE invoice_lines (
    invoice_id        text NOT NULL REFERENCES invoices (invoice_id),
    line_no           integer NOT NULL,
    kind              text NOT NULL CHECK (kind IN ('plan_fee', 'usage', 'credits', 'adjustment')),
    description       text NOT NULL,
    meter             text,
    dimension_value   text,
    quantity          numeric NOT NULL,
    included          numeric NOT NULL,
    free_quantity     numeric NOT NULL,
    billable          numeric NOT NULL,
    price             text NOT NULL,
    tiers             jsonb NOT NULL DEFAULT '[]'::jsonb,
    amount            numeric NOT NULL,
    unrounded         numeric NOT NULL,
    entries           integer NOT NULL,
    first_entry_id    bigint,
    last_entry_id     bigint,
    refers_to_start   timestamptz,
    refers_to_end     timestamptz,
    PRIMARY KEY (invoice_id, line_no)
);
CREATE TRIGGER invoice_lines_append_only
    BEFORE UPDATE OR DELETE ON invoice_lines
    FOR EACH ROW EXECUTE FUNCTION refuse_ledger_rewrite();
"""

DOWNGRADE = """
DROP TABLE invoice_lines;
DROP TABLE invoices;
"""


def upgrade() -> None:
    """Add invoices and their lines."""
    op.execute(UPGRADE)


def downgrade() -> None:
    """Remove them (only for test databases)."""
    op.execute(DOWNGRADE)

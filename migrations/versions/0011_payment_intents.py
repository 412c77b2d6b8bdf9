"""Payments found by their Stripe payment intent: a refund of a guest Checkout names neither
customer nor account, only the payment intent the session's payment entry holds.

Revision ID: 0011_payment_intents
Revises: 0010_stripe_reconcile
Create Date: 2026-12-08
"""

from __future__ import annotations

from alembic import op

revision = "0011_payment_intents"
down_revision = "0010_stripe_reconcile"
branch_labels = None
depends_on = None

# Every charge.refunded with a payment intent looks its payment up: without this, a scan of
# the whole payment ledger per refund. Payments written before this revision hold no
# payment intent; their refunds resolve by customer or metadata as before.
UPGRADE = """
CREATE INDEX payment_ledger_payment_intent ON payment_ledger ((details ->> 'payment_intent'))
    WHERE kind = 'payment';
"""

DOWNGRADE = """
DROP INDEX payment_ledger_payment_intent;
"""


def upgrade() -> None:
    """Index payments by payment intent."""
    op.execute(UPGRADE)


def downgrade() -> None:
    """Drop the index (only for test databases)."""
    op.execute(DOWNGRADE)

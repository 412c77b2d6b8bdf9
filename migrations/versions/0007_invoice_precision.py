"""Invoices tell credits grants paid from credits no grant covered, and dimension kinds.

Revision ID: 0007_invoice_precision
Revises: 0006_close_watermark
Create Date: 2026-12-04
"""

from __future__ import annotations

from alembic import op

revision = "0007_invoice_precision"
down_revision = "0006_close_watermark"
branch_labels = None
depends_on = None

UPGRADE = """
-- credits_applied counts only what grants paid; what usage cost beyond every grant is
-- credits_shortfall. Invoices closed before this revision counted both in credits_applied.
ALTER TABLE invoices ADD COLUMN credits_shortfall numeric NOT NULL DEFAULT 0;

-- A per-dimension line's value kind: string, number, boolean, null (JSON null) or absent
-- (the event had no such field). Lines written before this revision have none: their
-- dimension_value is the text of a string, and 'null' stood for null and absent alike.
ALTER TABLE invoice_lines ADD COLUMN dimension_kind text
    CHECK (dimension_kind IN ('string', 'number', 'boolean', 'null', 'absent'));
"""

DOWNGRADE = """
ALTER TABLE invoice_lines DROP COLUMN dimension_kind;
ALTER TABLE invoices DROP COLUMN credits_shortfall;
"""


def upgrade() -> None:
    """Add the columns."""
    op.execute(UPGRADE)


def downgrade() -> None:
    """Remove them (only for test databases)."""
    op.execute(DOWNGRADE)

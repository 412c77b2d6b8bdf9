"""Invoice numbers: gap-free per calendar year, given when an invoice becomes ``open``.

Revision ID: 0012_invoice_numbers
Revises: 0011_payment_intents
Create Date: 2026-12-06
"""

from __future__ import annotations

from alembic import op

revision = "0012_invoice_numbers"
down_revision = "0011_payment_intents"
branch_labels = None
depends_on = None

UPGRADE = """
-- One counter row per year of issue. The transaction that makes an invoice open bumps its
-- year's row (ON CONFLICT DO UPDATE: the row stays locked until that transaction ends), so
-- numbers are handed out one at a time and a rollback takes its increment back with it:
-- no number is skipped and none is given twice. A database bills for one seller.
CREATE TABLE invoice_number_series (
    year         integer PRIMARY KEY,
    last_number  bigint NOT NULL CHECK (last_number > 0)
);

-- "2026-000042": the year of issue and the place in that year's series. A draft has none
-- until it is finalized; a draft voided unseen never gets one.
ALTER TABLE invoices
    ADD COLUMN number text,
    ADD CONSTRAINT invoices_draft_unnumbered CHECK (status <> 'draft' OR number IS NULL);
CREATE UNIQUE INDEX invoices_number ON invoices (number) WHERE number IS NOT NULL;

-- Invoices issued before numbering, in the order they were closed.
WITH issued AS (
    SELECT invoice_id, extract(year FROM closed_at AT TIME ZONE 'UTC')::integer AS year,
           row_number() OVER (PARTITION BY extract(year FROM closed_at AT TIME ZONE 'UTC')
                              ORDER BY closed_at, invoice_id) AS n
    FROM invoices
    WHERE status <> 'draft'
      AND NOT (status = 'void' AND EXISTS (
          SELECT 1 FROM account_ledger AS e
          WHERE e.account_id = invoices.account_id AND e.kind = 'invoice_status'
            AND e.details ->> 'invoice_id' = invoices.invoice_id
            AND e.details ->> 'from' = 'draft' AND e.details ->> 'to' = 'void'))
)
UPDATE invoices AS i
SET number = issued.year || '-' || lpad(issued.n::text, greatest(6, length(issued.n::text)), '0')
FROM issued WHERE i.invoice_id = issued.invoice_id;
INSERT INTO invoice_number_series (year, last_number)
SELECT split_part(number, '-', 1)::integer, count(*) FROM invoices
WHERE number IS NOT NULL GROUP BY 1;
"""

DOWNGRADE = """
DROP INDEX invoices_number;
ALTER TABLE invoices DROP CONSTRAINT invoices_draft_unnumbered, DROP COLUMN number;
DROP TABLE invoice_number_series;
"""


def upgrade() -> None:
    """Number the invoices."""
    op.execute(UPGRADE)


def downgrade() -> None:
    """Drop the numbers (only for test databases)."""
    op.execute(DOWNGRADE)

"""Each account's close watermark, so a closer round reads only what is due.

Revision ID: 0006_close_watermark
Revises: 0005_period_cycles
Create Date: 2026-12-04
"""

from __future__ import annotations

from alembic import op

revision = "0006_close_watermark"
down_revision = "0005_period_cycles"
branch_labels = None
depends_on = None

UPGRADE = """
-- close_from: the start of the account's earliest period that may still need an invoice
-- (every period before it has one); close_due_at: that period's end, when it falls due.
-- A round of the closer reads the accounts whose close_due_at has passed (an index scan),
-- never the history of periods already invoiced.
-- '-infinity' (the default, for a row written by a worker of an earlier version during a
-- rolling upgrade): not known yet, worked out by the next round from the account's first
-- month and earliest usage.
ALTER TABLE accounts ADD COLUMN close_from timestamptz NOT NULL DEFAULT '-infinity';
ALTER TABLE accounts ADD COLUMN close_due_at timestamptz NOT NULL DEFAULT '-infinity';

-- From what is there: past the latest invoice (periods are closed oldest first), but not
-- past a period that holds usage and has no invoice yet (late usage of a month before the
-- account's first invoice). Calendar accounts fall due a month later; accounts on a cycle
-- are due at once, and the first round sets their watermark from their calendar.
WITH start AS (
    SELECT a.account_id,
           least(
               coalesce((SELECT max(i.period_end) FROM invoices AS i
                         WHERE i.account_id = a.account_id),
                        date_trunc('month', a.created_at, 'UTC')),
               coalesce((SELECT min(g.period_start) FROM usage_aggregates AS g
                         WHERE g.account_id = a.account_id
                           AND NOT EXISTS (SELECT 1 FROM invoices AS i
                                           WHERE i.account_id = g.account_id
                                             AND i.period_start = g.period_start)),
                        'infinity')) AS close_from,
           EXISTS (SELECT 1 FROM account_period_cycles AS c
                   WHERE c.account_id = a.account_id) AS on_cycle
    FROM accounts AS a
)
UPDATE accounts AS a
SET close_from = s.close_from,
    close_due_at = CASE WHEN s.on_cycle THEN s.close_from
                        ELSE (s.close_from AT TIME ZONE 'UTC' + interval '1 month')
                             AT TIME ZONE 'UTC' END
FROM start AS s
WHERE a.account_id = s.account_id;

CREATE INDEX accounts_close_due_at ON accounts (close_due_at, account_id);
"""

DOWNGRADE = """
DROP INDEX accounts_close_due_at;
ALTER TABLE accounts DROP COLUMN close_due_at;
ALTER TABLE accounts DROP COLUMN close_from;
"""


def upgrade() -> None:
    """Add and fill the close watermark."""
    op.execute(UPGRADE)


def downgrade() -> None:
    """Remove it (only for test databases)."""
    op.execute(DOWNGRADE)

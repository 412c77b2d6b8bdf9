"""Preload a scratch ledger with millions of rows, to measure how cost grows with it."""

from __future__ import annotations

import psycopg

from billing_worker.bench.scratch import Scratch
from billing_worker.entrypoints.progress import progress

CHUNK = 1_000_000

# Rows look like real usage: random UUID keys, 1000 accounts, spread over the last
# twelve months, one ledger row and one idempotency record per event.
PRELOAD_CHUNK = """
WITH generated AS (
    SELECT gen_random_uuid()::text AS event_id,
           'acct_' || (n %% 1000) AS account_id,
           date_trunc('month', now()) - make_interval(days => (n %% 360)) AS occurred_at,
           (n %% 2000 + 1)::numeric AS quantity
    FROM generate_series(1, CAST(%(rows)s AS integer)) AS n
),
claimed AS (
    INSERT INTO idempotency_keys (source, event_id, fingerprint)
    SELECT 'preload', event_id, sha256(convert_to(event_id, 'UTF8')) FROM generated
)
INSERT INTO usage_ledger (account_id, meter, quantity, event_source, event_id, event_type,
                          occurred_at, period_start, period_end, dimensions)
SELECT account_id, 'tokens', quantity, 'preload', event_id, 'chat.tokens', occurred_at,
       date_trunc('month', occurred_at), date_trunc('month', occurred_at) + interval '1 month',
       '{"model": "gpt-4"}'::jsonb
FROM generated
"""

REBUILD_AGGREGATES = """
INSERT INTO usage_aggregates (account_id, meter, period_start, period_end, quantity, event_count)
SELECT account_id, meter, period_start, period_end, sum(quantity), count(*)
FROM usage_ledger GROUP BY 1, 2, 3, 4
ON CONFLICT (account_id, meter, period_start) DO UPDATE
   SET quantity = EXCLUDED.quantity, event_count = EXCLUDED.event_count
"""


def preload_ledger(place: Scratch, rows: int) -> None:
    """Append ``rows`` ledger rows (and their idempotency records and aggregates)."""
    with psycopg.connect(place.libpq_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO accounts (account_id, plan) "
            "SELECT 'acct_' || n, 'FREE' FROM generate_series(0, 999) AS n "
            "ON CONFLICT DO NOTHING"
        )
        remaining = rows
        with progress("preloading the ledger", total=rows, unit="row") as bar:
            while remaining > 0:
                chunk = min(CHUNK, remaining)
                conn.execute(PRELOAD_CHUNK, {"rows": chunk})
                remaining -= chunk
                bar.update(chunk)
        conn.execute(REBUILD_AGGREGATES)
        conn.execute("VACUUM ANALYZE")

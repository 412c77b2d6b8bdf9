"""Checks on a test database that several test modules share."""

from __future__ import annotations

import psycopg

# Each total folded from the ledger the way its aggregation says; unique counts from the
# distinct values recorded for them.
REBUILD = """
    SELECT l.account_id, l.meter, l.period_start,
           CASE a.aggregation
               WHEN 'max' THEN max(l.quantity)
               WHEN 'latest' THEN (array_agg(l.quantity ORDER BY l.occurred_at DESC,
                                                               l.entry_id DESC))[1]
               WHEN 'unique_count' THEN (
                   SELECT count(*) FROM meter_unique_values AS u
                   WHERE u.account_id = l.account_id AND u.meter = l.meter
                     AND u.period_start = l.period_start)
               ELSE sum(l.quantity) END,
           count(*)
    FROM usage_ledger AS l
    JOIN usage_aggregates AS a USING (account_id, meter, period_start)
    GROUP BY l.account_id, l.meter, l.period_start, a.aggregation
    ORDER BY 1, 2, 3
"""


def aggregates_match_ledger(sql: psycopg.Connection) -> bool:
    """The stored aggregates equal a rebuild from the ledger (the projection is true)."""
    rebuilt = sql.execute(REBUILD).fetchall()
    stored = sql.execute(
        "SELECT account_id, meter, period_start, quantity, event_count FROM usage_aggregates "
        "ORDER BY 1, 2, 3"
    ).fetchall()
    return rebuilt == stored


def credit_balances_match_ledger(sql: psycopg.Connection) -> bool:
    """Every grant's remaining credits equal the sum of its credit-ledger entries."""
    mismatched = sql.execute(
        "SELECT g.grant_id FROM credit_grants AS g "
        "LEFT JOIN credit_ledger AS c ON c.grant_id = g.grant_id "
        "GROUP BY g.grant_id, g.remaining HAVING g.remaining <> coalesce(sum(c.credits), 0)"
    ).fetchall()
    return not mismatched

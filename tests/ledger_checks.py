"""Checks on a test database that several test modules share."""

from __future__ import annotations

import psycopg


def aggregates_match_ledger(sql: psycopg.Connection) -> bool:
    """The stored aggregates equal a rebuild from the ledger (the projection is true)."""
    rebuilt = sql.execute(
        "SELECT account_id, meter, period_start, sum(quantity), count(*) FROM usage_ledger "
        "GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"
    ).fetchall()
    stored = sql.execute(
        "SELECT account_id, meter, period_start, quantity, event_count FROM usage_aggregates "
        "ORDER BY 1, 2, 3"
    ).fetchall()
    return rebuilt == stored

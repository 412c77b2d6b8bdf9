"""Checks on a test database that several test modules share: the package's projection
checks (``billing_worker.adapters.postgres.projections``), run on a plain psycopg
connection."""

from __future__ import annotations

import psycopg
from sqlalchemy.dialects.postgresql.psycopg import dialect as psycopg_dialect

from billing_worker.adapters.postgres.projection_sql import PRICEBOOK_SOURCES
from billing_worker.adapters.postgres.projections import (
    CREDIT_GRANTS,
    UNIQUE_VALUES,
    USAGE_AGGREGATES,
    Difference,
    meter_terms,
    projection_checks,
)

_DIALECT = psycopg_dialect()


def differences(sql: psycopg.Connection, account: str | None = None) -> list[Difference]:
    """Every difference between the stored projections and the ledgers, as ``verify``
    finds them (in one transaction, so the picture is consistent)."""
    with sql.transaction():
        terms = meter_terms([(str(v), str(s)) for v, s in sql.execute(PRICEBOOK_SOURCES)])
        found: list[Difference] = []
        for check in projection_checks(terms, account):
            compiled = check.statement.compile(dialect=_DIALECT)
            rows = sql.execute(str(compiled), compiled.params).fetchall()
            found.extend(check.read(rows))
    return found


def aggregates_match_ledger(sql: psycopg.Connection) -> bool:
    """The stored aggregates (and unique-count values) equal a rebuild from the ledger."""
    return not [d for d in differences(sql) if d.projection in (USAGE_AGGREGATES, UNIQUE_VALUES)]


def credit_balances_match_ledger(sql: psycopg.Connection) -> bool:
    """Every grant's remaining credits equal the sum of its credit-ledger entries."""
    return not [d for d in differences(sql) if d.projection == CREDIT_GRANTS]

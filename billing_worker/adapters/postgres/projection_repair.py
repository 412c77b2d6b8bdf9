"""Rewrite an account's projections from the ledgers, safely while the worker runs.

One transaction per account. It locks the account row ``FOR UPDATE``, as closing a period
and changing a plan do: every writer of an account's projections also writes a ledger row
of the account in the same transaction, whose foreign-key check needs a key-share lock on
that row. So once the lock is ours, batches of the account that were in flight have
committed, new ones wait for our commit, and the ledger we read cannot move under us; a
batch waiting on us adds its delta to the totals we wrote.

Before the account row, the account's totals are locked, in the order a batch locks them:
a batch updates its totals first and takes the key-share lock at the end of that statement
(when foreign keys are checked), so taking the account row first would deadlock with every
batch caught in between. A rarer deadlock (a distinct value or a grant being expired at
that moment) is resolved by PostgreSQL aborting one side; both retry.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from billing_worker.adapters.postgres.account_store import PostgresAccounts
from billing_worker.adapters.postgres.errors import translate
from billing_worker.adapters.postgres.projections import (
    ACCOUNTS,
    CREDIT_GRANTS,
    INVOICES,
    UNIQUE_VALUES,
    USAGE_AGGREGATES,
    Difference,
    MeterTerms,
    find_differences,
)
from billing_worker.domain.errors import TransientError

REBUILD_ATTEMPTS = 5
"""Tries of one account's transaction on a transient error (a deadlock with a batch)."""

LOCK_TOTALS = text("""
    SELECT 1 FROM usage_aggregates WHERE account_id = :account
    ORDER BY account_id, meter, period_start
    FOR UPDATE
""")

INSERT_AGGREGATE = text("""
    INSERT INTO usage_aggregates (account_id, meter, period_start, period_end, quantity,
                                  event_count, aggregation, latest_at)
    VALUES (:account, :meter, :period_start, :period_end, :quantity, :event_count,
            :aggregation, :latest_at)
""")
UPDATE_AGGREGATE = text("""
    UPDATE usage_aggregates
    SET period_end = :period_end, quantity = :quantity, event_count = :event_count,
        latest_at = coalesce(CAST(:latest_at AS timestamptz), latest_at), updated_at = now()
    WHERE account_id = :account AND meter = :meter AND period_start = :period_start
""")
DELETE_AGGREGATE = text("""
    DELETE FROM usage_aggregates
    WHERE account_id = :account AND meter = :meter AND period_start = :period_start
""")
INSERT_VALUE = text("""
    INSERT INTO meter_unique_values (account_id, meter, period_start, value)
    VALUES (:account, :meter, :period_start, :value)
    ON CONFLICT DO NOTHING
""")
DELETE_VALUE = text("""
    DELETE FROM meter_unique_values
    WHERE account_id = :account AND meter = :meter AND period_start = :period_start
      AND value = :value
""")
SET_REMAINING = text("UPDATE credit_grants SET remaining = :remaining WHERE grant_id = :grant_id")
SET_INVOICE = text("""
    UPDATE invoices SET subtotal = :subtotal, total = :total, status = :status
    WHERE invoice_id = :invoice_id
""")
SET_ACCOUNT = text("""
    UPDATE accounts SET plan = :plan, status = :status, plan_changed_at = :plan_changed_at
    WHERE account_id = :account
""")


async def rebuild_account(engine: AsyncEngine, account: str, terms: MeterTerms) -> list[Difference]:
    """Repair ``account``'s projections in one transaction; return what was wrong."""
    retrying = AsyncRetrying(
        retry=retry_if_exception_type(TransientError),
        stop=stop_after_attempt(REBUILD_ATTEMPTS),
        wait=wait_exponential(multiplier=0.1, max=2),
        reraise=True,
    )
    async for attempt in retrying:
        with attempt:
            return await _rebuild_once(engine, account, terms)
    raise AssertionError("unreachable: tenacity reraises")  # pragma: no cover


async def _rebuild_once(engine: AsyncEngine, account: str, terms: MeterTerms) -> list[Difference]:
    try:
        async with engine.begin() as conn:
            await conn.execute(LOCK_TOTALS, {"account": account})
            await PostgresAccounts(conn).get(account, lock=True)
            found = await find_differences(conn, terms, account)
            await apply_differences(conn, found)
    except Exception as exc:
        translated = translate(exc)
        if isinstance(translated, TransientError):
            raise translated from exc
        raise
    return found


async def apply_differences(conn: AsyncConnection, differences: Sequence[Difference]) -> None:
    """Write what the ledger says over each difference (in the caller's transaction)."""
    for difference in differences:
        params: dict[str, Any] = {"account": difference.account, **difference.key}
        statement = _statement(difference)
        # a distinct value's key already holds the spelling to insert or delete
        if difference.expected is not None and difference.projection != UNIQUE_VALUES:
            params.update(difference.expected)
        await conn.execute(statement, params)


def _statement(difference: Difference) -> Any:
    """The statement that repairs ``difference``."""
    missing, extra = difference.stored is None, difference.expected is None
    if difference.projection == USAGE_AGGREGATES:
        return INSERT_AGGREGATE if missing else DELETE_AGGREGATE if extra else UPDATE_AGGREGATE
    if difference.projection == UNIQUE_VALUES:
        return INSERT_VALUE if missing else DELETE_VALUE
    if difference.projection == CREDIT_GRANTS:
        return SET_REMAINING
    if difference.projection == INVOICES:
        return SET_INVOICE
    if difference.projection == ACCOUNTS:
        return SET_ACCOUNT
    raise ValueError(f"no repair for projection {difference.projection!r}")

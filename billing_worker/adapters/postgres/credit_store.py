"""Credit grants and the credit ledger on PostgreSQL."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal

import orjson
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from billing_worker.domain.credits import BurnResult, GrantBalance, MovementKind
from billing_worker.domain.periods import BillingPeriod
from billing_worker.domain.pricebook import CreditSource, PriceBook

# A plan grant per (account, period, plan): the plan the account is on, or for a period
# already over (late usage before its close) the plan it was on at the period's end; the
# grant key makes it once whatever the retries and replicas.
ALLOCATE_PLAN_GRANTS = text("""
    WITH terms AS (
        SELECT * FROM json_to_recordset(CAST(:terms AS json))
            AS t(plan text, amount numeric, priority int)
    ), needed AS (
        SELECT n.a, n.ps, n.pe, t.plan, t.amount, t.priority
        FROM json_to_recordset(CAST(:needed AS json)) AS n(a text, ps timestamptz, pe timestamptz)
        JOIN accounts AS acc ON acc.account_id = n.a
        CROSS JOIN LATERAL (
            SELECT CASE WHEN n.pe > :now THEN acc.plan ELSE coalesce(
                (SELECT l.details ->> 'plan' FROM account_ledger AS l
                 WHERE l.account_id = n.a AND l.kind = 'plan_changed' AND l.effective_at < n.pe
                 ORDER BY l.effective_at DESC, l.entry_id DESC LIMIT 1),
                (SELECT l.details ->> 'previous_plan' FROM account_ledger AS l
                 WHERE l.account_id = n.a AND l.kind = 'plan_changed' AND l.effective_at >= n.pe
                 ORDER BY l.effective_at, l.entry_id LIMIT 1),
                acc.plan) END AS plan
        ) AS at_end
        JOIN terms AS t
          ON t.plan = coalesce((SELECT plan FROM terms WHERE plan = at_end.plan), :default_plan)
        WHERE t.amount > 0
    ), granted AS (
        INSERT INTO credit_grants (account_id, source, amount, remaining, priority,
                                   valid_from, expires_at, period_start, grant_key, note)
        SELECT a, 'plan', amount, amount, priority, ps, pe, ps,
               'plan:' || a || ':' || to_char(ps AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS')
                   || ':' || plan,
               plan || ' plan grant for the period'
        FROM needed ORDER BY a, ps
        ON CONFLICT (grant_key) DO NOTHING
        RETURNING grant_id, account_id, amount, valid_from
    )
    INSERT INTO credit_ledger (account_id, grant_id, kind, credits, pricebook_version,
                               effective_at)
    SELECT account_id, grant_id, 'grant', amount, :version, valid_from FROM granted
""")

LIVE_GRANTS = text("""
    SELECT grant_id, account_id, source, remaining, priority, created_at, expires_at,
           period_start
    FROM credit_grants
    WHERE account_id IN (SELECT json_array_elements_text(CAST(:accounts AS json)))
      AND remaining > 0
      -- a plan grant lives until its period is invoiced (or the plan changes): it is
      -- what pays for that period's late usage
      AND (source = 'plan' OR expires_at IS NULL OR expires_at > :now)
    ORDER BY account_id, grant_id
    FOR UPDATE
""")

RECORD_MOVEMENTS = text("""
    WITH moved AS (
        INSERT INTO credit_ledger (account_id, grant_id, kind, credits, meter, event_source,
                                   event_id, pricebook_version, effective_at)
        SELECT m.a, m.g, m.k, m.c, m.m, m.s, m.i, :version, m.o
        FROM json_to_recordset(CAST(:movements AS json)) AS m(
            a text, g bigint, k text, c numeric, m text, s text, i text, o timestamptz)
    )
    UPDATE credit_grants AS g SET remaining = r.remaining
    FROM json_to_recordset(CAST(:remaining AS json)) AS r(g bigint, remaining numeric)
    WHERE g.grant_id = r.g
""")

ADD_GRANT = text("""
    WITH granted AS (
        INSERT INTO credit_grants (account_id, source, amount, remaining, priority,
                                   valid_from, expires_at, grant_key, note)
        VALUES (:account, :source, :amount, :amount, :priority, :valid_from, :expires_at,
                :key, :note)
        ON CONFLICT (grant_key) DO NOTHING
        RETURNING grant_id, account_id, amount, valid_from
    ), entry AS (
        INSERT INTO credit_ledger (account_id, grant_id, kind, credits, pricebook_version,
                                   effective_at)
        SELECT account_id, grant_id, 'grant', amount, :version, valid_from FROM granted
    )
    SELECT grant_id FROM granted
""")

# A plan change ends the old plan's grant for the period (what is left expires now).
EXPIRE_PLAN_GRANTS = text("""
    WITH ending AS (
        SELECT grant_id, account_id, remaining FROM credit_grants
        WHERE account_id = :account AND source = 'plan' AND period_start = :ps
          AND remaining > 0
        ORDER BY grant_id
        FOR UPDATE
    ), entry AS (
        INSERT INTO credit_ledger (account_id, grant_id, kind, credits, pricebook_version,
                                   effective_at)
        SELECT account_id, grant_id, 'expiry', -remaining, :version, :now FROM ending
    )
    UPDATE credit_grants AS g SET remaining = 0, expires_at = least(g.expires_at, :now)
    FROM ending WHERE g.grant_id = ending.grant_id
    RETURNING g.grant_id
""")

# Expiry takes what is left of a grant at its expiry, as a ledger entry of its own.
EXPIRE_DUE = text("""
    WITH due AS (
        SELECT grant_id, account_id, remaining, expires_at FROM credit_grants
        WHERE remaining > 0 AND expires_at <= :now
          AND source <> 'plan'  -- those end when their period is invoiced
        ORDER BY account_id, grant_id
        LIMIT :limit
        FOR UPDATE SKIP LOCKED
    ), entry AS (
        INSERT INTO credit_ledger (account_id, grant_id, kind, credits, pricebook_version,
                                   effective_at)
        SELECT account_id, grant_id, 'expiry', -remaining, :version, expires_at FROM due
    )
    UPDATE credit_grants AS g SET remaining = 0 FROM due WHERE g.grant_id = due.grant_id
    RETURNING g.grant_id
""")

# A refund takes a purchase back: at most what is left of its grant (the rest was spent).
LOCK_GRANT = text("""
    SELECT remaining FROM credit_grants
    WHERE grant_id = :grant AND account_id = :account
    FOR UPDATE
""")

CLAW_BACK = text("""
    WITH entry AS (
        INSERT INTO credit_ledger (account_id, grant_id, kind, credits, event_source, event_id,
                                   pricebook_version, effective_at)
        VALUES (:account, :grant, 'reversal', -CAST(:taken AS numeric), 'stripe', :event_id,
                :version, :now)
    )
    UPDATE credit_grants SET remaining = remaining - CAST(:taken AS numeric)
    WHERE grant_id = :grant
""")


def _json(rows: object) -> str:
    return orjson.dumps(rows).decode()


class PostgresCredits:
    """``CreditStore`` on one open transaction."""

    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    async def allocate_plan_grants(
        self, needed: Sequence[tuple[str, BillingPeriod]], book: PriceBook, now: datetime
    ) -> None:
        """Grant each account its plan's credits for each period, once: the plan it is on,
        or the plan it was on at the end of a period over by ``now``."""
        if not needed:
            return
        terms = [
            {"plan": p.name, "amount": str(p.credit_grant), "priority": p.credit_grant_priority}
            for p in book.plans.values()
        ]
        rows = [
            {"a": account, "ps": period.start.isoformat(), "pe": period.end.isoformat()}
            for account, period in sorted(needed, key=lambda n: (n[0], n[1].start))
        ]
        await self._conn.execute(
            ALLOCATE_PLAN_GRANTS,
            {
                "needed": _json(rows),
                "terms": _json(terms),
                "version": book.version,
                "default_plan": book.default_plan,
                "now": now,
            },
        )

    async def live_grants(self, accounts: Sequence[str], now: datetime) -> list[GrantBalance]:
        """Unexpired grants with credits left, locked until the transaction ends."""
        result = await self._conn.execute(
            LIVE_GRANTS, {"accounts": _json(sorted(set(accounts))), "now": now}
        )
        return [
            GrantBalance(
                grant_id=grant_id,
                account=account,
                source=CreditSource(source),
                remaining=remaining,
                priority=priority,
                created_at=created_at,
                expires_at=expires_at,
                period_start=period_start,
            )
            for grant_id, account, source, remaining, priority, created_at, expires_at, period_start in result  # noqa: E501
        ]

    async def record_burns(self, burn: BurnResult, pricebook_version: str) -> None:
        """Append one ledger entry per grant touched (and per shortfall); update balances."""
        if not burn.movements:
            return
        movements = [
            {
                "a": m.charge.account,
                "g": m.grant_id,
                "k": m.kind.value,
                "c": str(-m.credits if m.kind is MovementKind.BURN else m.credits),
                "m": m.charge.meter,
                "s": m.charge.source,
                "i": m.charge.event_id,
                "o": m.charge.occurred_at.isoformat(),
            }
            for m in burn.movements
        ]
        remaining = [{"g": g, "remaining": str(r)} for g, r in sorted(burn.remaining.items())]
        await self._conn.execute(
            RECORD_MOVEMENTS,
            {
                "movements": _json(movements),
                "remaining": _json(remaining),
                "version": pricebook_version,
            },
        )

    async def add_grant(
        self,
        *,
        account: str,
        source: CreditSource,
        amount: Decimal,
        priority: int,
        valid_from: datetime,
        expires_at: datetime | None,
        key: str,
        note: str,
        pricebook_version: str,
    ) -> int | None:
        """Add a grant and its ledger entry; ``None`` if ``key`` was granted before."""
        result = await self._conn.execute(
            ADD_GRANT,
            {
                "account": account,
                "source": source.value,
                "amount": amount,
                "priority": priority,
                "valid_from": valid_from,
                "expires_at": expires_at,
                "key": key,
                "note": note,
                "version": pricebook_version,
            },
        )
        row = result.first()
        return int(row[0]) if row is not None else None

    async def end_plan_grants(
        self, account: str, period: BillingPeriod, now: datetime, pricebook_version: str
    ) -> int:
        """Expire what is left of the account's plan grants for ``period`` now."""
        result = await self._conn.execute(
            EXPIRE_PLAN_GRANTS,
            {"account": account, "ps": period.start, "now": now, "version": pricebook_version},
        )
        return len(result.all())

    async def expire_due(self, now: datetime, pricebook_version: str, limit: int = 1000) -> int:
        """Write expiry entries for grants past their expiry; return how many expired."""
        result = await self._conn.execute(
            EXPIRE_DUE, {"now": now, "version": pricebook_version, "limit": limit}
        )
        return len(result.all())

    async def claw_back(
        self,
        *,
        account: str,
        grant_id: int,
        amount: Decimal,
        event_id: str,
        now: datetime,
        pricebook_version: str,
    ) -> Decimal | None:
        """Take up to ``amount`` credits of what is left of the grant back as a ``reversal`` entry
        (the grant row locked); return what was taken, None if the account has no such
        grant."""
        params = {"grant": grant_id, "account": account}
        row = (await self._conn.execute(LOCK_GRANT, params)).first()
        if row is None:
            return None
        taken = min(Decimal(row[0]), max(amount, Decimal(0)))
        if taken > 0:
            await self._conn.execute(
                CLAW_BACK,
                {
                    **params,
                    "taken": taken,
                    "event_id": event_id,
                    "version": pricebook_version,
                    "now": now,
                },
            )
        return taken

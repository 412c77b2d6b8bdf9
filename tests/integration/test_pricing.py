"""Quotas, credits, plan changes and meter aggregations, recorded on real PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from billing_worker.adapters.postgres.account_store import PostgresUsageReader
from billing_worker.adapters.postgres.database import create_engine_for
from billing_worker.adapters.postgres.unit_of_work import PostgresUnitOfWork
from billing_worker.domain.errors import PermanentError
from billing_worker.domain.periods import calendar_month_of
from billing_worker.domain.pricebook import CreditSource, PriceBook
from billing_worker.domain.usage import UsageOutcome, UsageRecord
from billing_worker.service.accounts import change_plan, expire_credits, grant_credits
from billing_worker.service.quota_check import UnknownMeter, check_quota
from billing_worker.service.record_usage import record_usage_batch
from tests.ledger_checks import aggregates_match_ledger, credit_balances_match_ledger
from tests.pricebooks import DEFAULT_BOOK, FEATURES_BOOK
from tests.records import NOW, usage

PERIOD = calendar_month_of(NOW)


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    eng = create_engine_for(database_url, pool_size=4)
    yield eng
    await eng.dispose()


async def record(
    engine: AsyncEngine, records: list[UsageRecord], book: PriceBook = FEATURES_BOOK
) -> list[UsageOutcome]:
    return await record_usage_batch(
        lambda: PostgresUnitOfWork(engine), book, records, clock=lambda: NOW
    )


def outbox(sql: psycopg.Connection, event_type: str | None = None) -> list[dict[str, Any]]:
    rows = sql.execute(
        "SELECT payload FROM outbox WHERE %s::text IS NULL OR event_type = %s ORDER BY outbox_id",
        (event_type, event_type),
    ).fetchall()
    return [row[0] for row in rows]


def thresholds(sql: psycopg.Connection, account: str = "acct_1") -> list[tuple[str, int]]:
    return [
        (e["type"], e["data"]["threshold"])
        for e in outbox(sql)
        if e["type"].startswith("quota.") and e["subject"] == account
    ]


class TestQuotaThresholds:
    async def test_each_threshold_once_with_exact_payload(
        self, engine: AsyncEngine, sql: psycopg.Connection
    ) -> None:
        """80% then 90+100% in one batch: one event per threshold, with the contract's data."""
        await record(engine, [usage(quantity=790)])
        assert thresholds(sql) == []
        await record(engine, [usage(quantity=20)])
        assert thresholds(sql) == [("quota.warning", 80)]
        await record(engine, [usage(quantity=100), usage(quantity=100)])
        await record(engine, [usage(quantity=500)])
        assert thresholds(sql) == [
            ("quota.warning", 80),
            ("quota.warning", 90),
            ("quota.exceeded", 100),
        ]
        exceeded = outbox(sql, "quota.exceeded")[0]
        assert exceeded["source"] == "billing-worker"
        assert exceeded["subject"] == "acct_1"
        assert exceeded["data"] == {
            "meter": "tokens",
            "threshold": 100,
            "used": "1010",
            "limit": "1000",
            "period_start": "2026-11-01T00:00:00Z",
            "period_end": "2026-12-01T00:00:00Z",
            "plan": "BASIC",
            "enforcement": "hard",
        }
        assert aggregates_match_ledger(sql)

    async def test_usage_past_the_limit_is_recorded_not_refused(
        self, engine: AsyncEngine, sql: psycopg.Connection
    ) -> None:
        """Usage beyond a hard limit is still recorded in full; the event says so."""
        outcomes = await record(engine, [usage(quantity=5000)])
        assert outcomes == [UsageOutcome.RECORDED]
        used = sql.execute(
            "SELECT quantity FROM usage_aggregates WHERE meter = 'tokens'"
        ).fetchone()
        assert used == (Decimal(5000),)
        assert [t for _, t in thresholds(sql)] == [80, 90, 100]

    async def test_replicas_racing_announce_each_threshold_once(
        self, engine: AsyncEngine, sql: psycopg.Connection
    ) -> None:
        """Concurrent batches crossing the same thresholds write each alert exactly once."""
        batches = [[usage(quantity=300)] for _ in range(8)]
        await asyncio.gather(*(record(engine, b) for b in batches))
        assert sorted(t for _, t in thresholds(sql)) == [80, 90, 100]
        alerts = sql.execute("SELECT count(*) FROM quota_alerts").fetchone()
        assert alerts == (3,)

    async def test_new_period_announces_again(
        self, engine: AsyncEngine, sql: psycopg.Connection
    ) -> None:
        """Thresholds are per period: the next month's crossing is a new event with a new id."""
        await record(engine, [usage(quantity=1000, at=NOW - timedelta(days=30))])
        await record(engine, [usage(quantity=1000)])
        events = outbox(sql, "quota.exceeded")
        assert [e["data"]["period_start"] for e in events] == [
            "2026-10-01T00:00:00Z",
            "2026-11-01T00:00:00Z",
        ]
        assert len({e["id"] for e in events}) == 2

    async def test_soft_limit_on_unique_count_meter(
        self, engine: AsyncEngine, sql: psycopg.Connection
    ) -> None:
        """A unique_count meter counts distinct values; its soft limit fires once at 100%."""
        await record(engine, [usage("seat.active", user_id=u) for u in ("a", "b", "a", "c")])
        await record(engine, [usage("seat.active", user_id="c"), usage("seat.active", user_id=1)])
        seats = sql.execute(
            "SELECT quantity, event_count FROM usage_aggregates WHERE meter = 'seats'"
        ).fetchone()
        assert seats == (Decimal(4), 6)
        exceeded = outbox(sql, "quota.exceeded")
        assert [(e["data"]["meter"], e["data"]["enforcement"]) for e in exceeded] == [
            ("seats", "soft")
        ]
        assert aggregates_match_ledger(sql)

    async def test_account_on_a_retired_plan_is_held_to_the_default_plan(
        self, engine: AsyncEngine, sql: psycopg.Connection
    ) -> None:
        """A plan removed from the book: its accounts get the default plan's limits, and
        the event names the plan they are on."""
        sql.execute("INSERT INTO accounts (account_id, plan) VALUES ('acct_old', 'LEGACY')")
        await record(engine, [usage(quantity=850, account="acct_old")])
        events = outbox(sql, "quota.warning")
        assert [(e["data"]["threshold"], e["data"]["plan"]) for e in events] == [(80, "LEGACY")]


class TestAggregations:
    async def test_every_aggregation_folds_like_the_ledger(
        self, engine: AsyncEngine, sql: psycopg.Connection
    ) -> None:
        """sum, count, max, latest (by event time) and filters, across two batches."""
        later = NOW + timedelta(minutes=5)
        await record(
            engine,
            [
                usage(quantity=10, model="gpt-4"),
                usage(quantity=5, model="gpt-3.5"),
                usage("storage.gb_month", "2.5"),
                usage("level.reported", 7, at=later),
            ],
        )
        await record(
            engine,
            [
                usage("storage.gb_month", "1.5"),
                usage("level.reported", 3, at=NOW),  # older: does not replace 7
                usage("level.reported", 4, at=later + timedelta(seconds=1)),
            ],
        )
        totals = dict(
            sql.execute(
                "SELECT meter, quantity FROM usage_aggregates WHERE account_id = 'acct_1'"
            ).fetchall()
        )
        assert totals == {
            "tokens": Decimal(15),
            "gpt4_tokens": Decimal(10),
            "requests": Decimal(2),
            "peak_storage": Decimal("2.5"),
            "plan_level": Decimal(4),
        }
        assert aggregates_match_ledger(sql)

    async def test_ledger_rows_name_the_price_book_version(
        self, engine: AsyncEngine, sql: psycopg.Connection
    ) -> None:
        """Each recorded row keeps the version of the price book it was recorded under."""
        await record(engine, [usage(quantity=1)], FEATURES_BOOK)
        await record(engine, [usage(quantity=1)], DEFAULT_BOOK)
        versions = sql.execute(
            "SELECT DISTINCT pricebook_version FROM usage_ledger ORDER BY 1"
        ).fetchall()
        assert versions == sorted([(DEFAULT_BOOK.version,), (FEATURES_BOOK.version,)])


async def grant(
    engine: AsyncEngine,
    *,
    account: str,
    amount: Decimal,
    source: CreditSource = CreditSource.PROMOTIONAL,
    key: str,
    note: str = "",
    expires_at: datetime | None = None,
) -> int | None:
    return await grant_credits(
        lambda: PostgresUnitOfWork(engine),
        FEATURES_BOOK,
        account=account,
        amount=amount,
        source=source,
        key=key,
        note=note,
        now=NOW,
        expires_at=expires_at,
    )


def credit_entries(sql: psycopg.Connection, account: str = "acct_1") -> list[tuple[Any, ...]]:
    return sql.execute(
        "SELECT c.kind, g.source, c.credits FROM credit_ledger AS c "
        "LEFT JOIN credit_grants AS g USING (grant_id) WHERE c.account_id = %s "
        "ORDER BY c.entry_id",
        (account,),
    ).fetchall()


class TestCredits:
    async def test_burn_order_across_grants(
        self, engine: AsyncEngine, sql: psycopg.Connection
    ) -> None:
        """Promotional (priority 5) burns before the plan grant (10), purchases (20) last;
        one ledger entry per grant touched."""
        await grant(
            engine,
            account="acct_1",
            amount=Decimal(500),
            source=CreditSource.PURCHASE,
            key="checkout_1",
            note="pack",
        )
        await grant(
            engine,
            account="acct_1",
            amount=Decimal(15),
            source=CreditSource.PROMOTIONAL,
            key="promo_1",
            note="welcome",
        )
        await record(engine, [usage("api.call", 3)])  # 30 credits
        assert credit_entries(sql) == [
            ("grant", "purchase", Decimal(500)),
            ("grant", "promotional", Decimal(15)),
            ("grant", "plan", Decimal(100)),
            ("burn", "promotional", Decimal(-15)),
            ("burn", "plan", Decimal(-15)),
        ]
        await record(engine, [usage("api.call", 10)])  # 100 credits: 85 plan + 15 purchase
        assert credit_entries(sql)[5:] == [
            ("burn", "plan", Decimal(-85)),
            ("burn", "purchase", Decimal(-15)),
        ]
        assert credit_balances_match_ledger(sql)

    async def test_shortfall_recorded_and_alerts_fire_once(
        self, engine: AsyncEngine, sql: psycopg.Connection
    ) -> None:
        """Falling below the low level and to zero fire once each; uncovered usage is a
        recorded shortfall, and further usage fires nothing new."""
        await record(engine, [usage("api.call", 6)])  # 60 of 100: balance 40 < 50
        assert [e["type"] for e in outbox(sql)] == ["credits.low"]
        assert outbox(sql)[0]["data"] == {
            "balance": "40",
            "threshold": "50",
            "shortfall": "0",
            "meter": "api_calls",
        }
        await record(engine, [usage("api.call", 5)])  # 50 more: 40 covered, 10 short
        await record(engine, [usage("api.call", 1)])  # 10 more, all short
        assert [e["type"] for e in outbox(sql)] == ["credits.low", "credits.exhausted"]
        assert outbox(sql, "credits.exhausted")[0]["data"]["shortfall"] == "10"
        shortfalls = sql.execute(
            "SELECT sum(credits) FROM credit_ledger WHERE kind = 'shortfall'"
        ).fetchone()
        assert shortfalls == (Decimal(20),)
        assert credit_balances_match_ledger(sql)

    async def test_top_up_rearms_the_alerts(
        self, engine: AsyncEngine, sql: psycopg.Connection
    ) -> None:
        """After a grant lifts the balance, crossing the levels again fires again."""
        await record(engine, [usage("api.call", 10)])
        await grant(
            engine,
            account="acct_1",
            amount=Decimal(100),
            source=CreditSource.PROMOTIONAL,
            key="again",
        )
        await record(engine, [usage("api.call", 10)])
        assert [e["type"] for e in outbox(sql)] == [
            "credits.low",
            "credits.exhausted",
            "credits.low",
            "credits.exhausted",
        ]
        assert len({e["id"] for e in outbox(sql)}) == 4

    async def test_grant_key_grants_once(
        self, engine: AsyncEngine, sql: psycopg.Connection
    ) -> None:
        """The same grant key twice (an operator re-run, a redelivery) grants once."""
        first = await grant(
            engine, account="acct_9", amount=Decimal(5), source=CreditSource.PROMOTIONAL, key="k"
        )
        second = await grant(
            engine, account="acct_9", amount=Decimal(5), source=CreditSource.PROMOTIONAL, key="k"
        )
        assert first is not None
        assert second is None
        assert credit_entries(sql, "acct_9") == [("grant", "promotional", Decimal(5))]

    async def test_expiry_is_a_ledger_entry(
        self, engine: AsyncEngine, sql: psycopg.Connection
    ) -> None:
        """A grant past its expiry loses what is left through an expiry entry."""
        uow = lambda: PostgresUnitOfWork(engine)  # noqa: E731
        await grant(
            engine,
            account="acct_1",
            amount=Decimal(30),
            source=CreditSource.PROMOTIONAL,
            key="short",
            expires_at=NOW + timedelta(hours=1),
        )
        assert await expire_credits(uow, FEATURES_BOOK, NOW) == 0
        assert await expire_credits(uow, FEATURES_BOOK, NOW + timedelta(hours=2)) == 1
        assert credit_entries(sql)[-1] == ("expiry", "promotional", Decimal(-30))
        assert credit_balances_match_ledger(sql)

    async def test_bad_grants_are_refused(self, engine: AsyncEngine) -> None:
        """Grants must be positive and expire in the future."""
        with pytest.raises(PermanentError, match="positive"):
            await grant(
                engine, account="a", amount=Decimal(0), source=CreditSource.PROMOTIONAL, key="z"
            )
        with pytest.raises(PermanentError, match="not in the future"):
            await grant(
                engine,
                account="a",
                amount=Decimal(1),
                source=CreditSource.PROMOTIONAL,
                key="z",
                expires_at=NOW,
            )


class TestPlanChange:
    async def test_upgrade_mid_period_applies_new_limits_from_now(
        self, engine: AsyncEngine, sql: psycopg.Connection
    ) -> None:
        """BASIC -> BIG: past usage is kept, the 80/90% already announced stay so, the new
        plan's 50% fires when reached; the plan grant follows the plan."""
        uow = lambda: PostgresUnitOfWork(engine)  # noqa: E731
        await record(engine, [usage(quantity=900), usage("api.call", 1)])
        change = await change_plan(
            uow, FEATURES_BOOK, account="acct_1", plan="BIG", change_id="c1", now=NOW
        )
        assert (change.previous_plan, change.plan, change.quota_events) == ("BASIC", "BIG", 0)
        await record(engine, [usage(quantity=4100)])
        assert thresholds(sql) == [
            ("quota.warning", 80),
            ("quota.warning", 90),
            ("quota.warning", 50),
        ]
        changed = outbox(sql, "subscription.changed")
        assert [e["data"]["previous_plan"] + ">" + e["data"]["plan"] for e in changed] == [
            "BASIC>BIG"
        ]
        assert credit_entries(sql) == [
            ("grant", "plan", Decimal(100)),
            ("burn", "plan", Decimal(-10)),
            ("expiry", "plan", Decimal(-90)),
            ("grant", "plan", Decimal(1000)),
        ]
        plan_rows = sql.execute(
            "SELECT kind, details->>'plan' FROM account_ledger WHERE account_id = 'acct_1'"
        ).fetchall()
        assert plan_rows == [("plan_changed", "BIG")]
        assert sql.execute("SELECT count(*) FROM usage_ledger").fetchone() == (5,)
        assert credit_balances_match_ledger(sql)

    async def test_downgrade_announces_thresholds_already_reached(
        self, engine: AsyncEngine, sql: psycopg.Connection
    ) -> None:
        """BIG -> BASIC with usage over the new limit announces the new plan's thresholds
        at once (those not announced before in the period)."""
        uow = lambda: PostgresUnitOfWork(engine)  # noqa: E731
        await change_plan(uow, FEATURES_BOOK, account="acct_1", plan="BIG", change_id="a", now=NOW)
        await record(engine, [usage(quantity=5000)])  # BIG: 50% fires
        change = await change_plan(
            uow, FEATURES_BOOK, account="acct_1", plan="BASIC", change_id="b", now=NOW
        )
        assert change.quota_events == 3
        assert thresholds(sql) == [
            ("quota.warning", 50),
            ("quota.warning", 80),
            ("quota.warning", 90),
            ("quota.exceeded", 100),
        ]

    async def test_same_plan_is_no_change_and_unknown_plan_refused(
        self, engine: AsyncEngine, sql: psycopg.Connection
    ) -> None:
        """Setting the current plan again changes nothing; an unknown plan is refused."""
        uow = lambda: PostgresUnitOfWork(engine)  # noqa: E731
        await record(engine, [usage(quantity=1)])
        change = await change_plan(
            uow, FEATURES_BOOK, account="acct_1", plan="BASIC", change_id="x", now=NOW
        )
        assert not change.changed
        assert outbox(sql, "subscription.changed") == []
        with pytest.raises(PermanentError, match="no plan 'GOLD'"):
            await change_plan(
                uow, FEATURES_BOOK, account="acct_1", plan="GOLD", change_id="y", now=NOW
            )

    async def test_plan_change_waits_for_a_batch_granting_the_old_plan(
        self, engine: AsyncEngine, sql: psycopg.Connection
    ) -> None:
        """A usage batch has allocated the old plan's period grant but not committed: the
        plan change waits for it (both lock the account row), then ends that grant. The
        account never holds two plans' grants at once."""
        uow = lambda: PostgresUnitOfWork(engine)  # noqa: E731
        await record(engine, [usage(quantity=1)])
        async with PostgresUnitOfWork(engine) as batch:
            await batch.credits.allocate_plan_grants([("acct_1", PERIOD)], FEATURES_BOOK, NOW)
            change = asyncio.create_task(
                change_plan(
                    uow, FEATURES_BOOK, account="acct_1", plan="BIG", change_id="c", now=NOW
                )
            )
            await asyncio.sleep(0.5)
            assert not change.done(), "the plan change must wait for the open batch"
            await batch.commit()
        await change
        assert credit_entries(sql) == [
            ("grant", "plan", Decimal(100)),
            ("expiry", "plan", Decimal(-100)),
            ("grant", "plan", Decimal(1000)),
        ]
        assert credit_balances_match_ledger(sql)

    async def test_retired_plan_gets_the_default_plan_grant(
        self, engine: AsyncEngine, sql: psycopg.Connection
    ) -> None:
        """An account on a plan the book no longer has is granted the default plan's credits."""
        sql.execute("INSERT INTO accounts (account_id, plan) VALUES ('acct_old', 'LEGACY')")
        await record(engine, [usage("api.call", 1, account="acct_old")])
        assert credit_entries(sql, "acct_old") == [
            ("grant", "plan", Decimal(100)),
            ("burn", "plan", Decimal(-10)),
        ]


class TestQuotaCheckAnswers:
    async def test_answers_from_the_aggregates(self, engine: AsyncEngine) -> None:
        """used/limit/remaining come from this period's totals and the account's plan."""
        uow = PostgresUsageReader(engine)
        await record(engine, [usage(quantity=600)])
        ok = await check_quota(
            uow, FEATURES_BOOK, account="acct_1", meter="tokens", quantity=Decimal(400), now=NOW
        )
        assert (ok.answer.allowed, ok.answer.used, ok.answer.remaining) == (
            True,
            Decimal(600),
            Decimal(400),
        )
        assert ok.period == PERIOD
        refused = await check_quota(
            uow, FEATURES_BOOK, account="acct_1", meter="tokens", quantity=Decimal(401), now=NOW
        )
        assert not refused.answer.allowed
        stranger = await check_quota(
            uow, FEATURES_BOOK, account="nobody", meter="tokens", quantity=Decimal(1), now=NOW
        )
        assert (stranger.answer.used, stranger.answer.limit) == (Decimal(0), Decimal(1000))
        unlimited = await check_quota(
            uow,
            FEATURES_BOOK,
            account="acct_1",
            meter="requests",
            quantity=Decimal(10**9),
            now=NOW,
        )
        assert (unlimited.answer.allowed, unlimited.answer.limit) == (True, None)
        with pytest.raises(UnknownMeter, match="no meter 'bananas'"):
            await check_quota(
                uow, FEATURES_BOOK, account="acct_1", meter="bananas", quantity=Decimal(1), now=NOW
            )

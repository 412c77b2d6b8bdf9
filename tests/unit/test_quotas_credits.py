"""Quota thresholds and checks, credit burning and alerts, and per-aggregation deltas."""

from __future__ import annotations

import random
from collections import Counter
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from billing_worker.domain.credits import (
    AlertKind,
    BurnResult,
    CreditCharge,
    GrantBalance,
    MovementKind,
    burn_credits,
    credit_charges,
)
from billing_worker.domain.periods import BillingPeriod, calendar_month_of
from billing_worker.domain.pricebook import Aggregation, CreditSource, Enforcement, PriceBook
from billing_worker.domain.quotas import (
    PeriodUsage,
    answer_quota_check,
    crossed_thresholds,
)
from billing_worker.domain.usage import (
    AggregateDelta,
    UsageRecord,
    aggregate_deltas,
    ledger_entries_for,
)
from tests.pricebooks import DEFAULT_BOOK, FEATURES_BOOK

D = Decimal
T0 = datetime(2026, 11, 21, 10, 15, tzinfo=UTC)
NOV = calendar_month_of(T0)
DEC = calendar_month_of(datetime(2026, 12, 5, tzinfo=UTC))
FREE_TOKENS = D(100_000)
"""The FREE plan's token limit in the built-in book (thresholds 80/90/100)."""


# --- quota thresholds -------------------------------------------------------------------------


def usage(
    used: int | Decimal,
    previous: int | Decimal | None,
    *,
    plan: str = "FREE",
    meter: str = "tokens",
    account: str = "acct_1",
    period: BillingPeriod = NOV,
) -> PeriodUsage:
    return PeriodUsage(
        account=account,
        meter=meter,
        period=period,
        plan=plan,
        used=D(used),
        previous=None if previous is None else D(previous),
    )


def levels(book: PriceBook, *usages: PeriodUsage) -> list[int]:
    return [c.threshold for c in crossed_thresholds(book, usages)]


class TestCrossedThresholds:
    def test_crossing_80_alone(self) -> None:
        """From 79,999 to 85,000 of 100,000 tokens crosses 80% and nothing else."""
        crossings = crossed_thresholds(DEFAULT_BOOK, [usage(85_000, 79_999)])
        assert len(crossings) == 1
        crossing = crossings[0]
        assert crossing.threshold == 80
        assert crossing.used == D(85_000)
        assert crossing.limit == FREE_TOKENS
        assert crossing.enforcement is Enforcement.HARD
        assert (crossing.account, crossing.meter, crossing.period) == ("acct_1", "tokens", NOV)

    def test_reaching_a_level_exactly_crosses_it(self) -> None:
        """Usage at exactly 80% of the limit counts as reaching 80%."""
        assert levels(DEFAULT_BOOK, usage(80_000, 79_999)) == [80]

    def test_one_jump_over_several_levels(self) -> None:
        """From below 80% to above 100% in one step announces 80, 90 and 100, sorted."""
        assert levels(DEFAULT_BOOK, usage(120_000, 50_000)) == [80, 90, 100]

    def test_nothing_when_previous_already_at_the_level(self) -> None:
        """A level that was already reached before the change is not crossed again."""
        assert levels(DEFAULT_BOOK, usage(89_999, 80_000)) == []
        assert levels(DEFAULT_BOOK, usage(95_000, 90_000)) == []
        assert levels(DEFAULT_BOOK, usage(150_000, 100_000)) == []
        assert levels(DEFAULT_BOOK, usage(80_000, 80_000)) == []

    def test_unknown_previous_gives_every_level_reached(self) -> None:
        """With no "before" (max, latest, plan change) every level at or below usage counts."""
        assert levels(DEFAULT_BOOK, usage(95_000, None)) == [80, 90]
        assert levels(DEFAULT_BOOK, usage(100_000, None)) == [80, 90, 100]
        assert levels(DEFAULT_BOOK, usage(79_999, None)) == []

    def test_meter_without_a_limit_never_crosses(self) -> None:
        """Meters no plan limits (api calls, websites) have no thresholds at all."""
        for meter in ("api_calls", "websites_generated", "inference_tokens"):
            assert levels(DEFAULT_BOOK, usage(10**12, 0, meter=meter)) == [], meter
            assert levels(DEFAULT_BOOK, usage(10**12, None, meter=meter)) == [], meter

    def test_plan_missing_from_book_uses_default_plan_terms(self) -> None:
        """An account on a plan the book dropped is held to the default (FREE) plan's limit."""
        crossings = crossed_thresholds(DEFAULT_BOOK, [usage(100_000, 0, plan="LEGACY_2019")])
        assert [c.threshold for c in crossings] == [80, 90, 100]
        assert {c.limit for c in crossings} == {FREE_TOKENS}
        # on PRO the same usage is only 2% of the limit
        assert levels(DEFAULT_BOOK, usage(100_000, 0, plan="PRO")) == []

    def test_plan_thresholds_and_limits_are_the_plans_own(self) -> None:
        """BIG alerts at 50% and 100% of its own 10,000-token limit."""
        crossings = crossed_thresholds(FEATURES_BOOK, [usage(10_000, 0, plan="BIG")])
        assert [(c.threshold, c.limit) for c in crossings] == [(50, D(10_000)), (100, D(10_000))]

    def test_event_type_warning_below_100_exceeded_at_100(self) -> None:
        """Crossings below 100% are quota.warning; 100% is quota.exceeded."""
        crossings = crossed_thresholds(DEFAULT_BOOK, [usage(100_000, 0)])
        assert [(c.threshold, c.event_type) for c in crossings] == [
            (80, "quota.warning"),
            (90, "quota.warning"),
            (100, "quota.exceeded"),
        ]

    def test_soft_limit_still_crosses(self) -> None:
        """Soft-enforced meters fire threshold events too, and say they are soft: from 2 to
        3 seats of 3 passes 2.4 (80%), 2.7 (90%) and 3 (100%)."""
        crossings = crossed_thresholds(FEATURES_BOOK, [usage(3, 2, plan="BASIC", meter="seats")])
        assert [(c.threshold, c.enforcement) for c in crossings] == [
            (80, Enforcement.SOFT),
            (90, Enforcement.SOFT),
            (100, Enforcement.SOFT),
        ]
        assert levels(FEATURES_BOOK, usage(3, D("2.8"), plan="BASIC", meter="seats")) == [100]

    def test_results_sorted_across_usages(self) -> None:
        """Crossings of several usages come back sorted by account, meter, period, threshold."""
        crossings = crossed_thresholds(
            DEFAULT_BOOK,
            [
                usage(120_000, 0, account="acct_b"),
                usage(85_000, 0, account="acct_a", period=DEC),
                usage(95_000, 0, account="acct_a"),
            ],
        )
        assert [(c.account, c.period, c.threshold) for c in crossings] == [
            ("acct_a", NOV, 80),
            ("acct_a", NOV, 90),
            ("acct_a", DEC, 80),
            ("acct_b", NOV, 80),
            ("acct_b", NOV, 90),
            ("acct_b", NOV, 100),
        ]

    @given(
        target=st.sampled_from([(DEFAULT_BOOK, "FREE", 100_000), (FEATURES_BOOK, "BIG", 10_000)]),
        start_share=st.decimals(min_value=0, max_value=D("1.3"), places=3),
        step_shares=st.lists(st.decimals(min_value=0, max_value=D("0.6"), places=4), max_size=12),
    )
    def test_steps_cross_what_one_big_step_crosses(
        self,
        target: tuple[PriceBook, str, int],
        start_share: Decimal,
        step_shares: list[Decimal],
    ) -> None:
        """However an increase is split into steps, each level is crossed once, and the
        crossings together are those of a single step from the start to the end."""
        book, plan, limit = target
        start = start_share * limit
        used = start
        crossed: list[int] = []
        for share in step_shares:
            before, used = used, used + share * limit
            crossed += levels(book, usage(used, before, plan=plan))
        assert len(crossed) == len(set(crossed))
        assert sorted(crossed) == levels(book, usage(used, start, plan=plan))
        reached = [t for t in book.plans[plan].thresholds if start < D(limit) * t / 100 <= used]
        assert sorted(crossed) == reached


# --- quota check --------------------------------------------------------------------------------


class TestQuotaCheck:
    def test_hard_limit_allows_up_to_exactly_the_limit(self) -> None:
        """A hard limit allows usage that lands exactly on it, and refuses one unit more."""
        at_limit = answer_quota_check(DEFAULT_BOOK, "FREE", "tokens", D(99_000), D(1_000))
        assert at_limit.allowed is True
        assert at_limit.limit == FREE_TOKENS
        assert at_limit.remaining == D(1_000)
        assert at_limit.used == D(99_000)
        over = answer_quota_check(DEFAULT_BOOK, "FREE", "tokens", D(99_000), D(1_001))
        assert over.allowed is False
        assert over.remaining == D(1_000)

    def test_hard_limit_past_the_limit_refuses_even_nothing_more(self) -> None:
        """Once usage is past a hard limit, remaining is 0 (never negative) and checks refuse."""
        answer = answer_quota_check(DEFAULT_BOOK, "FREE", "tokens", D(150_000), D(0))
        assert answer.allowed is False
        assert answer.remaining == 0

    def test_soft_limit_always_allows(self) -> None:
        """A soft limit allows however far past it the request goes."""
        answer = answer_quota_check(FEATURES_BOOK, "BASIC", "seats", D(5), D(10))
        assert answer.allowed is True
        assert answer.limit == D(3)
        assert answer.remaining == 0

    def test_no_limit_means_allowed_without_numbers(self) -> None:
        """A meter the plan does not limit is always allowed; limit and remaining are None."""
        answer = answer_quota_check(DEFAULT_BOOK, "PRO", "api_calls", D(10**9), D(10**9))
        assert answer.allowed is True
        assert answer.limit is None
        assert answer.remaining is None
        assert answer.used == D(10**9)

    def test_unknown_plan_is_checked_against_the_default_plan(self) -> None:
        """A plan missing from the book is held to the default plan's hard limit."""
        answer = answer_quota_check(DEFAULT_BOOK, "LEGACY", "tokens", D(100_000), D(1))
        assert answer.allowed is False
        assert answer.limit == FREE_TOKENS

    @given(
        used=st.integers(min_value=0, max_value=10_000_000),
        quantity=st.integers(min_value=0, max_value=10_000_000),
        plan=st.sampled_from(["FREE", "PLUS", "PRO"]),
    )
    def test_hard_limit_rule(self, used: int, quantity: int, plan: str) -> None:
        """Allowed exactly when used + quantity <= limit; remaining = max(limit - used, 0)."""
        limits = {"FREE": 100_000, "PLUS": 1_000_000, "PRO": 5_000_000}
        answer = answer_quota_check(DEFAULT_BOOK, plan, "tokens", D(used), D(quantity))
        assert answer.allowed is (used + quantity <= limits[plan])
        assert answer.remaining == max(limits[plan] - used, 0)


# --- credits ------------------------------------------------------------------------------------


def grant(
    grant_id: int,
    remaining: int | Decimal,
    *,
    account: str = "acct_1",
    source: CreditSource = CreditSource.PURCHASE,
    priority: int = 20,
    created_at: datetime = T0 - timedelta(days=10),
    expires_at: datetime | None = None,
    period_start: datetime | None = None,
) -> GrantBalance:
    return GrantBalance(
        grant_id=grant_id,
        account=account,
        source=source,
        remaining=D(remaining),
        priority=priority,
        created_at=created_at,
        expires_at=expires_at,
        period_start=period_start,
    )


def charge(
    amount: int | Decimal,
    *,
    account: str = "acct_1",
    period: BillingPeriod = NOV,
    event_id: str = "e1",
) -> CreditCharge:
    return CreditCharge(
        account=account,
        meter="api_calls",
        credits=D(amount),
        period=period,
        source="api-gateway",
        event_id=event_id,
        occurred_at=period.start + timedelta(days=1),
    )


def burns(result: BurnResult) -> list[tuple[int | None, Decimal]]:
    return [(m.grant_id, m.credits) for m in result.movements if m.kind is MovementKind.BURN]


def shortfalls(result: BurnResult) -> list[Decimal]:
    return [m.credits for m in result.movements if m.kind is MovementKind.SHORTFALL]


class TestBurnCredits:
    def test_burn_order(self) -> None:
        """Lower priority first; then soonest expiry, never-expiring last; then oldest."""
        grants = [
            grant(5, 10, priority=20, expires_at=T0 + timedelta(hours=1)),  # priority loses
            grant(3, 10, priority=5, created_at=T0 - timedelta(days=90)),  # never expires
            grant(1, 10, priority=5, expires_at=T0 + timedelta(days=9)),  # newer of a tie
            grant(
                4,
                10,
                priority=5,
                expires_at=T0 + timedelta(days=9),
                created_at=T0 - timedelta(days=20),
            ),  # older of the tie
            grant(2, 10, priority=5, expires_at=T0 + timedelta(days=2)),  # soonest
        ]
        result = burn_credits(grants, [charge(45)], low_balance=D(0))
        assert burns(result) == [(2, D(10)), (4, D(10)), (1, D(10)), (3, D(10)), (5, D(5))]
        assert shortfalls(result) == []
        assert result.remaining == {2: 0, 4: 0, 1: 0, 3: 0, 5: D(5)}

    def test_one_movement_per_grant_touched(self) -> None:
        """A charge spanning two grants gives one movement each and leaves the third alone."""
        grants = [grant(1, 10, priority=1), grant(2, 10, priority=2), grant(3, 10, priority=3)]
        result = burn_credits(grants, [charge(15)], low_balance=D(0))
        assert burns(result) == [(1, D(10)), (2, D(5))]
        assert result.remaining == {1: 0, 2: D(5)}

    def test_plan_grant_pays_only_for_its_own_period(self) -> None:
        """November's plan grant pays November usage; December usage goes to purchased credits."""
        plan_grant = grant(
            1,
            100,
            source=CreditSource.PLAN,
            priority=10,
            period_start=NOV.start,
            expires_at=NOV.end,
        )
        bought = grant(2, 100, source=CreditSource.PURCHASE, priority=20)
        result = burn_credits(
            [plan_grant, bought],
            [charge(30, period=NOV, event_id="nov"), charge(40, period=DEC, event_id="dec")],
            low_balance=D(0),
        )
        assert [(m.charge.event_id, m.grant_id, m.credits) for m in result.movements] == [
            ("nov", 1, D(30)),
            ("dec", 2, D(40)),
        ]

    def test_plan_grant_alone_cannot_pay_another_period(self) -> None:
        """With only a plan grant of another period, the whole charge is a shortfall."""
        plan_grant = grant(1, 100, source=CreditSource.PLAN, period_start=DEC.start)
        result = burn_credits([plan_grant], [charge(30, period=NOV)], low_balance=D(0))
        assert burns(result) == []
        assert shortfalls(result) == [D(30)]
        assert result.remaining == {}

    def test_shortfall_when_grants_run_out(self) -> None:
        """What the grants cannot cover is recorded as a shortfall, not dropped."""
        result = burn_credits([grant(1, 10)], [charge(25)], low_balance=D(0))
        assert burns(result) == [(1, D(10))]
        assert shortfalls(result) == [D(15)]
        shortfall = next(m for m in result.movements if m.kind is MovementKind.SHORTFALL)
        assert shortfall.grant_id is None

    def test_no_grants_at_all_is_all_shortfall(self) -> None:
        """An account without credits records its whole charge as shortfall."""
        result = burn_credits([], [charge(7)], low_balance=D(50))
        assert shortfalls(result) == [D(7)]
        assert result.alerts == []  # the balance was already 0: nothing crossed

    def test_low_fires_once_when_crossing_the_low_balance(self) -> None:
        """credits.low fires for the charge that takes the balance below low_balance, once."""
        result = burn_credits(
            [grant(1, 100)],
            [charge(40, event_id="a"), charge(20, event_id="b"), charge(5, event_id="c")],
            low_balance=D(50),
        )
        assert [(a.kind, a.charge.event_id, a.balance, a.threshold) for a in result.alerts] == [
            (AlertKind.LOW, "b", D(40), D(50))
        ]

    def test_low_fires_when_leaving_exactly_low_balance(self) -> None:
        """A balance of exactly low_balance is not low yet; dropping below it fires."""
        result = burn_credits([grant(1, 50)], [charge(5)], low_balance=D(50))
        assert [(a.kind, a.balance) for a in result.alerts] == [(AlertKind.LOW, D(45))]

    def test_low_does_not_fire_when_already_below(self) -> None:
        """A balance already below low_balance does not fire credits.low again."""
        result = burn_credits([grant(1, 40)], [charge(5)], low_balance=D(50))
        assert result.alerts == []

    def test_landing_exactly_on_low_balance_does_not_fire(self) -> None:
        """Low means below the level: a balance of exactly low_balance is not low yet."""
        result = burn_credits([grant(1, 100)], [charge(50)], low_balance=D(50))
        assert result.alerts == []

    def test_exhausted_fires_when_reaching_zero(self) -> None:
        """credits.exhausted fires when the balance goes from above 0 to 0, not afterwards."""
        result = burn_credits(
            [grant(1, 30)],
            [charge(30, event_id="a"), charge(10, event_id="b")],
            low_balance=D(0),
        )
        assert [(a.kind, a.charge.event_id, a.balance, a.shortfall) for a in result.alerts] == [
            (AlertKind.EXHAUSTED, "a", D(0), D(0))
        ]
        assert shortfalls(result) == [D(10)]

    def test_exhausted_not_fired_when_already_zero(self) -> None:
        """A grant already at 0 does not make a later charge announce exhaustion."""
        result = burn_credits([grant(1, 0)], [charge(10)], low_balance=D(0))
        assert result.alerts == []
        assert shortfalls(result) == [D(10)]

    def test_low_and_exhausted_on_one_charge(self) -> None:
        """One charge from above low_balance to past zero fires both, with the shortfall."""
        result = burn_credits([grant(1, 60)], [charge(100)], low_balance=D(50))
        assert [(a.kind, a.balance, a.shortfall) for a in result.alerts] == [
            (AlertKind.LOW, D(0), D(40)),
            (AlertKind.EXHAUSTED, D(0), D(40)),
        ]

    def test_balances_are_per_account(self) -> None:
        """One account's charges never burn another account's grants."""
        result = burn_credits(
            [grant(1, 100, account="acct_a"), grant(2, 100, account="acct_b")],
            [charge(30, account="acct_b")],
            low_balance=D(0),
        )
        assert burns(result) == [(2, D(30))]

    def test_remaining_lists_only_changed_grants(self) -> None:
        """Grants the charges did not touch are not in ``remaining``."""
        grants = [grant(1, 10, priority=1), grant(2, 10, priority=2), grant(3, 0, priority=0)]
        result = burn_credits(grants, [charge(5)], low_balance=D(0))
        assert result.remaining == {1: D(5)}


START = datetime(2026, 11, 1, tzinfo=UTC)
GrantRow = tuple[str, CreditSource, Decimal, int, datetime, datetime | None, BillingPeriod]
moments = st.sampled_from([None, *(START + timedelta(days=d) for d in (0, 3, 3, 40))])
grant_rows = st.lists(
    st.tuples(
        st.sampled_from(["acct_a", "acct_b"]),
        st.sampled_from(list(CreditSource)),
        st.decimals(min_value=0, max_value=200, places=2),
        st.integers(min_value=0, max_value=3),
        st.sampled_from([START + timedelta(days=d) for d in (0, 1, 1, 2)]),
        moments,
        st.sampled_from([NOV, DEC]),
    ),
    max_size=8,
)
charge_rows = st.lists(
    st.tuples(
        st.sampled_from(["acct_a", "acct_b"]),
        st.decimals(min_value=D("0.01"), max_value=150, places=2),
        st.sampled_from([NOV, DEC]),
    ),
    max_size=10,
)


def make_grants(
    rows: list[GrantRow],
) -> list[GrantBalance]:
    return [
        grant(
            i + 1,
            remaining,
            account=account,
            source=source,
            priority=priority,
            created_at=created,
            expires_at=expires,
            period_start=period.start if source is CreditSource.PLAN else None,
        )
        for i, (account, source, remaining, priority, created, expires, period) in enumerate(rows)
    ]


def make_charges(rows: list[tuple[str, Decimal, BillingPeriod]]) -> list[CreditCharge]:
    return [
        charge(amount, account=account, period=period, event_id=f"e{i}")
        for i, (account, amount, period) in enumerate(rows)
    ]


class TestBurnProperties:
    @given(grant_rows, charge_rows, st.decimals(min_value=0, max_value=100, places=0))
    def test_credits_are_conserved(
        self,
        g_rows: list[GrantRow],
        c_rows: list[tuple[str, Decimal, BillingPeriod]],
        low: Decimal,
    ) -> None:
        """Every charge is paid exactly by burns plus shortfall; no grant goes negative or
        pays more than it had, and only its own account's usable charges."""
        grants, charges = make_grants(g_rows), make_charges(c_rows)
        by_id = {g.grant_id: g for g in grants}
        result = burn_credits(grants, charges, low_balance=low)
        paid: Counter[str] = Counter()
        taken: Counter[int] = Counter()
        for movement in result.movements:
            assert movement.credits > 0
            paid[movement.charge.event_id] += movement.credits
            if movement.kind is MovementKind.BURN:
                assert movement.grant_id is not None
                source = by_id[movement.grant_id]
                assert source.account == movement.charge.account
                assert source.pays_for(movement.charge.period)
                taken[movement.grant_id] += movement.credits
        assert sum(paid.values(), D(0)) == sum((c.credits for c in charges), D(0))
        assert all(paid[c.event_id] == c.credits for c in charges)
        for grant_id, original in by_id.items():
            after = result.remaining.get(grant_id, original.remaining)
            assert after >= 0
            assert taken[grant_id] <= original.remaining
            assert after == original.remaining - taken[grant_id]

    @given(grant_rows, charge_rows, st.randoms(use_true_random=False))
    def test_grant_order_does_not_matter(
        self,
        g_rows: list[GrantRow],
        c_rows: list[tuple[str, Decimal, BillingPeriod]],
        rnd: random.Random,
    ) -> None:
        """Passing the same grants in another order burns exactly the same way."""
        grants, charges = make_grants(g_rows), make_charges(c_rows)
        shuffled = grants[:]
        rnd.shuffle(shuffled)
        first = burn_credits(grants, charges, low_balance=D(50))
        second = burn_credits(shuffled, charges, low_balance=D(50))
        assert first.movements == second.movements
        assert first.remaining == second.remaining
        assert first.alerts == second.alerts


# --- aggregate deltas -------------------------------------------------------------------------


def rec(
    event_id: str,
    event_type: str,
    *,
    quantity: int | str = 1,
    at: datetime = T0,
    account: str = "acct_1",
    **dimensions: str | int,
) -> UsageRecord:
    return UsageRecord(
        source="svc",
        event_id=event_id,
        event_type=event_type,
        account=account,
        occurred_at=at,
        quantity=D(quantity),
        dimensions=dimensions,
    )


def deltas_for(meter: str, *records: UsageRecord) -> list[AggregateDelta]:
    entries = ledger_entries_for(records, FEATURES_BOOK)
    return [d for d in aggregate_deltas(entries) if d.meter == meter]


class TestAggregateDeltas:
    def test_count_counts_events(self) -> None:
        """A count meter adds one per event whatever its quantity; the sum meter adds them."""
        records = [
            rec("a", "chat.tokens", quantity=500),
            rec("b", "chat.tokens", quantity=7),
            rec("c", "chat.tokens", quantity=0),
        ]
        (requests,) = deltas_for("requests", *records)
        assert requests.aggregation is Aggregation.COUNT
        assert (requests.quantity, requests.event_count) == (D(3), 3)
        (tokens,) = deltas_for("tokens", *records)
        assert (tokens.quantity, tokens.event_count) == (D(507), 3)

    def test_max_keeps_the_largest(self) -> None:
        """A max meter's delta is the largest value of the batch, not the sum or the last."""
        records = [
            rec("a", "storage.gb_month", quantity="5.5"),
            rec("b", "storage.gb_month", quantity="12.25"),
            rec("c", "storage.gb_month", quantity="7"),
        ]
        (peak,) = deltas_for("peak_storage", *records)
        assert peak.aggregation is Aggregation.MAX
        assert (peak.quantity, peak.event_count) == (D("12.25"), 3)

    def test_latest_keeps_the_value_with_the_latest_time(self) -> None:
        """A latest meter keeps the value of the newest event, whatever the batch order."""
        records = [
            rec("a", "level.reported", quantity=2, at=T0 + timedelta(minutes=5)),
            rec("b", "level.reported", quantity=9, at=T0 + timedelta(minutes=30)),
            rec("c", "level.reported", quantity=4, at=T0),
        ]
        (level,) = deltas_for("plan_level", *records)
        assert level.aggregation is Aggregation.LATEST
        assert (level.quantity, level.latest_at) == (D(9), T0 + timedelta(minutes=30))

    def test_latest_tie_goes_to_the_later_event_in_the_batch(self) -> None:
        """Two events at the same time: the one later in the batch wins."""
        records = [
            rec("a", "level.reported", quantity=3),
            rec("b", "level.reported", quantity=8),
            rec("c", "level.reported", quantity=1, at=T0 - timedelta(seconds=1)),
        ]
        (level,) = deltas_for("plan_level", *records)
        assert (level.quantity, level.latest_at) == (D(8), T0)
        (reversed_level,) = deltas_for("plan_level", records[1], records[0], records[2])
        assert reversed_level.quantity == D(3)

    def test_unique_count_lists_sorted_distinct_json_values(self) -> None:
        """unique_count lists each distinct value once, JSON-encoded: 1 and "1" differ."""
        records = [
            rec("a", "seat.active", user_id="u1"),
            rec("b", "seat.active", user_id=1),
            rec("c", "seat.active", user_id="1"),
            rec("d", "seat.active", user_id="u1"),
            rec("e", "seat.active"),  # no user_id: feeds nothing
        ]
        (seats,) = deltas_for("seats", *records)
        assert seats.aggregation is Aggregation.UNIQUE_COUNT
        assert seats.unique_values == ('"1"', '"u1"', "1")
        assert seats.event_count == 4
        assert seats.quantity == 0  # the store counts the values it has not seen

    def test_groups_by_account_and_period(self) -> None:
        """Each (account, meter, period) gets its own delta, in that sorted order."""
        records = [
            rec("a", "storage.gb_month", quantity=4, account="acct_b"),
            rec("b", "storage.gb_month", quantity=9, at=datetime(2026, 12, 2, tzinfo=UTC)),
            rec("c", "storage.gb_month", quantity=6),
        ]
        peaks = deltas_for("peak_storage", *records)
        assert [(d.account, d.period, d.quantity) for d in peaks] == [
            ("acct_1", NOV, D(6)),
            ("acct_1", DEC, D(9)),
            ("acct_b", NOV, D(4)),
        ]


# --- credit charges ---------------------------------------------------------------------------


class TestCreditCharges:
    def test_quantity_times_credit_cost(self) -> None:
        """Each entry on a credit-priced meter costs quantity x the meter's credit cost."""
        records = [
            rec("a", "api.call", quantity=3),
            rec("b", "ai.inference", quantity=1, tokens=7, model="gpt-4"),
        ]
        charges = credit_charges(ledger_entries_for(records, FEATURES_BOOK), FEATURES_BOOK)
        assert sorted((c.event_id, c.meter, c.credits) for c in charges) == [
            ("a", "api_calls", D(30)),  # 3 calls x 10
            ("b", "inference_tokens", D("3.5")),  # 7 tokens x 0.5
        ]
        assert all(c.period == NOV and c.account == "acct_1" for c in charges)

    def test_meters_without_a_credit_cost_are_skipped(self) -> None:
        """Meters the book gives no credit cost (tokens, requests) produce no charge."""
        records = [rec("a", "chat.tokens", quantity=100, model="gpt-4")]
        entries = ledger_entries_for(records, FEATURES_BOOK)
        assert {e.meter for e in entries} == {"tokens", "gpt4_tokens", "requests"}
        assert credit_charges(entries, FEATURES_BOOK) == []

    def test_default_book_inference_costs_25_per_call(self) -> None:
        """In the built-in book an inference call burns 25 credits; its tokens burn none."""
        records = [rec("a", "ai.inference", quantity=2, tokens=5000, model="gpt-4")]
        charges = credit_charges(ledger_entries_for(records, DEFAULT_BOOK), DEFAULT_BOOK)
        assert [(c.meter, c.credits) for c in charges] == [("inference_calls", D(50))]


@pytest.mark.parametrize(
    ("event_type", "meter", "per_unit"),
    [
        ("api.call", "api_calls", 1),
        ("api.call_premium", "premium_api_calls", 5),
        ("storage.gb_month", "storage_gb_months", 10),
    ],
)
def test_default_book_credit_charge_per_meter(event_type: str, meter: str, per_unit: int) -> None:
    """Built-in credit costs turn 4 units into 4 x the meter's cost."""
    charges = credit_charges(
        ledger_entries_for([rec("a", event_type, quantity=4)], DEFAULT_BOOK), DEFAULT_BOOK
    )
    assert [(c.meter, c.credits) for c in charges] == [(meter, D(4 * per_unit))]

"""Billing-period arithmetic: calendar months, subscription cycles, and the move from one to
the other without any recorded usage changing period."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from billing_worker.domain.periods import (
    CALENDAR,
    BillingPeriod,
    Cycle,
    CycleChange,
    PeriodCalendar,
    add_months,
    calendar_month_of,
    cycle_of_subscription,
)


def at(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


class TestAddMonths:
    def test_clamps_to_the_last_day_and_keeps_the_anchor_day(self) -> None:
        """A day-31 anchor gives Feb 28 (29 in leap years), then the 31st again in March."""
        anchor = at(2027, 1, 31, 10, 30)
        assert add_months(anchor, 1) == at(2027, 2, 28, 10, 30)
        assert add_months(anchor, 2) == at(2027, 3, 31, 10, 30)
        assert add_months(at(2028, 1, 31), 1) == at(2028, 2, 29)
        assert add_months(anchor, -2) == at(2026, 11, 30, 10, 30)
        assert add_months(anchor, 12) == at(2028, 1, 31, 10, 30)


class TestCycleOfSubscription:
    def test_monthly_period_anchored_on_its_start(self) -> None:
        """A Nov 15 10:00 → Dec 15 10:00 period is a one-month cycle with those boundaries."""
        cycle = cycle_of_subscription(at(2026, 11, 15, 10), at(2026, 12, 15, 10))
        assert cycle is not None
        assert cycle.months == 1
        assert cycle.period_of(at(2027, 3, 1)) == BillingPeriod(
            at(2027, 2, 15, 10), at(2027, 3, 15, 10)
        )

    def test_billing_cycle_anchor_keeps_day_31(self) -> None:
        """Feb 28 → Mar 31 with a Jan 31 anchor: April's period ends on the 30th, May's on the
        31st, as Stripe bills; without the anchor the period's end (Mar 31) serves."""
        with_anchor = cycle_of_subscription(at(2027, 2, 28), at(2027, 3, 31), at(2027, 1, 31))
        assert with_anchor is not None
        assert with_anchor.period_of(at(2027, 5, 10)) == BillingPeriod(
            at(2027, 4, 30), at(2027, 5, 31)
        )
        without = cycle_of_subscription(at(2027, 2, 28), at(2027, 3, 31))
        assert without is not None
        assert without.period_of(at(2027, 3, 5)) == BillingPeriod(at(2027, 2, 28), at(2027, 3, 31))

    def test_yearly_and_quarterly(self) -> None:
        """Twelve- and three-month periods become cycles of that many months."""
        yearly = cycle_of_subscription(at(2026, 11, 15), at(2027, 11, 15))
        quarterly = cycle_of_subscription(at(2026, 11, 15), at(2027, 2, 15))
        assert yearly is not None
        assert yearly.months == 12
        assert quarterly is not None
        assert quarterly.months == 3

    def test_weekly_is_not_a_cycle(self) -> None:
        """Periods of days or weeks are not whole months: None (the account keeps its own)."""
        assert cycle_of_subscription(at(2026, 11, 15), at(2026, 11, 22)) is None
        assert cycle_of_subscription(at(2026, 11, 15), at(2026, 12, 14)) is None

    def test_calendar_cycle_is_calendar_months(self) -> None:
        """A cycle anchored at a month start is the calendar (same boundaries)."""
        assert Cycle(at(2026, 12, 1), 1).same_as(CALENDAR)
        assert not Cycle(at(2026, 12, 1, 0, 0, 1), 1).same_as(CALENDAR)
        assert CALENDAR.period_of(at(2026, 11, 21)) == calendar_month_of(at(2026, 11, 21))


# hypothesis takes naive bounds; the drawn moments are made UTC
NAIVE_2023 = datetime(2023, 6, 1)  # noqa: DTZ001
NAIVE_2024 = datetime(2024, 1, 1)  # noqa: DTZ001
NAIVE_2030 = datetime(2030, 1, 1)  # noqa: DTZ001
NAIVE_2032 = datetime(2032, 1, 1)  # noqa: DTZ001
NOV_15_CYCLE = Cycle(at(2026, 11, 15, 10), 1)


class TestPeriodCalendar:
    def test_switch_takes_effect_at_the_next_boundary_with_a_stub(self) -> None:
        """Told on Nov 21 of a Nov 15 cycle: November stays whole, Dec 1 → Dec 15 10:00 is a
        stub prorated against Nov 15 → Dec 15, then the subscription's periods."""
        change = PeriodCalendar().switch_to(NOV_15_CYCLE, at(2026, 11, 21, 13))
        assert change == CycleChange(at(2026, 12, 1), NOV_15_CYCLE)
        calendar = PeriodCalendar().with_change(change)
        periods = calendar.periods_between(at(2026, 11, 3), at(2027, 2, 1))
        assert periods == [
            BillingPeriod(at(2026, 11, 1), at(2026, 12, 1)),
            BillingPeriod(at(2026, 12, 1), at(2026, 12, 15, 10)),
            BillingPeriod(at(2026, 12, 15, 10), at(2027, 1, 15, 10)),
        ]
        assert calendar.cycle_period(periods[1]) == (
            BillingPeriod(at(2026, 11, 15, 10), at(2026, 12, 15, 10)),
            1,
        )
        assert calendar.cycle_period(periods[0]) == (periods[0], 1)

    def test_switch_at_a_boundary_moment_takes_effect_there(self) -> None:
        """``not_before`` on a boundary is that boundary, not the next one."""
        change = PeriodCalendar().switch_to(NOV_15_CYCLE, at(2026, 12, 1))
        assert change is not None
        assert change.effective_from == at(2026, 12, 1)

    def test_no_change_when_already_on_that_cycle(self) -> None:
        """A renewal (next period of the same cycle) or a repeat changes nothing."""
        calendar = PeriodCalendar((CycleChange(at(2026, 12, 1), NOV_15_CYCLE),))
        renewal = cycle_of_subscription(at(2026, 12, 15, 10), at(2027, 1, 15, 10))
        assert renewal is not None
        assert calendar.switch_to(renewal, at(2026, 12, 20)) is None
        assert PeriodCalendar().switch_to(Cycle(at(2027, 1, 1), 1), at(2026, 11, 1)) is None

    def test_a_new_anchor_changes_again_at_a_boundary_of_the_present_periods(self) -> None:
        """From the Nov 15 cycle to a Jan 3 one: effective at the end of the period then in
        progress (Jan 15 10:00), a stub to Feb 3 follows."""
        calendar = PeriodCalendar((CycleChange(at(2026, 12, 1), NOV_15_CYCLE),))
        jan_3 = Cycle(at(2027, 1, 3), 1)
        change = calendar.switch_to(jan_3, at(2027, 1, 4))
        assert change == CycleChange(at(2027, 1, 15, 10), jan_3)
        later = calendar.with_change(change)
        assert later.period_of(at(2027, 1, 20)) == BillingPeriod(
            at(2027, 1, 15, 10), at(2027, 2, 3)
        )
        assert later.period_of(at(2027, 1, 10)) == BillingPeriod(
            at(2026, 12, 15, 10), at(2027, 1, 15, 10)
        )

    def test_with_change_replaces_one_at_the_same_moment(self) -> None:
        """A pending change replaced before it takes effect leaves one change."""
        first = CycleChange(at(2026, 12, 1), NOV_15_CYCLE)
        second = CycleChange(at(2026, 12, 1), Cycle(at(2026, 11, 20), 1))
        assert PeriodCalendar((first,)).with_change(second).changes == (second,)

    def test_changes_must_be_in_order(self) -> None:
        """A calendar built out of order is refused."""
        with pytest.raises(ValueError, match="in order"):
            PeriodCalendar(
                (CycleChange(at(2027, 1, 1), NOV_15_CYCLE), CycleChange(at(2026, 12, 1), CALENDAR))
            )

    @settings(max_examples=200, deadline=None)
    @given(
        anchors=st.lists(
            st.tuples(
                st.datetimes(min_value=NAIVE_2024, max_value=NAIVE_2030),
                st.sampled_from([1, 1, 3, 12]),
                st.integers(min_value=0, max_value=400),
            ),
            max_size=3,
        ),
        moment=st.datetimes(min_value=NAIVE_2023, max_value=NAIVE_2032),
    )
    def test_periods_tile_time_and_never_move(
        self, anchors: list[tuple[datetime, int, int]], moment: datetime
    ) -> None:
        """Built by successive switches, a calendar's periods contain their moment, follow
        each other without gap or overlap, and every period that ended before a switch's
        ``not_before`` is the same after the switch."""
        calendar = PeriodCalendar()
        not_before = datetime(2024, 1, 1, tzinfo=UTC)
        for anchor, months, days_later in anchors:
            not_before += timedelta(days=days_later)
            before = calendar.periods_between(datetime(2023, 6, 1, tzinfo=UTC), not_before)
            change = calendar.switch_to(Cycle(anchor.replace(tzinfo=UTC), months), not_before)
            if change is None:
                continue
            assert change.effective_from >= not_before
            calendar = calendar.with_change(change)
            assert calendar.periods_between(datetime(2023, 6, 1, tzinfo=UTC), not_before) == before
        utc = moment.replace(tzinfo=UTC)
        period = calendar.period_of(utc)
        assert period.contains(utc)
        following = calendar.period_of(period.end)
        assert following.start == period.end
        whole, months = calendar.cycle_period(period)
        assert whole.start <= period.start
        assert period.end <= whole.end
        assert months >= 1

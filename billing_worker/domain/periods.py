"""Billing-period arithmetic: which period a moment of usage belongs to."""

from __future__ import annotations

import calendar
from dataclasses import dataclass, field
from datetime import UTC, datetime


@dataclass(frozen=True, slots=True, order=True)
class BillingPeriod:
    """A half-open interval ``[start, end)`` of UTC time."""

    start: datetime
    end: datetime

    def __post_init__(self) -> None:
        if self.start.tzinfo is None or self.end.tzinfo is None:
            raise ValueError("billing period bounds must be timezone-aware")
        if not self.start < self.end:
            raise ValueError(f"billing period must end after it starts: {self.start} .. {self.end}")

    def contains(self, moment: datetime) -> bool:
        """Whether ``moment`` falls inside the period."""
        return self.start <= moment < self.end


def calendar_month_of(moment: datetime) -> BillingPeriod:
    """The UTC calendar month containing ``moment`` (the default billing period)."""
    if moment.tzinfo is None:
        raise ValueError("usage time must be timezone-aware")
    utc = moment.astimezone(UTC)
    start = datetime(utc.year, utc.month, 1, tzinfo=UTC)
    end = (
        datetime(utc.year + 1, 1, 1, tzinfo=UTC)
        if utc.month == 12
        else datetime(utc.year, utc.month + 1, 1, tzinfo=UTC)
    )
    return BillingPeriod(start, end)


# --- subscription-aligned periods ---------------------------------------------------------

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def add_months(anchor: datetime, months: int) -> datetime:
    """``anchor`` moved by ``months`` calendar months, the day clamped to the month's last.

    Always computed from the anchor, never step by step, so an anchor on the 31st gives
    the 28th/29th in February and the 31st again in March (as Stripe's cycles do).
    """
    utc = anchor.astimezone(UTC)
    index = utc.year * 12 + (utc.month - 1) + months
    year, month = divmod(index, 12)
    month += 1
    last_day = calendar.monthrange(year, month)[1]
    return utc.replace(year=year, month=month, day=min(utc.day, last_day))


@dataclass(frozen=True, slots=True)
class Cycle:
    """Periods of ``months`` months whose boundaries are ``anchor`` moved by whole cycles."""

    anchor: datetime
    months: int = 1

    def __post_init__(self) -> None:
        if self.anchor.tzinfo is None:
            raise ValueError("a cycle anchor must be timezone-aware")
        if self.months < 1:
            raise ValueError(f"a cycle is at least one month long, not {self.months}")

    def boundary(self, k: int) -> datetime:
        """The ``k``-th boundary (0 is the anchor; negative ones are before it)."""
        return add_months(self.anchor, k * self.months)

    def _index(self, moment: datetime) -> int:
        """``k`` with ``boundary(k) <= moment < boundary(k + 1)``."""
        utc = moment.astimezone(UTC)
        anchor = self.anchor.astimezone(UTC)
        elapsed = (utc.year - anchor.year) * 12 + (utc.month - anchor.month)
        k = elapsed // self.months
        while self.boundary(k) > moment:
            k -= 1
        while self.boundary(k + 1) <= moment:
            k += 1
        return k

    def period_of(self, moment: datetime) -> BillingPeriod:
        """The whole cycle containing ``moment``."""
        if self.months == 1 and self.anchor == _EPOCH:
            return calendar_month_of(moment)
        k = self._index(moment)
        return BillingPeriod(self.boundary(k), self.boundary(k + 1))

    def is_boundary(self, moment: datetime) -> bool:
        """Whether a period of this cycle starts at ``moment``."""
        return self.period_of(moment).start == moment

    def same_as(self, other: Cycle) -> bool:
        """Whether both cycles have the same boundaries."""
        return self.months == other.months and self.is_boundary(other.anchor)

    @property
    def text(self) -> str:
        """How the cycle reads in reports: ``calendar months`` or ``1 month from …``."""
        if self.same_as(CALENDAR):
            return "calendar months"
        unit = "month" if self.months == 1 else f"{self.months} months"
        return f"every {unit} from {self.anchor.astimezone(UTC).isoformat()}"


CALENDAR = Cycle(_EPOCH, 1)
"""The default: UTC calendar months."""


def cycle_of_subscription(
    start: datetime, end: datetime, anchor: datetime | None = None
) -> Cycle | None:
    """The cycle whose consecutive boundaries are a subscription's current period.

    Tried anchors: Stripe's ``billing_cycle_anchor`` (which keeps a day-31 anchor on the
    31st after February), then the period's start, then its end. None when no whole
    number of months separates ``start`` and ``end`` (a weekly or daily subscription):
    such an account stays on the periods it has.
    """
    months = (end.year - start.year) * 12 + (end.month - start.month)
    if months < 1:
        return None
    for candidate in (anchor, start, end):
        if candidate is None:
            continue
        cycle = Cycle(candidate.astimezone(UTC), months)
        period = cycle.period_of(start)
        if period.start == start and period.end == end:
            return cycle
    return None


@dataclass(frozen=True, slots=True, order=True)
class CycleChange:
    """From ``effective_from`` on, an account's periods follow ``cycle``."""

    effective_from: datetime
    cycle: Cycle = field(compare=False)


@dataclass(frozen=True, slots=True)
class PeriodCalendar:
    """An account's billing periods: calendar months, then each cycle from its change on.

    A change always takes effect at a boundary of the periods before it, so periods never
    overlap and a period that holds usage never moves. The first period after a change is
    a stub up to the new cycle's next boundary when the two don't line up; its plan fee
    and allowances are prorated against the whole cycle it belongs to (``cycle_period``).
    """

    changes: tuple[CycleChange, ...] = ()

    def __post_init__(self) -> None:
        if list(self.changes) != sorted(self.changes):
            raise ValueError("cycle changes must be in order of effect")

    def _segment(self, moment: datetime) -> tuple[Cycle, datetime | None, datetime | None]:
        cycle, since, until = CALENDAR, None, None
        for change in self.changes:
            if change.effective_from <= moment:
                cycle, since = change.cycle, change.effective_from
            else:
                until = change.effective_from
                break
        return cycle, since, until

    def cycle_at(self, moment: datetime) -> Cycle:
        """The cycle periods follow at ``moment``."""
        return self._segment(moment)[0]

    @property
    def latest_cycle(self) -> Cycle:
        """The cycle in force once every change has taken effect."""
        return self.changes[-1].cycle if self.changes else CALENDAR

    def period_of(self, moment: datetime) -> BillingPeriod:
        """The account's billing period containing ``moment``."""
        if not self.changes:
            return calendar_month_of(moment)
        cycle, since, until = self._segment(moment)
        whole = cycle.period_of(moment)
        start = whole.start if since is None else max(whole.start, since)
        end = whole.end if until is None else min(whole.end, until)
        return BillingPeriod(start, end)

    def cycle_period(self, period: BillingPeriod) -> tuple[BillingPeriod, int]:
        """The whole cycle ``period`` is part of (itself unless a stub), and its months."""
        cycle = self.cycle_at(period.start)
        return cycle.period_of(period.start), cycle.months

    def periods_between(self, first: datetime, last_end: datetime) -> list[BillingPeriod]:
        """The periods from the one containing ``first`` through those ending by ``last_end``."""
        periods = []
        period = self.period_of(first)
        while period.end <= last_end:
            periods.append(period)
            period = self.period_of(period.end)
        return periods

    def switch_to(self, cycle: Cycle, not_before: datetime) -> CycleChange | None:
        """The change that moves the account onto ``cycle``: at the first boundary of its
        present periods at or after ``not_before``. None if it follows ``cycle`` already."""
        if self.latest_cycle.same_as(cycle):
            return None
        period = self.period_of(not_before)
        effective = period.start if period.start == not_before else period.end
        return CycleChange(effective, cycle)

    def with_change(self, change: CycleChange) -> PeriodCalendar:
        """This calendar with ``change`` added (replacing one at the same moment)."""
        kept = [c for c in self.changes if c.effective_from != change.effective_from]
        return PeriodCalendar(tuple(sorted([*kept, change])))


DEFAULT_CALENDAR = PeriodCalendar()

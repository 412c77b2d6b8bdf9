"""Billing-period arithmetic: which period a moment of usage belongs to."""

from __future__ import annotations

from dataclasses import dataclass
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

"""The worker's one clock: the system's UTC time, shifted by BILLING_CLOCK_OFFSET_SECONDS.

Everything that asks "what time is it" (deciding a period, ageing an event, closing what is
due, stamping a ledger row) asks this clock, handed down from the composition root. The
offset exists so the whole system — the test suite and every worker process it starts —
can be run as if it were another day; production leaves it at 0.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

OFFSET_VARIABLE = "BILLING_CLOCK_OFFSET_SECONDS"


@dataclass(frozen=True, slots=True)
class SystemClock:
    """The system clock in UTC, plus a fixed ``offset``. Calling it reads the time."""

    offset: timedelta = timedelta(0)

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset

    @classmethod
    def shifted_by(cls, seconds: float) -> SystemClock:
        """A clock ``seconds`` ahead of the system's (behind, when negative)."""
        return cls(timedelta(seconds=seconds))

    @classmethod
    def from_environment(cls) -> SystemClock:
        """The clock BILLING_CLOCK_OFFSET_SECONDS sets, for the tools that run beside the
        worker (bench, chaos) and start it as a child: their events and their worker agree
        on the time. The worker itself reads the variable through its settings."""
        return cls.shifted_by(float(os.environ.get(OFFSET_VARIABLE) or 0))

"""The metrics identity across worker processes, and what their counters can vouch for.

``received = recorded + duplicate + rejected`` is a
per-process statement. A process counts a batch after settling it; a scrape may catch the
receipts a moment before the outcomes, never the reverse, so every scrape must show
``received >= recorded + duplicate + rejected`` and a scrape at rest must show equality.
Counters die with their process: a SIGKILL loses what was counted since the last scrape
and the batch in flight (its commit is counted again, as duplicates, by the next
incarnation); a commit whose acknowledgement was lost with a database connection is
retried and counted as duplicates. So sums over incarnations are exact only when nothing
was redelivered (``Counting.EXACT``), bounded when every incarnation survived
(``Counting.COMPLETE``), and only bound ``recorded`` from above otherwise
(``Counting.PARTIAL``). The exact cross-incarnation identity is the ledger-side one: every
published delivery is a recorded event (its key in the ledger), a resend of one, or an
invalid event (in the dead-letter queue) — checked from the ledger and the DLQ themselves.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field

from billing_worker.chaos.verdict import Check
from billing_worker.chaos.workload import Workload


@dataclass(frozen=True, slots=True)
class QueueCounts:
    """The usage queue's counters in one scrape of one worker process."""

    received: int
    recorded: int
    duplicate: int
    rejected: int

    @property
    def outcomes(self) -> int:
        """recorded + duplicate + rejected."""
        return self.recorded + self.duplicate + self.rejected


@dataclass(slots=True)
class Incarnation:
    """One worker process's scrapes; ``at_rest`` when its last one was taken idle."""

    name: str
    scrapes: list[QueueCounts] = field(default_factory=list)
    at_rest: bool = False
    ended: str = "running"

    @property
    def last(self) -> QueueCounts:
        """The last scrape (all zeros if it was never scraped)."""
        return self.scrapes[-1] if self.scrapes else QueueCounts(0, 0, 0, 0)


class Counting(enum.Enum):
    """How far the counters of all incarnations together can be trusted (module docstring)."""

    EXACT = "exact"
    COMPLETE = "complete"
    PARTIAL = "partial"


def metrics_identity(
    workload: Workload, incarnations: Sequence[Incarnation], counting: Counting
) -> Check:
    """received = recorded + duplicate + rejected, as far as the counters can say (module
    docstring); the ledger-side identity is ``ledger_exactly_once`` with
    ``rejections_dead_lettered``."""
    problems = []
    for inc in incarnations:
        if any(s.received < s.outcomes for s in inc.scrapes):
            problems.append(f"{inc.name}: outcomes counted without their receipt")
        if inc.at_rest and inc.last.received != inc.last.outcomes:
            problems.append(f"{inc.name}: at rest, received != recorded + duplicate + rejected")
    total = QueueCounts(
        sum(i.last.received for i in incarnations),
        sum(i.last.recorded for i in incarnations),
        sum(i.last.duplicate for i in incarnations),
        sum(i.last.rejected for i in incarnations),
    )
    published = len(workload.deliveries)
    distinct, resends, bad = len(workload.events), workload.resends, workload.bad_deliveries
    if total.recorded > distinct:
        problems.append("more events counted as recorded than were published")
    if counting is Counting.EXACT and total != QueueCounts(published, distinct, resends, bad):
        problems.append(f"expected exactly {published} = {distinct} + {resends} + {bad}")
    if counting is Counting.COMPLETE and not (
        total.received == total.outcomes
        and total.received >= published
        and total.recorded + total.duplicate >= distinct + resends
        and total.rejected >= bad
    ):
        problems.append("with every incarnation counted, some deliveries were not")
    return Check(
        "metrics_identity",
        not problems,
        f"{len(incarnations)} incarnations ({counting.value} counting): received "
        f"{total.received} = recorded {total.recorded} + duplicate {total.duplicate} + "
        f"rejected {total.rejected}" + ("" if not problems else "; " + "; ".join(problems)),
    )

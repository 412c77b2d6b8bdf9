"""Record a batch of usage events in one transaction, each with exactly-once effect."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from billing_worker.domain.meters import MeterCatalog
from billing_worker.domain.usage import (
    UsageOutcome,
    UsageRecord,
    aggregate_deltas,
    classify,
    first_occurrences,
    ledger_entries_for,
)
from billing_worker.service.ports import UnitOfWorkFactory


@dataclass(frozen=True, slots=True)
class UsageBatchResult:
    """The outcome of each record, aligned with the batch."""

    outcomes: list[UsageOutcome]
    ledger_rows: int

    def count(self, outcome: UsageOutcome) -> int:
        """How many records ended as ``outcome``."""
        return sum(1 for o in self.outcomes if o is outcome)


async def record_usage_batch(
    uow_factory: UnitOfWorkFactory,
    catalog: MeterCatalog,
    records: Sequence[UsageRecord],
) -> UsageBatchResult:
    """Claim keys, append ledger rows for new events, update aggregates, commit.

    Keys are claimed and aggregates updated in sorted order so that concurrent
    replicas lock rows in the same order and cannot deadlock each other. Nothing
    is visible to anyone until the commit; the caller acks only after this returns.
    """
    firsts = sorted(first_occurrences(records), key=lambda r: r.key)
    async with uow_factory() as uow:
        claimed = await uow.usage.claim_keys(firsts)
        unclaimed = [r.key for r in firsts if r.key not in claimed]
        stored = await uow.usage.stored_fingerprints(unclaimed) if unclaimed else {}
        new = [r for r in firsts if r.key in claimed]
        entries = ledger_entries_for(new, catalog)
        if new:
            await uow.usage.ensure_accounts(sorted({r.account for r in new}), catalog.default_plan)
            await uow.usage.append_usage(entries, aggregate_deltas(entries))
        await uow.commit()
    outcomes = classify(records, claimed=claimed, stored_fingerprints=stored)
    return UsageBatchResult(outcomes=outcomes, ledger_rows=len(entries))

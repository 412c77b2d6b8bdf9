"""Record a batch of usage events in one transaction, each with exactly-once effect."""

from __future__ import annotations

from collections.abc import Sequence

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


async def record_usage_batch(
    uow_factory: UnitOfWorkFactory,
    catalog: MeterCatalog,
    records: Sequence[UsageRecord],
) -> list[UsageOutcome]:
    """Claim keys, append ledger rows for new events, update aggregates, commit.

    Returns each record's outcome, aligned with ``records``.

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
    return classify(records, claimed=claimed, stored_fingerprints=stored)

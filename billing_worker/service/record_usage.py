"""Record a batch of usage events in one transaction, each with exactly-once effect."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

from billing_worker.domain.credits import burn_credits, credit_charges
from billing_worker.domain.periods import DEFAULT_CALENDAR, BillingPeriod, PeriodCalendar
from billing_worker.domain.pricebook import PriceBook
from billing_worker.domain.quotas import crossed_thresholds
from billing_worker.domain.usage import (
    IdempotencyKey,
    LedgerEntry,
    UsageOutcome,
    UsageRecord,
    aggregate_deltas,
    classify,
    first_occurrences,
    ledger_entries_for,
)
from billing_worker.service.events import credit_alert, quota_alert
from billing_worker.service.ports import Clock, UnitOfWork, UnitOfWorkFactory


async def record_usage_batch(
    uow_factory: UnitOfWorkFactory,
    book: PriceBook,
    records: Sequence[UsageRecord],
    *,
    clock: Clock,
) -> list[UsageOutcome]:
    """Claim keys, append ledger rows for new events, update aggregates, burn credits,
    write the quota and credit events to the outbox, commit.

    Returns each record's outcome, aligned with ``records``.

    Keys are claimed, aggregates updated and grants locked in sorted order so that
    concurrent replicas lock rows in the same order and cannot deadlock each other.
    Nothing is visible to anyone until the commit; the caller acks only after this returns.
    """
    firsts = sorted(first_occurrences(records), key=lambda r: r.key)
    async with uow_factory() as uow:
        claimed = await uow.usage.claim_keys(firsts)
        unclaimed = [r.key for r in firsts if r.key not in claimed]
        stored = await uow.usage.stored_fingerprints(unclaimed) if unclaimed else {}
        new = [r for r in firsts if r.key in claimed]
        calendars = await uow.usage.period_calendars(sorted({r.account for r in new}))
        late = await _late_to_reject(uow, book, new, calendars, clock())
        if late:
            # Unclaimed again in this transaction: a redelivery is judged the same way.
            await uow.usage.release_keys(sorted(late))
            claimed -= late
            new = [r for r in new if r.key not in late]
        if new:
            await uow.usage.ensure_accounts(
                sorted({r.account for r in new}), book.default_plan, clock()
            )
            entries = ledger_entries_for(new, book, calendars)
            if entries:
                now = clock()
                await _apply(uow, book, entries, now)
                # last, so its account-row locks come after every other lock the batch takes
                ended = [(e.account, e.period) for e in entries if e.period.end <= now]
                if ended:
                    await uow.schedule.reopen(ended)
        await uow.commit()
    if not late:
        return classify(records, claimed=claimed, stored_fingerprints=stored)
    kept = [r for r in records if r.key not in late]
    outcomes = iter(classify(kept, claimed=claimed, stored_fingerprints=stored))
    return [UsageOutcome.LATE if r.key in late else next(outcomes) for r in records]


async def _late_to_reject(
    uow: UnitOfWork,
    book: PriceBook,
    records: Sequence[UsageRecord],
    calendars: Mapping[str, PeriodCalendar],
    now: datetime,
) -> set[IdempotencyKey]:
    """Keys of events for an invoiced period that feed a meter whose late-event policy is
    ``reject``. Only events of periods already over are looked up (none on the hot path)."""
    if not any(meter.late_events == "reject" for meter in book.meters.values()):
        return set()  # the usual case: nothing to look up, no work per event

    def period(r: UsageRecord) -> BillingPeriod:
        return calendars.get(r.account, DEFAULT_CALENDAR).period_of(r.occurred_at)

    candidates = [
        r
        for r in records
        if period(r).end <= now
        and any(
            feed.meter.late_events == "reject"
            for feed in (r.feeds or book.feeds(r.event_type, r.quantity, r.dimensions))
        )
    ]
    if not candidates:
        return set()
    pairs = sorted({(r.account, period(r).start) for r in candidates})
    closed = await uow.invoices.closed_periods(pairs)
    return {r.key for r in candidates if (r.account, period(r).start) in closed}


async def _apply(
    uow: UnitOfWork, book: PriceBook, entries: Sequence[LedgerEntry], now: datetime
) -> None:
    """The effects of new ledger entries: totals, quota alerts, credit burns."""
    usages = await uow.usage.append_usage(entries, aggregate_deltas(entries), book=book)
    crossings = crossed_thresholds(book, usages)
    if crossings:
        await uow.outbox.add_quota_alerts([quota_alert(c, now) for c in crossings])
    charges = credit_charges(entries, book)
    if not charges:
        return
    # A period's plan grant pays for its usage until the period is invoiced, late usage
    # included, exactly as if it had come on time; after the close, late usage burns
    # purchased or promotional credits, or is a shortfall.
    periods = {(c.account, c.period) for c in charges}
    ended = sorted({(a, p.start) for a, p in periods if p.end <= now})
    invoiced = await uow.invoices.closed_periods(ended) if ended else set()
    needed = sorted(
        ((a, p) for a, p in periods if (a, p.start) not in invoiced),
        key=lambda pair: (pair[0], pair[1].start),
    )
    await uow.credits.allocate_plan_grants(needed, book, now)
    grants = await uow.credits.live_grants(sorted({c.account for c in charges}), now)
    burn = burn_credits(grants, charges, low_balance=book.credits_low_balance)
    await uow.credits.record_burns(burn, book.version)
    if burn.alerts:
        await uow.outbox.add([credit_alert(a, now) for a in burn.alerts])

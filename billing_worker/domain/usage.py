"""Usage events as the ledger sees them: fingerprints, repeats, ledger entries, aggregate deltas."""

from __future__ import annotations

import enum
import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal, localcontext

from billing_worker.domain.errors import EventTimeInFuture
from billing_worker.domain.periods import BillingPeriod, PeriodCalendar, calendar_month_of
from billing_worker.domain.pricebook import EXACT, Aggregation, MeterFeed, PriceBook

Scalar = str | int | float | bool | None
IdempotencyKey = tuple[str, str]
"""(source, id) of a usage event."""


def usage_fingerprint(
    *,
    event_type: str,
    account: str,
    occurred_at: datetime,
    quantity: Decimal,
    dimensions: Mapping[str, Scalar],
) -> bytes:
    """SHA-256 of the event's meaning, blind to JSON spelling.

    ``"1234"`` and ``1234``, ``Z`` and ``+00:00``, key order and whitespace all give the
    same fingerprint, so a producer re-serialising a retry is a duplicate, not a conflict.
    """
    canonical = json.dumps(
        [
            event_type,
            account,
            occurred_at.astimezone(UTC).isoformat(),
            format(quantity.normalize(), "f"),
            dimensions,
        ],
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(canonical.encode("utf-8")).digest()


@dataclass(frozen=True, slots=True)
class UsageRecord:
    """One validated usage event, ready to be recorded."""

    source: str
    event_id: str
    event_type: str
    account: str
    occurred_at: datetime
    quantity: Decimal
    dimensions: Mapping[str, Scalar] = field(default_factory=dict)
    fingerprint: bytes = b""
    feeds: tuple[MeterFeed, ...] | None = field(default=None, compare=False)
    """The meters this event feeds, when already worked out (by the decoder)."""

    def __post_init__(self) -> None:
        if self.occurred_at.tzinfo is None:
            raise ValueError("usage time must be timezone-aware")
        if self.quantity < 0:
            raise ValueError("usage quantity must not be negative")
        if not self.fingerprint:
            fingerprint = usage_fingerprint(
                event_type=self.event_type,
                account=self.account,
                occurred_at=self.occurred_at,
                quantity=self.quantity,
                dimensions=self.dimensions,
            )
            object.__setattr__(self, "fingerprint", fingerprint)

    @property
    def key(self) -> IdempotencyKey:
        """The idempotency key (source, id)."""
        return (self.source, self.event_id)


def check_not_in_future(occurred_at: datetime, *, now: datetime, max_skew: timedelta) -> None:
    """Refuse usage stamped further ahead of ``now`` than clocks can plausibly disagree."""
    if occurred_at > now + max_skew:
        raise EventTimeInFuture(
            f"event time {occurred_at.isoformat()} is more than {max_skew.total_seconds():g}s "
            f"ahead of the worker clock ({now.isoformat()})"
        )


class UsageOutcome(enum.Enum):
    """What became of one usage event."""

    RECORDED = "recorded"
    DUPLICATE = "duplicate"
    CONFLICT = "conflict"
    LATE = "late"
    """For a period already invoiced, on a meter whose late-event policy is ``reject``."""


def first_occurrences(records: Sequence[UsageRecord]) -> list[UsageRecord]:
    """The first record of each idempotency key, in batch order: the ones to claim."""
    seen: set[IdempotencyKey] = set()
    firsts = []
    for record in records:
        if record.key not in seen:
            seen.add(record.key)
            firsts.append(record)
    return firsts


def classify(
    records: Sequence[UsageRecord],
    *,
    claimed: set[IdempotencyKey],
    stored_fingerprints: Mapping[IdempotencyKey, bytes],
) -> list[UsageOutcome]:
    """Decide each record's fate, aligned with ``records``.

    The first record of a key this batch claimed is recorded. Any other record is
    compared with the key's reference content: the stored fingerprint if the key was
    claimed earlier, else the fingerprint of the record that claimed it in this batch.
    Equal content is a duplicate; different content is a conflict.
    """
    reference: dict[IdempotencyKey, bytes] = dict(stored_fingerprints)
    outcomes = []
    for record in records:
        key = record.key
        if key in claimed and key not in reference:
            reference[key] = record.fingerprint
            outcomes.append(UsageOutcome.RECORDED)
        elif reference.get(key) == record.fingerprint:
            outcomes.append(UsageOutcome.DUPLICATE)
        elif key in reference:
            outcomes.append(UsageOutcome.CONFLICT)
        else:
            raise ValueError(f"key {key!r} was neither claimed nor stored")
    return outcomes


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """One append-only ledger row: an event's value on one meter in one period."""

    account: str
    meter: str
    quantity: Decimal
    source: str
    event_id: str
    event_type: str
    occurred_at: datetime
    period: BillingPeriod
    dimensions: Mapping[str, Scalar]
    aggregation: Aggregation = Aggregation.SUM
    unique_value: str | None = None
    """For ``unique_count`` meters: the distinct value this event carries."""


def ledger_entries_for(
    records: Iterable[UsageRecord],
    book: PriceBook,
    calendars: Mapping[str, PeriodCalendar] | None = None,
) -> list[LedgerEntry]:
    """One entry per record and meter it feeds, in the account's billing period containing
    its time (``calendars``; calendar months for an account not in it)."""
    entries: list[LedgerEntry] = []
    calendars = calendars or {}
    for record in records:
        calendar = calendars.get(record.account)
        period = (
            calendar_month_of(record.occurred_at)
            if calendar is None
            else calendar.period_of(record.occurred_at)
        )
        feeds = record.feeds
        if feeds is None:
            feeds = book.feeds(record.event_type, record.quantity, record.dimensions)
        entries.extend(
            LedgerEntry(
                account=record.account,
                meter=feed.meter.name,
                quantity=feed.value,
                source=record.source,
                event_id=record.event_id,
                event_type=record.event_type,
                occurred_at=record.occurred_at,
                period=period,
                dimensions=record.dimensions,
                aggregation=feed.meter.aggregation,
                unique_value=(
                    _unique_key(record.dimensions.get(feed.meter.value_field))
                    if feed.meter.aggregation is Aggregation.UNIQUE_COUNT
                    and feed.meter.value_field is not None
                    else None
                ),
            )
            for feed in feeds
        )
    return entries


def _unique_key(value: Scalar) -> str:
    """How a distinct value is stored: JSON, so ``1`` and ``"1"`` stay different."""
    return json.dumps(value, ensure_ascii=False)


@dataclass(frozen=True, slots=True, order=True)
class AggregateDelta:
    """What a batch contributes to one (account, meter, period) running total.

    ``quantity`` is folded with the stored total by ``aggregation``: added for ``sum`` and
    ``count``, the larger kept for ``max``, the newer (by ``latest_at``) kept for
    ``latest``. For ``unique_count`` the store counts which of ``unique_values`` it has
    not seen before.
    """

    account: str
    meter: str
    period: BillingPeriod
    quantity: Decimal
    event_count: int
    aggregation: Aggregation = Aggregation.SUM
    latest_at: datetime | None = None
    unique_values: tuple[str, ...] = ()


def aggregate_deltas(entries: Iterable[LedgerEntry]) -> list[AggregateDelta]:
    """Fold entries per (account, meter, period), sorted by that key.

    The fixed order is what lets replicas update aggregates without deadlocking.
    """
    groups: dict[tuple[str, str, BillingPeriod], list[LedgerEntry]] = {}
    for entry in entries:
        groups.setdefault((entry.account, entry.meter, entry.period), []).append(entry)
    deltas = []
    with localcontext(EXACT):
        for key, group in sorted(groups.items()):
            deltas.append(_fold(key, group))
    return deltas


def _fold(key: tuple[str, str, BillingPeriod], group: list[LedgerEntry]) -> AggregateDelta:
    """One key's entries folded by the meter's aggregation."""
    account, meter, period = key
    aggregation = group[0].aggregation
    latest_at = None
    unique_values: tuple[str, ...] = ()
    if aggregation is Aggregation.MAX:
        quantity = max(e.quantity for e in group)
    elif aggregation is Aggregation.LATEST:
        newest = max(enumerate(group), key=lambda pair: (pair[1].occurred_at, pair[0]))[1]
        quantity, latest_at = newest.quantity, newest.occurred_at
    elif aggregation is Aggregation.UNIQUE_COUNT:
        unique_values = tuple(sorted({e.unique_value for e in group if e.unique_value}))
        quantity = Decimal(0)
    else:
        quantity = sum((e.quantity for e in group), Decimal(0))
    return AggregateDelta(
        account, meter, period, quantity, len(group), aggregation, latest_at, unique_values
    )

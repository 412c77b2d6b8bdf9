"""Pure domain rules: periods, fingerprints, duplicate/conflict classification, aggregation."""

from __future__ import annotations

import ast
import sys
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import billing_worker.domain
from billing_worker.domain.errors import EventTimeInFuture, UnknownEventType
from billing_worker.domain.periods import BillingPeriod, calendar_month_of
from billing_worker.domain.usage import (
    UsageOutcome,
    UsageRecord,
    aggregate_deltas,
    check_not_in_future,
    classify,
    first_occurrences,
    ledger_entries_for,
)
from tests.pricebooks import DEFAULT_BOOK, FEATURES_BOOK

T0 = datetime(2026, 11, 21, 10, 15, tzinfo=UTC)
aware_datetimes = st.datetimes(
    min_value=datetime(1971, 1, 1),  # noqa: DTZ001 - hypothesis bounds are naive by API
    max_value=datetime(2999, 12, 31),  # noqa: DTZ001
    timezones=st.just(UTC),
)


def record(event_id: str = "e1", **changes: object) -> UsageRecord:
    fields: dict[str, object] = {
        "source": "chat-service",
        "event_id": event_id,
        "event_type": "chat.tokens",
        "account": "acct_1",
        "occurred_at": T0,
        "quantity": Decimal(10),
        "dimensions": {"model": "gpt-4"},
    }
    fields.update(changes)
    return UsageRecord(**fields)  # type: ignore[arg-type]


class TestPeriods:
    def test_calendar_month(self) -> None:
        """Usage belongs to the UTC calendar month its time names."""
        period = calendar_month_of(T0)
        assert period == BillingPeriod(
            datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC)
        )

    def test_december_rolls_into_next_year(self) -> None:
        """December ends on the first of January of the next year."""
        period = calendar_month_of(datetime(2026, 12, 31, 23, 59, 59, tzinfo=UTC))
        assert period.end == datetime(2027, 1, 1, tzinfo=UTC)

    def test_offsets_are_converted_to_utc_first(self) -> None:
        """A local time just after midnight on the 1st is still the previous UTC month."""
        local = datetime(2026, 12, 1, 0, 30, tzinfo=timezone(timedelta(hours=2)))
        assert calendar_month_of(local).start == datetime(2026, 11, 1, tzinfo=UTC)

    def test_naive_time_refused(self) -> None:
        """A naive datetime cannot be placed in a period."""
        with pytest.raises(ValueError, match="timezone-aware"):
            calendar_month_of(datetime(2026, 11, 1))  # noqa: DTZ001 - the point of the test

    @given(aware_datetimes)
    def test_period_contains_its_moment(self, moment: datetime) -> None:
        """Every moment lies in its own month, which starts on the 1st at midnight."""
        period = calendar_month_of(moment)
        assert period.contains(moment)
        assert period.start.day == 1
        assert period.start.hour == period.start.minute == period.start.second == 0
        assert calendar_month_of(period.end) != period
        assert calendar_month_of(period.end - timedelta(microseconds=1)) == period


class TestFingerprint:
    def test_same_meaning_same_fingerprint(self) -> None:
        """Spelling differences (offset, quantity scale, dict order) do not change it."""
        a = record(quantity=Decimal("10"), dimensions={"a": 1, "b": "x"})
        b = record(
            quantity=Decimal("10.000"),
            occurred_at=T0.astimezone(timezone(timedelta(hours=-5))),
            dimensions={"b": "x", "a": 1},
        )
        assert a.fingerprint == b.fingerprint

    @pytest.mark.parametrize(
        "change",
        [
            {"quantity": Decimal(11)},
            {"account": "acct_2"},
            {"event_type": "api.call"},
            {"occurred_at": T0 + timedelta(seconds=1)},
            {"dimensions": {"model": "gpt-3.5"}},
        ],
    )
    def test_any_meaningful_change_changes_fingerprint(self, change: dict[str, object]) -> None:
        """Changing anything that affects billing gives another fingerprint."""
        assert record(**change).fingerprint != record().fingerprint

    def test_negative_quantity_refused(self) -> None:
        """The domain refuses negative usage even if the wire let it through."""
        with pytest.raises(ValueError, match="negative"):
            record(quantity=Decimal(-1))


class TestClassify:
    def test_new_key_is_recorded(self) -> None:
        """A key this batch claimed is recorded."""
        r = record()
        assert classify([r], claimed={r.key}, stored_fingerprints={}) == [UsageOutcome.RECORDED]

    def test_stored_key_same_content_is_duplicate(self) -> None:
        """A key stored earlier with equal content is a duplicate."""
        r = record()
        outcomes = classify([r], claimed=set(), stored_fingerprints={r.key: r.fingerprint})
        assert outcomes == [UsageOutcome.DUPLICATE]

    def test_stored_key_other_content_is_conflict(self) -> None:
        """A key stored earlier with other content is a conflict."""
        r = record()
        outcomes = classify([r], claimed=set(), stored_fingerprints={r.key: b"\0" * 32})
        assert outcomes == [UsageOutcome.CONFLICT]

    def test_repeats_inside_one_batch(self) -> None:
        """Within a batch the first occurrence records; equal repeats dup, different conflict."""
        first, same, other = record(), record(), record(quantity=Decimal(99))
        batch = [first, same, other]
        assert first_occurrences(batch) == [first]
        outcomes = classify(batch, claimed={first.key}, stored_fingerprints={})
        assert outcomes == [
            UsageOutcome.RECORDED,
            UsageOutcome.DUPLICATE,
            UsageOutcome.CONFLICT,
        ]

    def test_conflicting_first_does_not_become_reference(self) -> None:
        """After a stored key, the stored content stays the reference for later repeats."""
        stored = record()
        conflicting, matching = record(quantity=Decimal(5)), record()
        outcomes = classify(
            [conflicting, matching],
            claimed=set(),
            stored_fingerprints={stored.key: stored.fingerprint},
        )
        assert outcomes == [UsageOutcome.CONFLICT, UsageOutcome.DUPLICATE]

    def test_key_neither_claimed_nor_stored_is_a_bug(self) -> None:
        """The store must account for every key; a missing one is an error, not a guess."""
        with pytest.raises(ValueError, match="neither claimed nor stored"):
            classify([record()], claimed=set(), stored_fingerprints={})


class TestLedgerAndAggregates:
    def test_unknown_event_type(self) -> None:
        """An event type that feeds no meter is a permanent error with its own reason."""
        with pytest.raises(UnknownEventType) as caught:
            DEFAULT_BOOK.feeds("chat.emojis", Decimal(1), {})
        assert caught.value.reason == "unknown_event_type"

    def test_default_book_covers_contract_event_types(self) -> None:
        """Every launch event type of CONTRACTS.md feeds a meter; chat.tokens feeds tokens."""
        launch = {
            "generator.website_generated",
            "generator.image_generated",
            "chat.tokens",
            "api.call",
            "api.call_premium",
            "storage.gb_month",
            "ai.inference",
        }
        assert set(DEFAULT_BOOK.event_types) == launch
        feeds = DEFAULT_BOOK.feeds("chat.tokens", Decimal(7), {"model": "gpt-4"})
        assert [(f.meter.name, f.value) for f in feeds] == [("tokens", Decimal(7))]

    def test_event_feeding_two_meters_gives_two_entries(self) -> None:
        """One ledger entry per meter an event feeds (filters and aggregations applied)."""
        entries = ledger_entries_for([record()], FEATURES_BOOK)
        assert [(e.meter, e.quantity) for e in entries] == [
            ("tokens", Decimal(10)),
            ("gpt4_tokens", Decimal(10)),
            ("requests", Decimal(1)),
        ]
        assert all(e.period == calendar_month_of(T0) for e in entries)

    @given(
        st.lists(
            st.tuples(
                st.sampled_from(["acct_b", "acct_a", "acct_c"]),
                st.decimals(min_value=0, max_value=10**9, places=3, allow_nan=False),
                aware_datetimes,
            ),
            max_size=50,
        )
    )
    def test_deltas_sum_entries_in_sorted_key_order(
        self, rows: list[tuple[str, Decimal, datetime]]
    ) -> None:
        """Deltas add up to the entries per key, and come sorted by (account, meter, period)."""
        records = [
            record(f"e{i}", account=a, quantity=q, occurred_at=t)
            for i, (a, q, t) in enumerate(rows)
        ]
        entries = ledger_entries_for(records, DEFAULT_BOOK)
        deltas = aggregate_deltas(entries)
        keys = [(d.account, d.meter, d.period) for d in deltas]
        assert keys == sorted(keys)
        assert len(set(keys)) == len(keys)
        assert sum((d.quantity for d in deltas), Decimal(0)) == sum(
            (e.quantity for e in entries), Decimal(0)
        )
        assert sum(d.event_count for d in deltas) == len(entries)


class TestClock:
    def test_future_beyond_skew_refused(self) -> None:
        """Usage stamped further ahead than the allowed skew is refused with a reason."""
        with pytest.raises(EventTimeInFuture) as caught:
            check_not_in_future(T0 + timedelta(minutes=6), now=T0, max_skew=timedelta(minutes=5))
        assert caught.value.reason == "time_in_future"

    def test_within_skew_accepted(self) -> None:
        """Small clock differences between producer and worker are tolerated."""
        check_not_in_future(T0 + timedelta(minutes=4), now=T0, max_skew=timedelta(minutes=5))


def test_domain_imports_only_the_standard_library() -> None:
    """The domain layer stays pure: no third-party or I/O-layer imports."""
    allowed = set(sys.stdlib_module_names) | {"billing_worker"}
    root = Path(billing_worker.domain.__file__).parent
    for path in root.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            modules = []
            if isinstance(node, ast.Import):
                modules = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                modules = [node.module]
            for module in modules:
                assert module.split(".")[0] in allowed, f"{path.name} imports {module}"
                if module.startswith("billing_worker."):
                    assert module.startswith("billing_worker.domain"), f"{path.name}: {module}"

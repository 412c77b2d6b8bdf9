"""The chaos checks themselves: each one fails on the breakage it is there to catch, and the
workloads carry what the scenarios rely on (resends, copies, crossed quota thresholds)."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime

import psycopg
import pytest

from billing_worker.chaos.counting import Counting, Incarnation, QueueCounts, metrics_identity
from billing_worker.chaos.invariants import (
    BusMessage,
    ledger_exactly_once,
    outgoing_ids_consistent,
    quota_alerts_once_per_threshold,
    rejections_dead_lettered,
    totals_match_published,
)
from billing_worker.chaos.workload import (
    SOURCE,
    PublishedEvent,
    Workload,
    WorkloadShape,
    build_workload,
)

WHEN = datetime(2026, 11, 21, 10, tzinfo=UTC)
PERIOD = (datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC))


def small_workload() -> Workload:
    """Three events over two accounts, one resent, one invalid."""
    events = [
        PublishedEvent("e1", "acct_a", "chat.tokens", 10),
        PublishedEvent("e2", "acct_a", "chat.tokens", 5),
        PublishedEvent("e3", "acct_b", "api.call", 1),
    ]
    bodies = [json.dumps({"id": e.event_id}).encode() for e in events]
    bad = json.dumps({"id": "bad-1"}).encode()
    return Workload(deliveries=[*bodies, bodies[0], bad], events=events, bad_bodies={bad: "bad-1"})


def record(sql: psycopg.Connection, events: list[PublishedEvent]) -> None:
    """Ledger rows and totals as the worker would write them (one row per event given)."""
    totals: Counter[tuple[str, str]] = Counter()
    for e in events:
        sql.execute(
            "INSERT INTO accounts (account_id, plan) VALUES (%s, 'FREE') ON CONFLICT DO NOTHING",
            (e.account,),
        )
        sql.execute(
            "INSERT INTO usage_ledger (account_id, meter, quantity, event_source, event_id, "
            "event_type, occurred_at, period_start, period_end) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (e.account, e.meter, e.quantity, SOURCE, e.event_id, e.event_type, WHEN, *PERIOD),
        )
        totals[(e.account, e.meter)] += e.quantity
    for (account, meter), quantity in totals.items():
        sql.execute(
            "INSERT INTO usage_aggregates (account_id, meter, period_start, period_end, "
            "quantity, event_count) VALUES (%s, %s, %s, %s, %s, 1)",
            (account, meter, *PERIOD, quantity),
        )


class TestLedgerChecks:
    """Checked against what was published, not against what the worker did."""

    def test_a_faithful_ledger_passes(self, sql: psycopg.Connection) -> None:
        """One row per published event and the published sums: both checks hold."""
        workload = small_workload()
        record(sql, workload.events)
        assert ledger_exactly_once(sql, workload).ok
        assert totals_match_published(sql, workload).ok

    def test_a_lost_event_fails_both(self, sql: psycopg.Connection) -> None:
        """An event missing from the ledger (and its totals) is caught."""
        workload = small_workload()
        record(sql, workload.events[1:])
        lost = ledger_exactly_once(sql, workload)
        assert not lost.ok
        assert "1 missing" in lost.detail
        assert not totals_match_published(sql, workload).ok

    def test_a_doubled_event_fails(self, sql: psycopg.Connection) -> None:
        """An event with two ledger rows is caught even when the totals were left alone."""
        workload = small_workload()
        record(sql, [*workload.events, workload.events[0]])
        doubled = ledger_exactly_once(sql, workload)
        assert not doubled.ok
        assert "1 with more than one row" in doubled.detail
        assert not totals_match_published(sql, workload).ok

    def test_quota_alerts_must_match_the_thresholds_reached(self, sql: psycopg.Connection) -> None:
        """85,000 tokens reach 80% of the default plan's quota only: no alert is a failure,
        the 80% alert passes, an extra 90% alert fails."""
        events = [PublishedEvent("q1", "acct_q", "chat.tokens", 85_000)]
        workload = Workload(deliveries=[b"{}"], events=events, bad_bodies={})
        record(sql, events)
        assert not quota_alerts_once_per_threshold(sql, workload).ok
        insert = (
            "INSERT INTO quota_alerts (account_id, meter, period_start, threshold, event_id, "
            "used, quota_limit) VALUES ('acct_q', 'tokens', %s, %s, %s, 85000, 100000)"
        )
        sql.execute(insert, (PERIOD[0], 80, "alert-80"))
        assert quota_alerts_once_per_threshold(sql, workload).ok
        sql.execute(insert, (PERIOD[0], 90, "alert-90"))
        assert not quota_alerts_once_per_threshold(sql, workload).ok


def bus_message(event_id: str, body: dict[str, object], event_type: str) -> BusMessage:
    return BusMessage(event_id, event_type, json.dumps(body).encode(), {})


class TestOutgoingChecks:
    """Billing events: at least once, one content per id."""

    def test_an_outbox_event_repeated_with_other_bytes_fails(self, sql: psycopg.Connection) -> None:
        """The outbox row's bytes each time pass; a repeat with other bytes is caught."""
        payload = {"id": "ev-1", "type": "quota.warning", "data": {"threshold": 80}}
        sql.execute(
            "INSERT INTO outbox (event_id, event_type, subject, payload) "
            "VALUES ('ev-1', 'quota.warning', 'acct_a', %s)",
            (json.dumps(payload),),
        )
        (stored,) = sql.execute("SELECT payload::text FROM outbox").fetchone() or ("",)
        same = BusMessage("ev-1", "quota.warning", stored.encode(), {})
        assert outgoing_ids_consistent(sql, [same, same]).ok
        other = bus_message("ev-1", {**payload, "data": {"threshold": 90}}, "quota.warning")
        assert not outgoing_ids_consistent(sql, [same, other]).ok

    def test_a_rejection_notice_may_differ_only_in_its_time(self, sql: psycopg.Connection) -> None:
        """``usage.rejected`` repeats carry their own announcement time; anything else
        differing is caught."""
        notice = {"id": "r-1", "type": "usage.rejected", "data": {"original_id": "bad-1"}}
        first = bus_message("r-1", {**notice, "time": "2026-11-21T10:00:00Z"}, "usage.rejected")
        later = bus_message("r-1", {**notice, "time": "2026-11-21T10:00:05Z"}, "usage.rejected")
        assert outgoing_ids_consistent(sql, [first, later]).ok
        changed = bus_message("r-1", {**notice, "data": {"original_id": "x"}}, "usage.rejected")
        assert not outgoing_ids_consistent(sql, [first, changed]).ok

    def test_an_invalid_event_not_dead_lettered_fails(self) -> None:
        """Each invalid event must be in the DLQ with a reason and announced."""
        workload = small_workload()
        letter = BusMessage(None, None, b'{"id": "bad-1"}', {"x-billing-reason": "x"})
        notice = bus_message(
            "r-1", {"data": {"original_id": "bad-1"}, "type": "usage.rejected"}, "usage.rejected"
        )
        assert rejections_dead_lettered(workload, [letter], [notice]).ok
        assert not rejections_dead_lettered(workload, [], [notice]).ok
        assert not rejections_dead_lettered(workload, [letter], []).ok


def incarnation(*scrapes: QueueCounts, at_rest: bool = True) -> Incarnation:
    return Incarnation("w", list(scrapes), at_rest=at_rest)


class TestMetricsIdentity:
    """What the counters of several worker processes can and cannot vouch for."""

    def test_exact_counting_must_add_up_to_what_was_published(self) -> None:
        """Five deliveries: three recorded, one resend, one invalid; anything else fails."""
        workload = small_workload()
        right = incarnation(QueueCounts(5, 3, 1, 1))
        assert metrics_identity(workload, [right], Counting.EXACT).ok
        short = incarnation(QueueCounts(4, 3, 0, 1))
        assert not metrics_identity(workload, [short], Counting.EXACT).ok

    def test_outcomes_ahead_of_receipts_in_any_scrape_fail(self) -> None:
        """A scrape showing more outcomes than receipts fails even mid-run."""
        workload = small_workload()
        racing = incarnation(QueueCounts(2, 3, 0, 0), QueueCounts(5, 3, 1, 1))
        assert not metrics_identity(workload, [racing], Counting.PARTIAL).ok

    def test_at_rest_receipts_must_equal_outcomes(self) -> None:
        """A process at rest with receipts not split into outcomes fails; mid-run it may."""
        workload = small_workload()
        assert metrics_identity(
            workload, [incarnation(QueueCounts(5, 3, 0, 0), at_rest=False)], Counting.PARTIAL
        ).ok
        assert not metrics_identity(
            workload, [incarnation(QueueCounts(5, 3, 0, 0))], Counting.PARTIAL
        ).ok

    def test_more_recorded_than_published_fails_even_when_partial(self) -> None:
        """Summed over killed processes, recorded may fall short, never exceed."""
        workload = small_workload()
        first, second = incarnation(QueueCounts(2, 2, 0, 0)), incarnation(QueueCounts(2, 2, 0, 0))
        assert not metrics_identity(workload, [first, second], Counting.PARTIAL).ok


class TestWorkloads:
    """What the scenarios rely on in what they publish."""

    def test_resends_and_invalid_events_are_counted_from_the_deliveries(self) -> None:
        """Deliveries = distinct events + resends + invalid deliveries."""
        workload = build_workload(WorkloadShape(events=1000, accounts=5, seed=3))
        bad = sum(1 for b in workload.deliveries if b in workload.bad_bodies)
        assert workload.bad_deliveries == bad >= len(workload.bad_ids) > 0
        assert workload.resends > 0
        assert len(workload.deliveries) == len(workload.events) + workload.resends + bad

    def test_a_storm_publishes_every_delivery_three_times(self) -> None:
        """With three copies, each body appears exactly three times."""
        workload = build_workload(
            WorkloadShape(events=500, accounts=5, copies=3, duplicate_ratio=0, spread=100)
        )
        assert set(Counter(workload.deliveries).values()) == {3}
        assert workload.resends == 2 * len(workload.events)

    @pytest.mark.parametrize("hot_share", [0.5, 0.8])
    def test_the_ci_sized_workload_crosses_quota_thresholds(self, hot_share: float) -> None:
        """3,000 events over 12 accounts: accounts reach the default plan's token
        thresholds, so there are billing events to check."""
        workload = build_workload(
            WorkloadShape(events=3000, accounts=12, hot_accounts=2, hot_share=hot_share)
        )
        tokens = [t for (_, meter), t in workload.totals().items() if meter == "tokens"]
        assert sum(1 for t in tokens if t >= 80_000) >= 2

"""What must hold after any chaos run: nothing lost, nothing doubled, every total a fold.

Each check compares the database, the dead-letter queue and the billing events seen on the
bus against what was *published*, and returns a ``Check`` (never raises), so a run reports
every broken promise at once.

The metrics identity, and what worker counters can vouch for, is in ``counting``.
"""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import psycopg
from sqlalchemy import make_url

from billing_worker.chaos.counting import Counting, Incarnation, metrics_identity
from billing_worker.chaos.verdict import Check
from billing_worker.chaos.workload import SOURCE, Workload

QUOTA_LIMIT = Decimal(100_000)
QUOTA_THRESHOLDS = (80, 90, 100)
"""The built-in price book's default plan: 100,000 tokens, alerts at 80, 90 and 100%."""

ProjectionCheck = Callable[[str], Awaitable[bool]]
"""Whether a stored projection equals its fold of the ledger, in the database at a URL."""


@dataclass(frozen=True, slots=True)
class ProjectionChecks:
    """The folds of the ledger to compare stored totals with (supplied by the caller)."""

    aggregates_match_ledger: ProjectionCheck
    credit_balances_match_ledger: ProjectionCheck

    @classmethod
    def on_psycopg(
        cls,
        aggregates_match_ledger: Callable[[psycopg.Connection], bool],
        credit_balances_match_ledger: Callable[[psycopg.Connection], bool],
    ) -> ProjectionChecks:
        """Checks written for a plain psycopg connection, each run on one of its own."""
        return cls(_on_psycopg(aggregates_match_ledger), _on_psycopg(credit_balances_match_ledger))

    async def run(self, database_url: str) -> list[Check]:
        """Both checks on the database at ``database_url`` (SQLAlchemy form)."""
        return [
            Check(
                "aggregates_match_ledger",
                await self.aggregates_match_ledger(database_url),
                "usage_aggregates equal a rebuild from usage_ledger",
            ),
            Check(
                "credit_balances_match_ledger",
                await self.credit_balances_match_ledger(database_url),
                "every grant's remaining credits equal the sum of its credit-ledger entries",
            ),
        ]


def _on_psycopg(check: Callable[[psycopg.Connection], bool]) -> ProjectionCheck:
    def on_own_connection(database_url: str) -> bool:
        url = make_url(database_url).set(drivername="postgresql")
        with psycopg.connect(url.render_as_string(hide_password=False), autocommit=True) as conn:
            return check(conn)

    async def run(database_url: str) -> bool:
        return await asyncio.to_thread(on_own_connection, database_url)

    return run


@dataclass(frozen=True, slots=True)
class BusMessage:
    """A message taken off a queue at the end of a run."""

    message_id: str | None
    event_type: str | None
    body: bytes
    headers: dict[str, Any]


def check_run(
    conn: psycopg.Connection,
    workload: Workload,
    *,
    outgoing: Sequence[BusMessage],
    dead_letters: Sequence[BusMessage],
    incarnations: Sequence[Incarnation],
    counting: Counting,
) -> list[Check]:
    """Every invariant of a finished run but the projection folds (``ProjectionChecks``)."""
    return [
        ledger_exactly_once(conn, workload),
        totals_match_published(conn, workload),
        credits_burned_once(conn, workload),
        quota_alerts_once_per_threshold(conn, workload),
        outbox_published(conn, outgoing),
        outgoing_ids_consistent(conn, outgoing),
        rejections_dead_lettered(workload, dead_letters, outgoing),
        metrics_identity(workload, incarnations, counting),
    ]


def ledger_exactly_once(conn: psycopg.Connection, workload: Workload) -> Check:
    """Each published valid event has exactly one ledger row; nothing else is there."""
    rows = conn.execute(
        "SELECT event_id, count(*) FROM usage_ledger WHERE event_source = %s GROUP BY event_id",
        (SOURCE,),
    ).fetchall()
    counts = {str(event_id): int(n) for event_id, n in rows}
    expected = {e.event_id for e in workload.events}
    missing = expected - counts.keys()
    unexpected = counts.keys() - expected
    doubled = sum(1 for n in counts.values() if n > 1)
    return Check(
        "ledger_exactly_once",
        not (missing or unexpected or doubled),
        f"{len(expected)} events published, {len(counts)} in the ledger: {len(missing)} "
        f"missing, {doubled} with more than one row, {len(unexpected)} never published",
    )


def totals_match_published(conn: psycopg.Connection, workload: Workload) -> Check:
    """Each account's period total per meter equals the sum of what was published for it."""
    stored = {
        (str(account), str(meter)): Decimal(quantity)
        for account, meter, quantity in conn.execute(
            "SELECT account_id, meter, sum(quantity) FROM usage_aggregates GROUP BY 1, 2"
        )
    }
    expected = workload.totals()
    wrong = {k for k in expected.keys() | stored.keys() if expected.get(k) != stored.get(k)}
    return Check(
        "totals_match_published",
        not wrong,
        f"{len(expected)} (account, meter) totals; {len(wrong)} differ from the published sum"
        + (f", e.g. {sorted(wrong)[0]}" if wrong else ""),
    )


def credits_burned_once(conn: psycopg.Connection, workload: Workload) -> Check:
    """Each credit-priced event burned its cost once (burns plus shortfall), none other did."""
    rows = conn.execute(
        "SELECT event_id, sum(CASE WHEN kind = 'burn' THEN -credits ELSE credits END) "
        "FROM credit_ledger WHERE kind IN ('burn', 'shortfall') AND event_source = %s "
        "GROUP BY event_id",
        (SOURCE,),
    ).fetchall()
    burned = {str(event_id): Decimal(amount) for event_id, amount in rows}
    expected = workload.api_call_ids()
    wrong = [i for i in expected if burned.get(i) != 1] + sorted(burned.keys() - expected)
    return Check(
        "credits_burned_once",
        not wrong,
        f"{len(expected)} credit-priced events, {len(burned)} with credit-ledger entries; "
        f"{len(wrong)} not burned exactly once (1 credit each)",
    )


def quota_alerts_once_per_threshold(conn: psycopg.Connection, workload: Workload) -> Check:
    """Quota alerts were written for exactly the thresholds each account's total reached."""
    expected = {
        (account, threshold)
        for (account, meter), total in workload.totals().items()
        if meter == "tokens"
        for threshold in QUOTA_THRESHOLDS
        if total * 100 >= QUOTA_LIMIT * threshold
    }
    rows = conn.execute("SELECT account_id, threshold FROM quota_alerts WHERE meter = 'tokens'")
    stored = [(str(a), int(t)) for a, t in rows]
    ok = sorted(stored) == sorted(expected)
    return Check(
        "quota_alerts_once_per_threshold",
        ok,
        f"{len(expected)} thresholds reached by published usage, {len(stored)} alerts stored "
        f"({len(set(stored))} distinct)",
    )


def outbox_published(conn: psycopg.Connection, outgoing: Sequence[BusMessage]) -> Check:
    """Every outbox row was marked published and was seen on the bus at least once."""
    rows = conn.execute("SELECT event_id, published_at IS NOT NULL FROM outbox").fetchall()
    seen = {m.message_id for m in outgoing}
    unmarked = [i for i, marked in rows if not marked]
    unseen = [i for i, _ in rows if i not in seen]
    return Check(
        "outbox_published",
        bool(rows) and not unmarked and not unseen,
        f"{len(rows)} outbox events: {len(unmarked)} not marked published, "
        f"{len(unseen)} never seen on billing.events",
    )


def outgoing_ids_consistent(conn: psycopg.Connection, outgoing: Sequence[BusMessage]) -> Check:
    """No two billing events with one id differ in content.

    Outbox events must be byte for byte the outbox row each time. ``usage.rejected`` is
    announced next to each dead letter, not through the outbox: a repeat carries the same
    id and data, and the envelope ``time`` of its own announcement, so it is compared
    without ``time``.
    """
    payloads = {
        str(i): str(p).encode()
        for i, p in conn.execute("SELECT event_id, payload::text FROM outbox")
    }
    by_id: dict[str | None, list[BusMessage]] = defaultdict(list)
    for message in outgoing:
        by_id[message.message_id].append(message)
    differing = []
    for event_id, copies in by_id.items():
        if event_id is None:
            differing.append("(no message_id)")
        elif event_id in payloads:
            if any(m.body != payloads[event_id] for m in copies):
                differing.append(event_id)
        elif len({_without_time(m.body) for m in copies}) != 1 or any(
            m.event_type != "usage.rejected" for m in copies
        ):
            differing.append(event_id)
    repeated = sum(len(c) - 1 for c in by_id.values())
    return Check(
        "outgoing_ids_consistent",
        not differing,
        f"{len(outgoing)} billing events seen, {len(by_id)} distinct ids, {repeated} repeats; "
        f"{len(differing)} ids with differing content or unknown origin",
    )


def _without_time(body: bytes) -> str:
    envelope = json.loads(body)
    envelope.pop("time", None)
    return json.dumps(envelope, sort_keys=True)


def rejections_dead_lettered(
    workload: Workload, dead_letters: Sequence[BusMessage], outgoing: Sequence[BusMessage]
) -> Check:
    """Each invalid event is in the DLQ with a reason and was announced as usage.rejected;
    nothing valid was dead-lettered."""
    dead = {str(json.loads(m.body).get("id")) for m in dead_letters}
    reasons = {m.headers.get("x-billing-reason") for m in dead_letters}
    announced = {
        str(json.loads(m.body)["data"].get("original_id"))
        for m in outgoing
        if m.event_type == "usage.rejected"
    }
    bad = workload.bad_ids
    ok = dead == bad and announced == bad and None not in reasons
    return Check(
        "rejections_dead_lettered",
        ok,
        f"{len(bad)} invalid events published; {len(dead_letters)} dead letters of "
        f"{len(dead)} distinct events (reasons {sorted(str(r) for r in reasons)}), "
        f"{len(announced)} announced as usage.rejected",
    )

"""What a chaos run publishes, and what the ledger must hold afterwards.

Usage of two kinds over many accounts, most of it on a few hot accounts: ``chat.tokens``
(random quantities, enough per account to cross the default plan's 80/90/100% token quota)
and ``api.call`` (one credit each, enough to exhaust the plan's credit grant), so a run
writes ledger rows, aggregates, credit burns and outgoing billing events. Some deliveries
resend an earlier event later on (duplicates) and a few are invalid (dead letters). Every
expectation is computed from what was published, never from what the worker did.
"""

from __future__ import annotations

import json
import random
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal

from billing_worker.adapters.clock import SystemClock

SOURCE = "chaos"
TOKENS_TYPE, API_CALL_TYPE = "chat.tokens", "api.call"
METER_OF_TYPE = {TOKENS_TYPE: "tokens", API_CALL_TYPE: "api_calls"}
API_CALL_SHARE = 0.2


@dataclass(frozen=True, slots=True)
class WorkloadShape:
    """How many events, over which accounts, with how many resends, copies and bad ones."""

    events: int
    accounts: int = 100
    hot_accounts: int = 3
    hot_share: float = 0.5
    duplicate_ratio: float = 0.05
    bad_ratio: float = 0.005
    copies: int = 1
    spread: int = 2000
    seed: int = 7

    def __post_init__(self) -> None:
        if self.events < 1 or self.accounts < 1 or self.copies < 1:
            raise ValueError("events, accounts and copies must be positive")
        if not 0 <= self.hot_accounts <= self.accounts or not 0 <= self.hot_share <= 1:
            raise ValueError("hot accounts must be among the accounts, hot share in [0, 1]")
        if not 0 <= self.duplicate_ratio < 1 or not 0 <= self.bad_ratio < 1:
            raise ValueError("duplicate and bad ratios must be in [0, 1)")


@dataclass(frozen=True, slots=True)
class PublishedEvent:
    """One distinct valid event."""

    event_id: str
    account: str
    event_type: str
    quantity: int

    @property
    def meter(self) -> str:
        """The built-in price book's meter this event feeds."""
        return METER_OF_TYPE[self.event_type]


@dataclass(slots=True)
class Workload:
    """Deliveries in publish order, and the distinct events they carry."""

    deliveries: list[bytes]
    events: list[PublishedEvent]
    bad_bodies: dict[bytes, str]
    hot_accounts: list[str] = field(default_factory=list)

    @property
    def source(self) -> str:
        """The ``source`` of every event (half of the idempotency key)."""
        return SOURCE

    @property
    def bad_ids(self) -> set[str]:
        """Ids of the invalid events (each must end up dead-lettered)."""
        return set(self.bad_bodies.values())

    @property
    def bad_deliveries(self) -> int:
        """Deliveries of invalid events, copies and resends included."""
        return sum(1 for body in self.deliveries if body in self.bad_bodies)

    @property
    def resends(self) -> int:
        """Deliveries of a valid event beyond its first: the duplicates to expect."""
        return len(self.deliveries) - len(self.events) - self.bad_deliveries

    def totals(self) -> dict[tuple[str, str], Decimal]:
        """(account, meter) → quantity: the fold of what was published."""
        totals: dict[tuple[str, str], Decimal] = {}
        for e in self.events:
            key = (e.account, e.meter)
            totals[key] = totals.get(key, Decimal(0)) + e.quantity
        return totals

    def api_call_ids(self) -> set[str]:
        """Ids of the events that burn credits."""
        return {e.event_id for e in self.events if e.event_type == API_CALL_TYPE}


def _body(event_id: str, account: str, event_type: str, quantity: int, when: datetime) -> bytes:
    return json.dumps(
        {
            "specversion": "1.0",
            "id": event_id,
            "source": SOURCE,
            "type": event_type,
            "subject": account,
            "time": when.isoformat().replace("+00:00", "Z"),
            "datacontenttype": "application/json",
            "data": {"quantity": quantity},
        }
    ).encode()


def build_workload(shape: WorkloadShape, *, now: datetime | None = None) -> Workload:
    """``shape.events`` distinct valid events, plus resends and bad ones, interleaved.

    With ``copies`` > 1 every delivery is published that many times, each copy a random
    distance (up to ``spread`` deliveries) after the first: some land in the same batch,
    some in later ones, some at another replica.
    """
    rng = random.Random(shape.seed)  # noqa: S311 - a reproducible workload, not a secret
    when = now or SystemClock.from_environment()().replace(microsecond=0) - timedelta(minutes=1)
    accounts = [f"acct_chaos_{i}" for i in range(shape.accounts)]
    hot, cold = accounts[: shape.hot_accounts], accounts[shape.hot_accounts :] or accounts
    events = []
    for _ in range(shape.events):
        pool = hot if hot and rng.random() < shape.hot_share else cold
        kind = API_CALL_TYPE if rng.random() < API_CALL_SHARE else TOKENS_TYPE
        quantity = 1 if kind == API_CALL_TYPE else rng.randrange(1, 2000)
        event_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        events.append(PublishedEvent(event_id, rng.choice(pool), kind, quantity))
    once = [_body(e.event_id, e.account, e.event_type, e.quantity, when) for e in events]
    bad_bodies: dict[bytes, str] = {}
    for _ in range(round(shape.events * shape.bad_ratio)):
        bad_id = f"bad-{uuid.UUID(int=rng.getrandbits(128), version=4)}"
        # a negative quantity: a schema violation, dead-lettered with its reason
        body = _body(bad_id, "acct_bad", TOKENS_TYPE, -1, when)
        bad_bodies[body] = bad_id
        once.insert(rng.randrange(len(once) + 1), body)
    for _ in range(round(shape.events * shape.duplicate_ratio)):
        position = rng.randrange(1, len(once) + 1)
        once.insert(position, once[rng.randrange(position)])
    deliveries = _interleave_copies(once, shape.copies, shape.spread, rng)
    return Workload(deliveries=deliveries, events=events, bad_bodies=bad_bodies, hot_accounts=hot)


def _interleave_copies(
    once: list[bytes], copies: int, spread: int, rng: random.Random
) -> list[bytes]:
    if copies == 1:
        return once
    placed = [
        (i + (rng.randrange(spread + 1) if copy else 0), copy, body)
        for i, body in enumerate(once)
        for copy in range(copies)
    ]
    placed.sort(key=lambda p: (p[0], p[1]))
    return [body for _, _, body in placed]

"""The events a benchmark publishes: N deliveries over A accounts with a share of duplicates."""

from __future__ import annotations

import json
import random
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from billing_worker.adapters.clock import SystemClock


@dataclass(frozen=True, slots=True)
class Workload:
    """Deliveries to publish, in order, and how many distinct events they carry."""

    bodies: list[bytes]
    unique: int
    last_event_id: str
    source: str

    @property
    def total(self) -> int:
        """Deliveries, duplicates included."""
        return len(self.bodies)


def usage_event(
    event_id: str, account: str, quantity: int, when: datetime, source: str = "bench"
) -> bytes:
    """One chat.tokens usage event as producers send it."""
    return json.dumps(
        {
            "specversion": "1.0",
            "id": event_id,
            "source": source,
            "type": "chat.tokens",
            "subject": account,
            "time": when.isoformat().replace("+00:00", "Z"),
            "datacontenttype": "application/json",
            "data": {"quantity": quantity, "model": "gpt-4"},
        }
    ).encode()


def build_workload(
    events: int,
    accounts: int,
    duplicate_ratio: float,
    *,
    seed: int = 7,
    now: datetime | None = None,
    source: str = "bench",
) -> Workload:
    """``events`` deliveries, ``duplicate_ratio`` of them resending an earlier event.

    Keys are random UUIDv4, the worst case for the idempotency index. The last
    delivery is always a new event, so "the last event is committed" means every
    delivery before it was settled too (one consumer settles batches in order).
    """
    if not 0 <= duplicate_ratio < 1:
        raise ValueError("duplicate ratio must be in [0, 1)")
    rng = random.Random(seed)
    if now is None:
        now = SystemClock.from_environment()().replace(microsecond=0) - timedelta(minutes=1)
    unique = max(1, round(events * (1 - duplicate_ratio)))
    originals = [
        usage_event(
            str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            f"acct_{rng.randrange(accounts)}",
            rng.randrange(1, 2000),
            now,
            source,
        )
        for _ in range(unique)
    ]
    bodies = list(originals[:-1])
    for _ in range(events - unique):
        position = rng.randrange(len(bodies) + 1)
        bodies.insert(position, rng.choice(originals[: max(1, position)]))
    bodies.append(originals[-1])
    last_id = str(json.loads(originals[-1])["id"])
    return Workload(bodies=bodies, unique=unique, last_event_id=last_id, source=source)

"""The benchmark workload: the promised share of duplicates, and a new event last."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from billing_worker.bench.workload import build_workload


def keys(bodies: list[bytes]) -> list[tuple[str, str]]:
    return [(e["source"], e["id"]) for e in map(json.loads, bodies)]


def test_duplicate_share_and_distinct_count() -> None:
    """N deliveries carry round(N * (1 - ratio)) distinct events; the rest are resends."""
    workload = build_workload(1000, accounts=50, duplicate_ratio=0.2)
    assert workload.total == 1000
    assert workload.unique == 800
    assert len(set(keys(workload.bodies))) == 800


def test_resends_are_byte_identical() -> None:
    """A resend repeats an earlier event byte for byte: a duplicate, never a conflict."""
    workload = build_workload(500, accounts=10, duplicate_ratio=0.3)
    by_key: dict[tuple[str, str], bytes] = {}
    for body, key in zip(workload.bodies, keys(workload.bodies), strict=True):
        assert by_key.setdefault(key, body) == body


def test_last_delivery_is_a_new_event() -> None:
    """The final delivery is the only occurrence of its key: its commit marks the end."""
    workload = build_workload(300, accounts=5, duplicate_ratio=0.5)
    last = keys(workload.bodies)[-1]
    assert keys(workload.bodies).count(last) == 1
    assert last[1] == workload.last_event_id


def test_same_seed_same_workload() -> None:
    """Runs are comparable: the workload is deterministic for a seed."""
    when = datetime(2026, 11, 1, tzinfo=UTC)
    a = build_workload(200, accounts=5, duplicate_ratio=0.1, seed=3, now=when)
    b = build_workload(200, accounts=5, duplicate_ratio=0.1, seed=3, now=when)
    assert a.bodies == b.bodies


@pytest.mark.parametrize("ratio", [-0.1, 1.0])
def test_ratio_must_leave_some_new_events(ratio: float) -> None:
    """A duplicate ratio outside [0, 1) is refused."""
    with pytest.raises(ValueError, match="duplicate ratio"):
        build_workload(10, accounts=1, duplicate_ratio=ratio)

"""Publish → worker → ledger, aggregates, DLQ and metrics, on the real broker and database."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import psycopg
import pytest

from tests.e2e.conftest import (
    Bus,
    StartWorker,
    encode,
    event,
    http_get,
    rejected_by_reason,
    sample,
    wait_until,
)

# (body, content type, expected reason): one of every kind of bad input
MALFORMED: list[tuple[bytes, str | None, str]] = [
    (b"{not json", "application/json", "invalid_json"),
    (b"\xff\xfe\xfd", None, "invalid_json"),
    (b"[]", "application/json", "schema_violation"),
    (encode(event("bad-spec", specversion="0.3")), "application/json", "schema_violation"),
    (encode(event("bad-qty", data={"quantity": -1})), "application/json", "schema_violation"),
    (encode(event("bad-time", time="2026-11-21T10:15:00")), None, "schema_violation"),
    (encode({**event("bad-extra"), "plan": "PRO"}), None, "schema_violation"),
    (encode(event("bad-type", type="chat.emojis")), None, "unknown_event_type"),
    (encode(event("bad-future", time="2999-01-01T00:00:00Z")), None, "time_in_future"),
    (encode(event("bad-ctype")), "text/plain", "unsupported_content_type"),
    (b'{"pad": "' + b"x" * 70_000 + b'"}', None, "too_large"),
    (encode(event("bad-nul", data={"model": "gpt\u00004"})), None, "schema_violation"),
]


def in_paris(time: str) -> str:
    """The same instant written with a +01:00 offset instead of Z."""
    moment = datetime.fromisoformat(time.replace("Z", "+00:00"))
    return moment.astimezone(timezone(timedelta(hours=1))).isoformat()


async def test_mixed_stream_is_counted_exactly_once_and_explained(
    start_worker: StartWorker, bus: Bus, sql: psycopg.Connection
) -> None:
    """Valid, duplicate, conflicting and malformed deliveries each end where they should."""
    worker = await start_worker(batch_size=50)
    valid = [
        event(f"e{i}", subject=f"acct_{i % 5}", data={"quantity": i % 7 + 1, "model": "gpt-4"})
        for i in range(300)
    ]
    # duplicates re-serialised differently: quantity as a string, offset instead of Z
    duplicates = [
        {
            **e,
            "time": in_paris(e["time"]),
            "data": {**e["data"], "quantity": str(e["data"]["quantity"])},
        }
        for e in valid[:60]
    ]
    conflicts = [{**e, "data": {"quantity": 999}} for e in valid[100:110]]
    await bus.publish_all([encode(e) for e in valid])
    await bus.publish_all([encode(e) for e in duplicates])
    for body in [encode(e) for e in conflicts]:
        await bus.publish(body)
    for body, content_type, _ in MALFORMED:
        await bus.publish(body, content_type=content_type)
    total = len(valid) + len(duplicates) + len(conflicts) + len(MALFORMED)

    await wait_until(
        lambda: sample(worker, "billing_events_received_total") >= total, what="all settled"
    )

    assert sample(worker, "billing_events_received_total") == total
    assert sample(worker, "billing_events_recorded_total") == 300
    assert sample(worker, "billing_events_duplicate_total") == 60
    expected_reasons: dict[str, float] = {"idempotency_conflict": 10}
    for _, _, reason in MALFORMED:
        expected_reasons[reason] = expected_reasons.get(reason, 0) + 1
    assert rejected_by_reason(worker) == expected_reasons

    assert sql.execute("SELECT count(*) FROM usage_ledger").fetchone() == (300,)
    per_account = dict(
        sql.execute(
            "SELECT account_id, quantity FROM usage_aggregates WHERE meter = 'tokens'"
        ).fetchall()
    )
    for account in range(5):
        expected = sum(
            Decimal(e["data"]["quantity"]) for e in valid if e["subject"] == f"acct_{account}"
        )
        assert per_account[f"acct_{account}"] == expected

    letters = await bus.take_all("billing-worker.usage.dlq")
    assert len(letters) == 10 + len(MALFORMED)
    by_body = {m.body: m for m in letters}
    for body, _, reason in MALFORMED:
        letter = by_body[body]  # the body is kept byte for byte
        assert letter.headers["x-billing-reason"] == reason
        assert letter.headers["x-billing-detail"]
    conflict_letter = by_body[encode(conflicts[0])]
    assert conflict_letter.headers["x-billing-reason"] == "idempotency_conflict"
    assert "e100" in str(conflict_letter.headers["x-billing-detail"])

    assert await bus.depth("billing-worker.usage") == 0


async def test_event_feeds_its_meter_and_creates_account(
    start_worker: StartWorker, bus: Bus, sql: psycopg.Connection
) -> None:
    """Each launch event type lands on its meter; a new subject becomes a FREE account."""
    worker = await start_worker()
    await bus.publish(
        encode(event("w1", type="generator.website_generated", subject="acct_new", data={}))
    )
    await bus.publish(
        encode(
            event("i1", type="generator.image_generated", subject="acct_new", data={"quantity": 3})
        )
    )
    await wait_until(lambda: sample(worker, "billing_events_recorded_total") == 2)
    assert sql.execute("SELECT plan FROM accounts WHERE account_id = 'acct_new'").fetchone() == (
        "FREE",
    )
    assert sql.execute(
        "SELECT meter, quantity FROM usage_aggregates ORDER BY meter"
    ).fetchall() == [("images_generated", Decimal(3)), ("websites_generated", Decimal(1))]


async def test_health_and_metrics_endpoints(start_worker: StartWorker) -> None:
    """/healthz is up, /readyz reports each dependency, /metrics has the contract's names."""
    worker = await start_worker()
    assert worker.http is not None
    base = f"http://127.0.0.1:{worker.http.port}"
    assert http_get(f"{base}/healthz")[0] == 200
    status, body = http_get(f"{base}/readyz")
    assert status == 200
    report = json.loads(body)
    assert report["checks"] == {"broker": "up", "database": "up", "usage_consumer": "up"}
    assert "BILLING_STRIPE_WEBHOOK_SECRET" in report["notes"]["stripe"]
    status, text = http_get(f"{base}/metrics")
    assert status == 200
    for name in (
        "billing_events_received_total",
        "billing_events_recorded_total",
        "billing_events_duplicate_total",
        "billing_batch_size",
        "billing_batch_duration_seconds",
        "billing_outbox_pending",
    ):
        assert name in text
    assert http_get(f"{base}/nope")[0] == 404


async def test_topology_is_namespaced_quorum_with_dlq(start_worker: StartWorker, bus: Bus) -> None:
    """The usage queue and its DLQ exist under the namespace; the queue is a quorum queue."""
    await start_worker()
    channel = await bus.connection.channel()
    # redeclaring with the quorum arguments succeeds only if they match what exists
    from billing_worker.adapters.amqp.topology import quorum_queue_arguments  # noqa: PLC0415

    queue = await channel.declare_queue(
        bus.name("billing-worker.usage"),
        durable=True,
        arguments=quorum_queue_arguments(bus.name("billing-worker.usage.dlq")),
    )
    assert queue.name == f"{bus.namespace}.billing-worker.usage"
    await channel.declare_queue(bus.name("billing-worker.usage.dlq"), passive=True)
    await channel.declare_exchange(bus.name("billing.events"), passive=True)
    await channel.close()


async def test_mismatched_existing_queue_fails_start_clearly(
    start_worker: StartWorker, bus: Bus
) -> None:
    """A classic queue squatting on the usage queue's name stops start-up with a clear reason."""
    from billing_worker.entrypoints.worker import StartupError  # noqa: PLC0415

    channel = await bus.connection.channel()
    await channel.declare_queue(bus.name("billing-worker.usage"), durable=True)
    await channel.close()
    with pytest.raises(StartupError, match="topology mismatch"):
        await start_worker()


async def test_busy_metrics_port_fails_start_clearly(start_worker: StartWorker) -> None:
    """A taken BILLING_HTTP_PORT stops start-up with a message naming the variable."""
    from billing_worker.entrypoints.worker import StartupError  # noqa: PLC0415

    first = await start_worker()
    assert first.http is not None
    with pytest.raises(StartupError, match="BILLING_HTTP_PORT"):
        await start_worker(http_port=first.http.port)

"""HTTP ingest checks events as the consumer does, answers after the broker confirmed the
valid ones, never fails a batch for one bad event, and says what happened when the broker
is away; event lookups say what became of each event."""

from __future__ import annotations

from typing import Any

import pytest

from tests.api.conftest import Api
from tests.clock import now
from tests.e2e.conftest import Bus, StartWorker, encode, event, sample, wait_until


def events(*bodies: dict[str, Any]) -> list[dict[str, Any]]:
    return list(bodies)


async def queued(bus: Bus) -> int:
    return await bus.depth("billing-worker.usage")


async def test_valid_invalid_and_duplicates_in_one_batch(api: Api, bus: Bus) -> None:
    """Two good events, one sent twice, and four bad ones: 202 with a result per event in
    request order; the good ones (duplicate included) are on the queue, confirmed."""
    good = [event("h1"), event("h2")]
    bad = [
        {"not": "an event"},
        event("h3", type="chat.emojis"),
        event("h4", time="2999-01-01T00:00:00Z"),
        "a string",
    ]
    response = await api.post("/v1/events", "ingest", json=[*good, good[0], *bad])
    assert response.status_code == 202, response.text
    results = response.json()["results"]
    assert [r["status"] for r in results] == ["accepted"] * 3 + ["invalid"] * 4
    assert [r.get("reason") for r in results[3:]] == [
        "schema_violation",
        "unknown_event_type",
        "time_in_future",
        "schema_violation",
    ]
    assert [(r["source"], r["id"]) for r in results[:3]] == [
        ("chat-service", "h1"), ("chat-service", "h2"), ("chat-service", "h1")
    ]  # fmt: skip
    await wait_until(lambda: queued(bus), what="the usage on the queue")  # type: ignore[arg-type]
    assert await queued(bus) == 3


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"{not json", 400),
        (b"{}", 422),
        (b"[]", 422),
        (b"[" + b",".join([b"{}"] * 1001) + b"]", 422),
        (b"[" + b"[" * 100_000 + b"]" * 100_000 + b"]", 400),
        (b"[1" + b"0" * 1_000_000 + b"]", 400),
    ],
    ids=["not-json", "object", "empty", "1001-events", "deep", "huge-number"],
)
async def test_bodies_that_are_not_a_batch(api: Api, body: bytes, status: int) -> None:
    """Not JSON, not an array, empty, too many, nested too deep, a million-digit number:
    a clear 4xx problem, nothing published."""
    response = await api.client.post(
        "/v1/events", headers={**api.auth("ingest"), "content-type": "application/json"},
        content=body,
    )  # fmt: skip
    assert response.status_code in (status, 413), response.text[:300]
    assert response.headers["content-type"] == "application/problem+json"


async def test_a_body_over_the_limit_is_413(api: Api) -> None:
    """Over BILLING_API_MAX_BODY_BYTES: 413 naming the variable."""
    api.ctx.settings = api.ctx.settings.model_copy(update={"api_max_body_bytes": 2048})
    response = await api.post("/v1/events", "ingest", json=[event(f"b{i}") for i in range(40)])
    assert response.status_code == 413
    assert "BILLING_API_MAX_BODY_BYTES" in response.json()["detail"]


async def test_without_a_broker_nothing_is_half_sent(offline_api: Api) -> None:
    """No broker: 503, and the results say each valid event was not sent (the invalid
    ones still say why)."""
    response = await offline_api.post("/v1/events", "ingest", json=[event("o1"), {"bad": True}])
    assert response.status_code == 503
    assert [r["status"] for r in response.json()["results"]] == ["not_sent", "invalid"]


async def test_what_became_of_an_event(api: Api, start_worker: StartWorker, bus: Bus) -> None:
    """Through the worker: a recorded event shows its ledger row, a refused one its
    reason and detail, an unknown one is 404."""
    worker = await start_worker()
    await api.post("/v1/events", "ingest", json=[event("l1", subject="acct_l")])
    conflict = event("l1", subject="acct_l", data={"quantity": 999})
    await bus.publish(encode(conflict))
    await wait_until(
        lambda: sample(worker, "billing_events_received_total") >= 2, what="both settled"
    )

    async def looked_up() -> bool:
        rejected = await api.get("/v1/events/chat-service/l1")
        return rejected.status_code == 200

    await wait_until(looked_up, what="the lookup")
    recorded = (await api.get("/v1/events/chat-service/l1")).json()
    assert recorded["status"] == "recorded"
    assert [(r["meter"], r["quantity"]) for r in recorded["ledger"]] == [("tokens", "10")]
    unknown = await api.get("/v1/events/chat-service/never")
    assert unknown.status_code == 404
    bad = event("r9", type="chat.emojis")
    await bus.publish(encode(bad))

    async def rejected() -> bool:
        return (await api.get("/v1/events/chat-service/r9")).status_code == 200

    await wait_until(rejected, what="the rejection recorded")
    found = (await api.get("/v1/events/chat-service/r9")).json()
    assert (found["status"], found["reason"]) == ("rejected", "unknown_event_type")
    assert found["rejected_at"][:4] == str(now().year)

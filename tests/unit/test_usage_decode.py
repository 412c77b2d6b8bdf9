"""Each delivery is decoded on its own, and every kind of bad input gets its own reason."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, cast

import pytest

from billing_worker.adapters.amqp.delivery import Delivery
from billing_worker.consumers.usage import MAX_BODY_BYTES, UsageConsumer
from billing_worker.domain.errors import PermanentError
from tests.fakes import FakeChannel, FakeMessage, usage_body
from tests.pricebooks import DEFAULT_BOOK

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)


def unused_uow() -> Any:
    raise AssertionError("decode must not touch storage")


@pytest.fixture
def consumer() -> UsageConsumer:
    return UsageConsumer(
        unused_uow, DEFAULT_BOOK, max_clock_skew=timedelta(minutes=5), clock=lambda: NOW
    )


def decode(consumer: UsageConsumer, body: bytes, content_type: str | None = "application/json"):  # type: ignore[no-untyped-def]
    message = FakeMessage(body, FakeChannel(), content_type=content_type)
    return consumer.decode(cast(Delivery, message))


def reason_of(consumer: UsageConsumer, body: bytes, content_type: str | None = None) -> str:
    with pytest.raises(PermanentError) as caught:
        decode(consumer, body, content_type)
    assert caught.value.detail, "every rejection explains itself"
    return caught.value.reason


def test_valid_event_becomes_a_record(consumer: UsageConsumer) -> None:
    """A valid event maps to a usage record keyed by (source, id) for its subject."""
    r = decode(consumer, usage_body())
    assert r.key == ("chat-service", "evt-1")
    assert r.account == "acct_42"
    assert r.quantity == Decimal(1234)
    assert r.dimensions == {"model": "gpt-4"}


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"not json at all", "invalid_json"),
        (b'{"specversion": "1.0",', "invalid_json"),
        (b"\xff\xfe\x00garbage", "invalid_json"),
        (b"", "invalid_json"),
        (b"[1, 2, 3]", "schema_violation"),
        (b'"a string"', "schema_violation"),
        (usage_body(specversion="2.0"), "schema_violation"),
        (usage_body(data={"quantity": -5}), "schema_violation"),
        (usage_body(time="yesterday"), "schema_violation"),
        (usage_body(unexpected=True), "schema_violation"),
        (usage_body(type="chat.emojis"), "unknown_event_type"),
        (usage_body(time="2026-11-21T12:06:00Z"), "time_in_future"),
        (b"{" + b" " * MAX_BODY_BYTES + b"}", "too_large"),
    ],
)
def test_bad_input_reasons(consumer: UsageConsumer, body: bytes, reason: str) -> None:
    """Each malformed delivery maps to its machine-readable dead-letter reason."""
    assert reason_of(consumer, body) == reason


def test_non_json_content_type_refused(consumer: UsageConsumer) -> None:
    """A delivery declared as something other than JSON is refused with its own reason."""
    assert reason_of(consumer, usage_body(), "text/plain") == "unsupported_content_type"


@pytest.mark.parametrize("content_type", [None, "application/json; charset=utf-8"])
def test_json_content_types_accepted(consumer: UsageConsumer, content_type: str | None) -> None:
    """No content type, or JSON with parameters, is fine."""
    assert decode(consumer, usage_body(), content_type).event_id == "evt-1"


def test_schema_detail_names_the_field(consumer: UsageConsumer) -> None:
    """The human-readable detail points at the offending field."""
    with pytest.raises(PermanentError) as caught:
        decode(consumer, usage_body(data={"quantity": "-1"}))
    assert "data.quantity" in caught.value.detail


@pytest.mark.parametrize(
    "tokens",
    ["1e999999999", "1" * 40, "0.0000000000000000001", -3, "NaN", "lots", True],
)
def test_meter_values_from_data_fields_are_bounded(consumer: UsageConsumer, tokens: object) -> None:
    """A meter reading a named data field gets the same bounds as data.quantity: absurd,
    over-precise, negative or non-numeric values are schema violations at decode, never a
    batch that fails (and comes back) for ever."""
    body = usage_body(
        type="ai.inference", time="2026-11-21T11:00:00Z", data={"tokens": tokens, "model": "gpt-4"}
    )
    assert reason_of(consumer, body) == "schema_violation"


def test_38_digit_quantities_sum_exactly() -> None:
    """Aggregating the largest quantities the schema allows never rounds (Python's default
    context would keep 28 digits)."""
    from billing_worker.domain.usage import (  # noqa: PLC0415
        UsageRecord,
        aggregate_deltas,
        ledger_entries_for,
    )

    big = Decimal("12345678901234567890.123456789012345678")
    records = [
        UsageRecord(
            source="s",
            event_id=f"e{i}",
            event_type="chat.tokens",
            account="a",
            occurred_at=NOW,
            quantity=big,
        )
        for i in range(3)
    ]
    (delta,) = aggregate_deltas(ledger_entries_for(records, DEFAULT_BOOK))
    assert delta.quantity == Decimal("37037036703703703670.370370367037037034")

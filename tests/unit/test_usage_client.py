"""The client helpers without a broker: the usage event a service builds is the one the worker
accepts, keys are time-ordered, and the package stays free of the worker's heavy imports."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest

from billing_worker.client import (
    InvalidUsageEvent,
    UnknownBillingEventType,
    build_usage_event,
    new_event_id,
    parse_billing_event,
    usage_event_body,
    usage_routing_key,
)
from billing_worker.client.usage_event import MAX_BODY_BYTES
from billing_worker.consumers import usage as worker_usage
from schemas import UsageEvent
from tests.unit.test_event_schemas import example_events

AT = datetime(2026, 11, 21, 11, 15, tzinfo=timezone(timedelta(hours=1)))


def chat_tokens(**overrides: object) -> UsageEvent:
    arguments: dict[str, object] = {
        "source": "chat-service",
        "event_type": "chat.tokens",
        "account": "acct_42",
        "quantity": 1234,
        "dimensions": {"model": "gpt-4"},
        "event_id": "b6f1c0de",
        "time": AT,
    }
    return build_usage_event(**(arguments | overrides))  # type: ignore[arg-type]


class TestBuildUsageEvent:
    def test_envelope_from_arguments(self) -> None:
        """Arguments become the CloudEvents envelope: account is the subject, dimensions sit
        next to the quantity in data, time is normalised to UTC."""
        body = json.loads(usage_event_body(chat_tokens()))
        assert body == {
            "specversion": "1.0",
            "id": "b6f1c0de",
            "source": "chat-service",
            "type": "chat.tokens",
            "subject": "acct_42",
            "time": "2026-11-21T10:15:00Z",
            "datacontenttype": "application/json",
            "data": {"quantity": "1234", "model": "gpt-4"},
        }

    def test_worker_decodes_exactly_what_was_built(self) -> None:
        """The body passes the worker's own decoder and means the same event, exact decimals
        included."""
        event = chat_tokens(quantity=Decimal("0.000000000000000001"), dimensions={"n": None})
        decoded = worker_usage.parse_usage_event(usage_event_body(event), "application/json")
        assert decoded == event
        assert decoded.data.quantity == Decimal("1E-18")

    def test_same_event_same_bytes(self) -> None:
        """Re-encoding a decoded event gives the same bytes, so a republished event is a
        duplicate, never a conflict."""
        body = usage_event_body(chat_tokens(quantity=Decimal("12.50")))
        assert usage_event_body(UsageEvent.model_validate_json(body)) == body

    def test_defaults(self) -> None:
        """Without them, quantity is 1, time is an aware UTC now, and the id a fresh UUIDv7."""
        event = build_usage_event(source="api", event_type="api.call", account="acct_1")
        assert event.data.quantity == Decimal(1)
        assert event.time.tzinfo == UTC
        assert uuid.UUID(event.id).version == 7

    @pytest.mark.parametrize(
        ("overrides", "named"),
        [
            ({"account": ""}, "account (subject)"),
            ({"event_type": "chat tokens"}, "event_type (type)"),
            ({"event_id": ""}, "event_id (id)"),
            ({"quantity": -1}, "data.quantity"),
            ({"quantity": True}, "data.quantity"),
            ({"time": datetime(2026, 11, 21)}, "time"),  # noqa: DTZ001 - naive on purpose
            ({"time": "2026-11-21T10:15:00Z"}, "time must be a datetime"),
            ({"dimensions": {"quantity": 2}}, "quantity="),
            ({"dimensions": {"tags": ["a"]}}, "data.tags"),
            ({"quantity": float("inf")}, "JSON"),
            ({"dimensions": {"price": Decimal(1)}}, "JSON"),
        ],
    )
    def test_invalid_arguments_say_which(self, overrides: dict[str, object], named: str) -> None:
        """Each invalid argument raises InvalidUsageEvent naming the argument at fault."""
        with pytest.raises(InvalidUsageEvent, match=named.replace("(", r"\(").replace(")", r"\)")):
            chat_tokens(**overrides)

    def test_routing_key(self) -> None:
        """The routing key is usage.<source>.<type>; one over 255 bytes is refused."""
        assert usage_routing_key("chat-service", "chat.tokens") == "usage.chat-service.chat.tokens"
        with pytest.raises(InvalidUsageEvent, match="255"):
            chat_tokens(source="s" * 200, event_type="t" * 60)

    def test_body_limit_is_the_workers(self) -> None:
        """The helper refuses what the worker would dead-letter as too_large."""
        assert worker_usage.MAX_BODY_BYTES == MAX_BODY_BYTES


class TestEventIds:
    def test_uuid7_layout(self) -> None:
        """Generated keys are RFC 9562 UUIDv7 carrying the given millisecond timestamp."""
        value = uuid.UUID(new_event_id(1_795_000_000_000))
        assert (value.version, value.variant) == (7, uuid.RFC_4122)
        assert value.int >> 80 == 1_795_000_000_000

    def test_ordered_by_time_and_unique(self) -> None:
        """Keys of later milliseconds sort after earlier ones; keys never repeat."""
        assert new_event_id(1_000) < new_event_id(1_001) < new_event_id(2**40)
        assert len({new_event_id(5) for _ in range(1000)}) == 1000

    def test_timestamp_must_fit(self) -> None:
        """A timestamp outside 48 bits is refused rather than wrapped."""
        with pytest.raises(ValueError, match="48 bits"):
            new_event_id(2**48)


class TestParseBillingEvent:
    @pytest.mark.parametrize("event_type", ["quota.exceeded", "invoice.paid", "usage.rejected"])
    def test_typed_envelope(self, event_type: str) -> None:
        """A body parses into the envelope class of its type, equal to what was sent."""
        event = example_events()[event_type]
        assert parse_billing_event(event.model_dump_json().encode()) == event

    @pytest.mark.parametrize("body", [b'{"type": "invoice.voided"}', b"[]", b'{"id": "x"}'])
    def test_unknown_type_refused(self, body: bytes) -> None:
        """A type this version of the schemas does not model is an error, not a guess."""
        with pytest.raises(UnknownBillingEventType):
            parse_billing_event(body)


def test_client_imports_no_worker_internals() -> None:
    """Importing billing_worker.client loads aio-pika and schemas, not the database, Stripe,
    metrics or the worker's consumers."""
    code = (
        "import sys, billing_worker.client\n"
        "heavy = ('sqlalchemy', 'psycopg', 'alembic', 'stripe', 'prometheus_client', "
        "'structlog', 'tenacity', 'billing_worker.consumers', 'billing_worker.service', "
        "'billing_worker.adapters.postgres')\n"
        "print(sorted(m for m in sys.modules if m.startswith(heavy)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"

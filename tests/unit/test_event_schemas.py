"""Wire models of what the worker publishes or answers: billing events and the quota check."""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from pydantic import BaseModel, ValidationError

from schemas import (
    EVENT_TYPES,
    BillingEvent,
    CreditsEventData,
    CreditsExhaustedEvent,
    CreditsLowEvent,
    InvoiceLineData,
    InvoicePaidEvent,
    InvoicePaymentData,
    InvoicePaymentFailedEvent,
    InvoiceReadyData,
    InvoiceReadyEvent,
    QuotaCheckError,
    QuotaCheckReply,
    QuotaCheckRequest,
    QuotaEventData,
    QuotaExceededEvent,
    QuotaWarningEvent,
    SubscriptionChangedData,
    SubscriptionChangedEvent,
    UsageRejectedData,
    UsageRejectedEvent,
    deterministic_event_id,
)
from schemas.events import DECIMAL_PATTERN, EVENT_ID_NAMESPACE, format_decimal
from schemas.export import JSON_DIR, MODELS, WRITTEN_BY_WORKER, render, schema_mode

CONTRACT_REQUEST = '{"account": "acct_42", "meter": "tokens", "quantity": 2000}'
"""The quota-check request of CONTRACTS.md, verbatim."""

CONTRACT_REPLY = """{"account": "acct_42", "meter": "tokens",
  "allowed": true, "used": "81234", "limit": "100000", "remaining": "18766",
  "period_end": "2026-12-01T00:00:00Z"}"""
"""The quota-check reply of CONTRACTS.md, verbatim."""

PERIOD_START = datetime(2026, 11, 1, tzinfo=UTC)
PERIOD_END = datetime(2026, 12, 1, tzinfo=UTC)
AT = datetime(2026, 11, 21, 10, 15, tzinfo=UTC)


def errors_of(
    model: type[BaseModel], body: str | dict[str, Any]
) -> list[tuple[str, tuple[Any, ...]]]:
    """(error type, location) of every validation error of ``body`` (JSON text or a dict)."""
    text = body if isinstance(body, str) else json.dumps(body)
    with pytest.raises(ValidationError) as caught:
        model.model_validate_json(text)
    return [(e["type"], tuple(e["loc"])) for e in caught.value.errors()]


def published_validator(model: type[BaseModel]) -> Draft202012Validator:
    """A JSON Schema validator for the file ``model`` is published as."""
    (filename,) = [name for name, m in MODELS.items() if m is model]
    schema = json.loads((JSON_DIR / filename).read_text(encoding="utf-8"))
    return Draft202012Validator(schema)


def quota_data(**overrides: Any) -> QuotaEventData:
    """A valid quota payload: 81% of a 100000-token limit."""
    fields: dict[str, Any] = {
        "meter": "tokens",
        "threshold": 80,
        "used": Decimal(81234),
        "limit": Decimal(100000),
        "period_start": PERIOD_START,
        "period_end": PERIOD_END,
        "plan": "FREE",
        "enforcement": "hard",
    }
    return QuotaEventData(**(fields | overrides))


def invoice_data(**overrides: Any) -> InvoicePaymentData:
    """A valid invoice payment payload: 990 cents of usd, synced from our invoice inv_7."""
    fields: dict[str, Any] = {
        "invoice_id": "inv_7",
        "stripe_invoice_id": "in_1PqRsTuVwXyZ",
        "amount": Decimal("9.90"),
        "currency": "usd",
        "attempt_count": 1,
        "failure_message": None,
        "hosted_invoice_url": "https://invoice.stripe.com/i/acct_1/test_abc",
    }
    return InvoicePaymentData(**(fields | overrides))


def ready_data() -> InvoiceReadyData:
    """A closed period: PLUS fee, 3 websites, a negative adjustment of an earlier month."""
    lines = [
        InvoiceLineData(
            line_no=1,
            kind="plan_fee",
            description="PLUS plan",
            meter=None,
            quantity=Decimal(1),
            billable=Decimal(1),
            amount=Decimal("9.90"),
            refers_to_period_start=None,
        ),
        InvoiceLineData(
            line_no=2,
            kind="usage",
            description="websites_generated: 3 at 0.50",
            meter="websites_generated",
            quantity=Decimal(3),
            billable=Decimal(3),
            amount=Decimal("1.50"),
            refers_to_period_start=None,
        ),
        InvoiceLineData(
            line_no=3,
            kind="adjustment",
            description="late usage of 2026-10",
            meter="peak_storage",
            quantity=Decimal(2),
            billable=Decimal(2),
            amount=Decimal("-0.40"),
            refers_to_period_start=datetime(2026, 10, 1, tzinfo=UTC),
        ),
    ]
    return InvoiceReadyData(
        invoice_id="inv_acct_42_202611",
        period_start=PERIOD_START,
        period_end=PERIOD_END,
        plan="PLUS",
        lines=lines,
        subtotal=Decimal("11.00"),
        credits_applied=Decimal(0),
        total=Decimal("11.00"),
        currency="usd",
        pricebook_version="2026-11-launch",
    )


def example_events() -> dict[str, BillingEvent[Any]]:
    """One valid event of every type, built the way the worker builds them."""
    common: dict[str, Any] = {"subject": "acct_42", "time": AT}
    credits_low = CreditsEventData(
        balance=Decimal("10.90"), threshold=Decimal(50), shortfall=Decimal(0), meter="tokens"
    )
    exhausted = CreditsEventData(
        balance=Decimal(0), threshold=Decimal(0), shortfall=Decimal("12.5"), meter=None
    )
    rejected = UsageRejectedData(
        reason="invalid_json",
        detail="Expecting value: line 1 column 1",
        source=None,
        original_id=None,
        original_type=None,
        queue="billing-worker.usage",
    )
    changed = SubscriptionChangedData(
        plan="PRO",
        status="active",
        previous_plan="FREE",
        previous_status=None,
        current_period_start=PERIOD_START,
        current_period_end=PERIOD_END,
        cause="stripe",
    )
    events: list[BillingEvent[Any]] = [
        QuotaWarningEvent(id="w", data=quota_data(), **common),
        QuotaExceededEvent(id="x", data=quota_data(threshold=100), **common),
        CreditsLowEvent(id="l", data=credits_low, **common),
        CreditsExhaustedEvent(id="e", data=exhausted, **common),
        UsageRejectedEvent(id="r", data=rejected, **common),
        SubscriptionChangedEvent(id="s", data=changed, **common),
        InvoiceReadyEvent(id="i", data=ready_data(), **common),
        InvoicePaidEvent(id="p", data=invoice_data(), **common),
        InvoicePaymentFailedEvent(
            id="f",
            data=invoice_data(attempt_count=2, failure_message="Your card was declined."),
            **common,
        ),
    ]
    return {event.type: event for event in events}


def reply(**overrides: Any) -> dict[str, Any]:
    """The contract's reply as a dict, with ``overrides`` applied."""
    return dict(json.loads(CONTRACT_REPLY)) | overrides


class TestQuotaCheckReply:
    def test_contract_example_round_trips_exactly(self) -> None:
        """The reply of CONTRACTS.md parses and serialises back to exactly the same JSON."""
        parsed = QuotaCheckReply.model_validate_json(CONTRACT_REPLY)
        assert parsed.used == Decimal(81234)
        assert parsed.period_end == PERIOD_END
        assert json.loads(parsed.model_dump_json()) == json.loads(CONTRACT_REPLY)

    def test_built_reply_serialises_as_in_contract(self) -> None:
        """A reply built from Decimals and an aware datetime gives the contract's JSON."""
        built = QuotaCheckReply(
            account="acct_42",
            meter="tokens",
            allowed=True,
            used=Decimal(81234),
            limit=Decimal("1E+5"),
            remaining=Decimal(18766),
            period_end=datetime(2026, 11, 30, 19, tzinfo=timezone(timedelta(hours=-5))),
        )
        assert json.loads(built.model_dump_json()) == json.loads(CONTRACT_REPLY)

    def test_unlimited_meter_has_null_limit_and_remaining(self) -> None:
        """With no limit, limit and remaining are present and null (not left out)."""
        parsed = QuotaCheckReply.model_validate_json(json.dumps(reply(limit=None, remaining=None)))
        dumped = json.loads(parsed.model_dump_json())
        assert dumped["limit"] is None
        assert dumped["remaining"] is None
        assert dumped["used"] == "81234"

    @pytest.mark.parametrize("field", ["limit", "remaining", "allowed", "period_end", "used"])
    def test_every_field_required(self, field: str) -> None:
        """Even the nullable fields must be present: a reply names all seven."""
        body = reply()
        del body[field]
        assert ("missing", (field,)) in errors_of(QuotaCheckReply, body)

    @pytest.mark.parametrize(
        ("field", "value"),
        [("allowed", "yes"), ("allowed", 1), ("used", 81234), ("used", "-1"), ("account", 42)],
    )
    def test_wrong_types_refused(self, field: str, value: object) -> None:
        """Strict: no coercion of booleans, numbers for decimal strings, or negative usage."""
        assert any(
            loc == (field,) for _, loc in errors_of(QuotaCheckReply, reply(**{field: value}))
        )

    def test_reply_matches_published_schema(self) -> None:
        """The serialised contract reply and an unlimited reply satisfy the published schema."""
        validator = published_validator(QuotaCheckReply)
        for body in (reply(), reply(limit=None, remaining=None)):
            instance = json.loads(
                QuotaCheckReply.model_validate_json(json.dumps(body)).model_dump_json()
            )
            assert list(validator.iter_errors(instance)) == []
        assert list(validator.iter_errors(reply(used=81234)))  # a JSON number is not a string


class TestQuotaCheckRequest:
    def test_contract_example_is_valid(self) -> None:
        """The request of CONTRACTS.md validates with an exact quantity."""
        request = QuotaCheckRequest.model_validate_json(CONTRACT_REQUEST)
        assert (request.account, request.meter, request.quantity) == (
            "acct_42",
            "tokens",
            Decimal(2000),
        )

    def test_quantity_defaults_to_one(self) -> None:
        """A request without quantity asks about one unit."""
        request = QuotaCheckRequest.model_validate_json('{"account": "a", "meter": "m"}')
        assert request.quantity == Decimal(1)

    @pytest.mark.parametrize(("raw", "expected"), [('"12.5"', "12.5"), ("0.1", "0.1"), ("0", "0")])
    def test_quantity_accepts_number_or_decimal_string(self, raw: str, expected: str) -> None:
        """Quantity may be a JSON number or a decimal string, and stays exact."""
        body = f'{{"account": "a", "meter": "m", "quantity": {raw}}}'
        assert QuotaCheckRequest.model_validate_json(body).quantity == Decimal(expected)

    @pytest.mark.parametrize(
        ("body", "error"),
        [
            ({"meter": "tokens"}, ("missing", ("account",))),
            ({"account": 5, "meter": "tokens"}, ("string_type", ("account",))),
            ({"account": "", "meter": "tokens"}, ("string_too_short", ("account",))),
            ({"account": "a" * 257, "meter": "tokens"}, ("string_too_long", ("account",))),
            ({"account": "a"}, ("missing", ("meter",))),
            ({"account": "a", "meter": "m" * 129}, ("string_too_long", ("meter",))),
            ({"account": "a", "meter": 7}, ("string_type", ("meter",))),
            ({"account": "a", "meter": "m", "quantity": -1}, ("greater_than_equal", ("quantity",))),
            ({"account": "a", "meter": "m", "quantity": "NaN"}, ("finite_number", ("quantity",))),
            ({"account": "a", "meter": "m", "quantity": True}, ("decimal_type", ("quantity",))),
            ({"account": "a", "meter": "m", "quantity": "ten"}, ("decimal_parsing", ("quantity",))),
            ({"account": "a", "meter": "m", "quantity": None}, ("decimal_type", ("quantity",))),
            (
                {"account": "a", "meter": "m", "quantity": "0.1234567890123456789"},
                ("decimal_max_places", ("quantity",)),
            ),
            ({"account": "a", "meter": "m", "plan": "PRO"}, ("extra_forbidden", ("plan",))),
        ],
    )
    def test_malformed_requests_refused(
        self, body: dict[str, Any], error: tuple[str, tuple[str, ...]]
    ) -> None:
        """Each malformed request fails with the expected error at the offending field."""
        assert error in errors_of(QuotaCheckRequest, body)

    def test_python_construction_is_strict_too(self) -> None:
        """Built in Python, a float quantity or a non-string account is refused as well."""
        with pytest.raises(ValidationError):
            QuotaCheckRequest(account="a", meter="m", quantity=1.5)  # type: ignore[arg-type]
        with pytest.raises(ValidationError):
            QuotaCheckRequest(account=5, meter="m")  # type: ignore[arg-type]

    def test_published_schema_describes_validation(self) -> None:
        """The request schema is what the worker accepts: quantity optional, extras refused."""
        schema = json.loads((JSON_DIR / "quota-check-request.v1.json").read_text(encoding="utf-8"))
        assert set(schema["required"]) == {"account", "meter"}
        assert schema["additionalProperties"] is False
        validator = published_validator(QuotaCheckRequest)
        assert list(validator.iter_errors(json.loads(CONTRACT_REQUEST))) == []
        assert list(validator.iter_errors({"account": "a", "meter": "m", "quantity": -1}))


class TestQuotaCheckError:
    def test_round_trips(self) -> None:
        """An error reply is exactly {"error": "..."}."""
        body = {"error": "account: Field required"}
        parsed = QuotaCheckError.model_validate_json(json.dumps(body))
        assert json.loads(parsed.model_dump_json()) == body

    @pytest.mark.parametrize(
        "body", [{}, {"error": ""}, {"error": 1}, {"error": "x", "allowed": False}]
    )
    def test_malformed_error_refused(self, body: dict[str, Any]) -> None:
        """The error text is a non-empty string and the only field."""
        assert errors_of(QuotaCheckError, body)


class TestDecimalStrings:
    @pytest.mark.parametrize(
        ("value", "wire"),
        [
            (Decimal("100000"), "100000"),
            (Decimal("1E+5"), "100000"),
            (Decimal("1.0E+5"), "100000"),
            (Decimal("10.90"), "10.90"),
            (Decimal("1.5E-3"), "0.0015"),
            (Decimal("-0"), "0"),
            (Decimal("0E-2"), "0.00"),
            (Decimal("-3.25"), "-3.25"),
        ],
    )
    def test_normalised_to_plain_notation(self, value: Decimal, wire: str) -> None:
        """Decimals are written positionally: no exponent, no negative zero, scale kept."""
        assert format_decimal(value) == wire
        built = QuotaCheckReply(
            account="a",
            meter="m",
            allowed=True,
            used=Decimal(0),
            limit=None,
            remaining=value,
            period_end=PERIOD_END,
        )
        assert json.loads(built.model_dump_json())["remaining"] == wire

    @given(
        st.builds(
            lambda coefficient, exponent: Decimal(coefficient).scaleb(exponent),
            st.integers(min_value=-(10**25), max_value=10**25),
            st.integers(min_value=-25, max_value=25),
        )
    )
    def test_any_decimal_is_an_exact_plain_string(self, value: Decimal) -> None:
        """Every finite decimal serialises to a string matching the schema pattern, exactly."""
        data = CreditsEventData(
            balance=abs(value), threshold=Decimal(0), shortfall=Decimal(0), meter=None
        )
        wire = json.loads(data.model_dump_json())["balance"]
        assert isinstance(wire, str)
        assert re.fullmatch(DECIMAL_PATTERN, wire)
        assert "E" not in wire.upper()
        assert Decimal(wire) == abs(value)
        assert CreditsEventData.model_validate_json(data.model_dump_json()) == data

    def test_python_dump_keeps_decimals(self) -> None:
        """Only JSON output turns decimals into strings; Python dumps stay exact Decimals."""
        dumped = quota_data().model_dump()
        assert dumped["used"] == Decimal(81234)
        assert type(dumped["used"]) is Decimal

    @pytest.mark.parametrize(
        "raw", ["81234", "81234.5", "true", '"1e5"', '"NaN"', '"Infinity"', '" 1"']
    )
    def test_json_numbers_and_exponents_refused(self, raw: str) -> None:
        """On the wire a decimal is a plain decimal string; numbers (floats) and exponents fail."""
        body = json.loads(quota_data().model_dump_json())
        text = json.dumps(body).replace('"used": "81234"', f'"used": {raw}')
        assert text != json.dumps(body)
        assert ("value_error", ("used",)) in errors_of(QuotaEventData, text)

    @pytest.mark.parametrize("value", [1.5, 81234, "81234", Decimal("NaN"), Decimal("Infinity")])
    def test_python_non_decimals_refused(self, value: object) -> None:
        """Built in Python, only finite Decimal instances are accepted (no float, no str)."""
        with pytest.raises(ValidationError) as caught:
            quota_data(used=value)
        assert [e["loc"] for e in caught.value.errors()] == [("used",)]

    def test_negative_usage_refused(self) -> None:
        """Usage, limits and balances cannot be negative."""
        with pytest.raises(ValidationError):
            quota_data(used=Decimal(-1))
        with pytest.raises(ValidationError):
            CreditsEventData(
                balance=Decimal("-0.01"), threshold=Decimal(0), shortfall=Decimal(0), meter=None
            )


class TestTimes:
    def test_offset_converted_to_utc_and_written_with_z(self) -> None:
        """An aware time in another offset is stored in UTC and written as ...Z."""
        event = QuotaWarningEvent(
            id="i",
            subject="acct_42",
            time=datetime(2026, 11, 21, 12, 15, tzinfo=timezone(timedelta(hours=2))),
            data=quota_data(),
        )
        assert event.time == AT
        assert event.time.utcoffset() == timedelta(0)
        body = json.loads(event.model_dump_json())
        assert body["time"] == "2026-11-21T10:15:00Z"
        assert body["data"]["period_start"] == "2026-11-01T00:00:00Z"
        assert body["data"]["period_end"] == "2026-12-01T00:00:00Z"

    def test_json_offset_input_normalised(self) -> None:
        """A JSON time with an offset comes back out as the same instant in Z."""
        body = reply(period_end="2026-12-01T01:00:00+01:00")
        parsed = QuotaCheckReply.model_validate_json(json.dumps(body))
        assert json.loads(parsed.model_dump_json())["period_end"] == "2026-12-01T00:00:00Z"

    def test_fractional_seconds_kept(self) -> None:
        """Sub-second precision survives, still in UTC with Z."""
        event = example_events()["quota.warning"].model_copy(
            update={"time": datetime(2026, 11, 21, 10, 15, 0, 5, tzinfo=UTC)}
        )
        assert json.loads(event.model_dump_json())["time"] == "2026-11-21T10:15:00.000005Z"

    @pytest.mark.parametrize(
        "when", ["2026-12-01T00:00:00", "0001-01-01T00:00:00+05:00", "1969-12-31T00:00:00Z"]
    )
    def test_naive_or_implausible_times_refused(self, when: str) -> None:
        """Naive times are ambiguous; times outside 1970-9998 are bugs."""
        assert any(
            loc == ("period_end",) for _, loc in errors_of(QuotaCheckReply, reply(period_end=when))
        )

    def test_naive_python_datetime_refused(self) -> None:
        """Built in Python, a naive datetime is refused too."""
        with pytest.raises(ValidationError):
            quota_data(period_start=datetime(2026, 11, 1))  # noqa: DTZ001 - the point of the test

    def test_period_must_run_forward(self) -> None:
        """A quota period ends after it starts."""
        with pytest.raises(ValidationError, match="period_start must be before period_end"):
            quota_data(period_start=PERIOD_END, period_end=PERIOD_START)


class TestDeterministicEventId:
    def test_same_inputs_same_id(self) -> None:
        """The id is a pure function of its inputs, so a redelivery carries the same id."""
        first = deterministic_event_id("quota.warning", "acct_42", "tokens", "2026-11-01", "80")
        again = deterministic_event_id("quota.warning", "acct_42", "tokens", "2026-11-01", "80")
        assert first == again

    def test_value_is_pinned(self) -> None:
        """The encoding is part of the contract: changing it would defeat subscribers' dedupe."""
        assert (
            deterministic_event_id("quota.warning", "acct", "tokens")
            == "c62cfa52-d1c1-53d6-8c0e-ea9a98ce9924"
        )

    def test_is_a_uuid5_in_the_billing_namespace(self) -> None:
        """The id is a version-5, RFC variant UUID equal to uuid5 of the length-prefixed name."""
        value = uuid.UUID(deterministic_event_id("credits.low", "acct_42", "50"))
        assert value.version == 5
        assert value.variant == uuid.RFC_4122
        assert value == uuid.uuid5(EVENT_ID_NAMESPACE, "11:credits.low7:acct_422:50")

    @pytest.mark.parametrize(
        ("left", "right"),
        [
            (("t", "a\x1fb", "c"), ("t", "a", "b\x1fc")),
            (("t", "ab", "c"), ("t", "a", "bc")),
            (("t", "a"), ("t", "a", "")),
            (("t",), ("t", "")),
            (("t", "1:a"), ("t", "1", "a")),
            (("t:x", "a"), ("t", "x", "a")),
            (("quota.warning", "acct"), ("quota.exceeded", "acct")),
        ],
    )
    def test_boundaries_cannot_collide(self, left: tuple[str, ...], right: tuple[str, ...]) -> None:
        """Moving text across part boundaries (even separator characters) changes the id."""
        assert deterministic_event_id(*left) != deterministic_event_id(*right)

    @given(
        st.tuples(st.text(max_size=8), st.lists(st.text(max_size=8), max_size=4)),
        st.tuples(st.text(max_size=8), st.lists(st.text(max_size=8), max_size=4)),
    )
    @example(("t", ["a\x1fb", "c"]), ("t", ["a", "b\x1fc"]))
    @example(("t", ["a"]), ("t", ["a"]))
    def test_ids_equal_exactly_when_inputs_equal(
        self, left: tuple[str, list[str]], right: tuple[str, list[str]]
    ) -> None:
        """Property: two ids are equal if and only if type and every part are equal."""
        left_id = deterministic_event_id(left[0], *left[1])
        right_id = deterministic_event_id(right[0], *right[1])
        assert (left_id == right_id) == (left == right)
        assert left_id == deterministic_event_id(left[0], *left[1])

    def test_lone_surrogates_do_not_crash(self) -> None:
        """Any Python string is a valid part, even one that is not valid UTF-8."""
        assert deterministic_event_id("t", "\ud800") != deterministic_event_id("t", "\ud801")

    def test_non_string_part_refused(self) -> None:
        """Parts must be strings: str(5) and "5" would otherwise be indistinguishable bugs."""
        with pytest.raises(TypeError):
            deterministic_event_id("t", 5)  # type: ignore[arg-type]


class TestEnvelopes:
    def test_event_types_cover_every_envelope(self) -> None:
        """EVENT_TYPES maps each type string to the envelope whose type it is."""
        assert set(EVENT_TYPES) == {
            "quota.warning",
            "quota.exceeded",
            "credits.low",
            "credits.exhausted",
            "usage.rejected",
            "subscription.changed",
            "invoice.ready",
            "invoice.paid",
            "invoice.payment_failed",
        }
        for event_type, envelope in EVENT_TYPES.items():
            assert envelope.model_fields["type"].default == event_type

    @pytest.mark.parametrize("event_type", sorted(EVENT_TYPES))
    def test_envelope_defaults_and_round_trip(self, event_type: str) -> None:
        """Built with id, subject, time and data, an event has every CloudEvents attribute,
        matches its published schema and parses back equal."""
        event = example_events()[event_type]
        body = json.loads(event.model_dump_json())
        assert {k: body[k] for k in ("specversion", "source", "type", "datacontenttype")} == {
            "specversion": "1.0",
            "source": "billing-worker",
            "type": event_type,
            "datacontenttype": "application/json",
        }
        assert body["subject"] == "acct_42"
        assert body["time"] == "2026-11-21T10:15:00Z"
        assert list(published_validator(type(event)).iter_errors(body)) == []
        assert EVENT_TYPES[event_type].model_validate_json(event.model_dump_json()) == event

    @pytest.mark.parametrize("event_type", sorted(EVENT_TYPES))
    def test_wrong_type_refused(self, event_type: str) -> None:
        """An envelope only accepts its own type string, including any other billing type."""
        envelope = EVENT_TYPES[event_type]
        body = json.loads(example_events()[event_type].model_dump_json())
        for other in [*EVENT_TYPES, "quota.Warning", ""]:
            if other != event_type:
                errors = errors_of(envelope, body | {"type": other})
                assert ("literal_error", ("type",)) in errors
        published = published_validator(envelope)
        assert list(published.iter_errors(body | {"type": "invoice.voided"}))

    @pytest.mark.parametrize(
        ("field", "value"),
        [
            ("source", "chat-service"),
            ("specversion", "0.3"),
            ("datacontenttype", "text/plain"),
            ("subject", ""),
            ("id", ""),
            ("time", "2026-11-21T10:15:00"),
        ],
    )
    def test_fixed_attributes_enforced(self, field: str, value: str) -> None:
        """source, specversion and datacontenttype are fixed; id/subject non-empty; time aware."""
        body = json.loads(example_events()["credits.low"].model_dump_json())
        assert any(loc == (field,) for _, loc in errors_of(CreditsLowEvent, body | {field: value}))

    def test_extra_fields_refused_in_envelope_and_data(self) -> None:
        """Neither the envelope nor a payload accepts fields the contract does not define."""
        body = json.loads(example_events()["usage.rejected"].model_dump_json())
        assert ("extra_forbidden", ("dataschema",)) in errors_of(
            UsageRejectedEvent, body | {"dataschema": "x"}
        )
        body["data"]["extra"] = 1
        assert ("extra_forbidden", ("data", "extra")) in errors_of(UsageRejectedEvent, body)

    def test_wrong_payload_refused(self) -> None:
        """A quota envelope does not accept a credits payload."""
        body = json.loads(example_events()["quota.warning"].model_dump_json())
        body["data"] = json.loads(example_events()["credits.low"].model_dump_json())["data"]
        errors = errors_of(QuotaWarningEvent, body)
        assert ("missing", ("data", "meter")) not in errors
        assert ("missing", ("data", "threshold")) not in errors
        assert ("missing", ("data", "period_start")) in errors

    def test_rejected_nulls_are_written(self) -> None:
        """usage.rejected writes unreadable source/id/type as explicit nulls."""
        data = json.loads(example_events()["usage.rejected"].model_dump_json())["data"]
        assert data == {
            "reason": "invalid_json",
            "detail": "Expecting value: line 1 column 1",
            "source": None,
            "original_id": None,
            "original_type": None,
            "queue": "billing-worker.usage",
        }

    def test_credits_payload_wire_form(self) -> None:
        """credits.low data carries balance, threshold and shortfall as decimal strings."""
        data = json.loads(example_events()["credits.low"].model_dump_json())["data"]
        assert data == {"balance": "10.90", "threshold": "50", "shortfall": "0", "meter": "tokens"}

    @pytest.mark.parametrize("threshold", [0, 1001])
    def test_quota_threshold_bounded(self, threshold: int) -> None:
        """The threshold is a percentage from 1 to 1000."""
        with pytest.raises(ValidationError):
            quota_data(threshold=threshold)

    def test_warning_and_exceeded_split_at_100_percent(self) -> None:
        """quota.warning is below 100%, quota.exceeded at or above it."""
        with pytest.raises(ValidationError, match=r"use quota\.exceeded"):
            QuotaWarningEvent(id="i", subject="a", time=AT, data=quota_data(threshold=100))
        with pytest.raises(ValidationError, match=r"use quota\.warning"):
            QuotaExceededEvent(id="i", subject="a", time=AT, data=quota_data(threshold=99))
        assert QuotaExceededEvent(id="i", subject="a", time=AT, data=quota_data(threshold=150))

    def test_exhausted_means_zero(self) -> None:
        """credits.exhausted carries balance 0 and threshold 0."""
        data = CreditsEventData(
            balance=Decimal(1), threshold=Decimal(0), shortfall=Decimal(0), meter=None
        )
        with pytest.raises(ValidationError, match="balance 0"):
            CreditsExhaustedEvent(id="i", subject="a", time=AT, data=data)

    def test_events_are_immutable(self) -> None:
        """A built event cannot be changed after its id was derived."""
        event = example_events()["quota.warning"]
        with pytest.raises(ValidationError):
            event.subject = "acct_43"  # type: ignore[misc]


class TestInvoicePaymentEvents:
    def test_paid_wire_form(self) -> None:
        """invoice.paid data carries the amount as a major-unit decimal string and every field,
        nulls included."""
        body = json.loads(example_events()["invoice.paid"].model_dump_json())
        assert body["type"] == "invoice.paid"
        assert body["data"] == {
            "invoice_id": "inv_7",
            "stripe_invoice_id": "in_1PqRsTuVwXyZ",
            "amount": "9.90",
            "currency": "usd",
            "attempt_count": 1,
            "failure_message": None,
            "hosted_invoice_url": "https://invoice.stripe.com/i/acct_1/test_abc",
        }

    def test_failed_round_trips_with_nulls(self) -> None:
        """invoice.payment_failed for a Stripe-only invoice (no id of ours, no attempt count,
        no page) parses back equal and matches its published schema."""
        event = InvoicePaymentFailedEvent(
            id="f",
            subject="acct_42",
            time=AT,
            data=invoice_data(
                invoice_id=None,
                attempt_count=None,
                hosted_invoice_url=None,
                failure_message="Your card has insufficient funds.",
            ),
        )
        text = event.model_dump_json()
        assert json.loads(text)["data"]["invoice_id"] is None
        assert InvoicePaymentFailedEvent.model_validate_json(text) == event
        validator = published_validator(InvoicePaymentFailedEvent)
        assert list(validator.iter_errors(json.loads(text))) == []

    @pytest.mark.parametrize(
        ("amount", "wire"),
        [
            (Decimal("9.90"), "9.90"),
            (Decimal(990), "990"),
            (Decimal("1E+3"), "1000"),
            (Decimal("0.00"), "0.00"),
        ],
    )
    def test_amount_is_a_plain_decimal_string(self, amount: Decimal, wire: str) -> None:
        """The amount is written positionally with its scale kept, and read back exactly."""
        data = invoice_data(amount=amount)
        assert json.loads(data.model_dump_json())["amount"] == wire
        assert InvoicePaymentData.model_validate_json(data.model_dump_json()).amount == amount

    @pytest.mark.parametrize("raw", ["990", "9.9", '"9.9e0"', '"-9.90"', '"9,90"'])
    def test_amount_numbers_exponents_and_negatives_refused(self, raw: str) -> None:
        """On the wire the amount is a non-negative decimal string: no JSON number (cents
        passed through unconverted), no exponent, no minus sign."""
        original = invoice_data().model_dump_json()
        text = original.replace('"amount":"9.90"', f'"amount":{raw}')
        assert text != original
        assert any(loc == ("amount",) for _, loc in errors_of(InvoicePaymentData, text))

    @pytest.mark.parametrize(
        ("field", "value"),
        [
            ("currency", "USD"),
            ("currency", "us"),
            ("currency", "usdc"),
            ("attempt_count", -1),
            ("attempt_count", True),
            ("attempt_count", "1"),
            ("stripe_invoice_id", ""),
            ("stripe_invoice_id", None),
            ("invoice_id", ""),
        ],
    )
    def test_malformed_fields_refused(self, field: str, value: object) -> None:
        """Currency is a lower-case three-letter code; attempt_count a non-negative integer
        (no booleans or strings); ids are non-empty and the Stripe id is required."""
        body = json.loads(invoice_data().model_dump_json()) | {field: value}
        assert any(loc[:1] == (field,) for _, loc in errors_of(InvoicePaymentData, body))

    @pytest.mark.parametrize("field", sorted(InvoicePaymentData.model_fields))
    def test_every_field_required(self, field: str) -> None:
        """Even the nullable fields must be present, so subscribers never guess a default."""
        body = json.loads(invoice_data().model_dump_json())
        del body[field]
        assert ("missing", (field,)) in errors_of(InvoicePaymentData, body)

    def test_paid_and_failed_types_not_interchangeable(self) -> None:
        """A paid envelope refuses the failed type and vice versa, in the models and in the
        published schemas."""
        paid = json.loads(example_events()["invoice.paid"].model_dump_json())
        failed = json.loads(example_events()["invoice.payment_failed"].model_dump_json())
        assert ("literal_error", ("type",)) in errors_of(
            InvoicePaidEvent, paid | {"type": "invoice.payment_failed"}
        )
        assert ("literal_error", ("type",)) in errors_of(
            InvoicePaymentFailedEvent, failed | {"type": "invoice.paid"}
        )
        assert list(published_validator(InvoicePaidEvent).iter_errors(failed))
        assert list(published_validator(InvoicePaymentFailedEvent).iter_errors(paid))


class TestPublishedSchemas:
    def test_every_wire_model_is_published(self) -> None:
        """Every envelope and the three quota-check models have a schema file of their own."""
        published = set(MODELS.values())
        assert set(EVENT_TYPES.values()) <= published
        assert {QuotaCheckRequest, QuotaCheckReply, QuotaCheckError} <= published
        for filename in MODELS:
            assert (JSON_DIR / filename).exists(), filename

    def test_outgoing_models_use_serialization_schema(self) -> None:
        """What the worker writes is published as written: every property required."""
        for filename, model in MODELS.items():
            schema = json.loads((JSON_DIR / filename).read_text(encoding="utf-8"))
            assert (JSON_DIR / filename).read_text(encoding="utf-8") == render(model)
            if model in WRITTEN_BY_WORKER:
                assert schema_mode(model) == "serialization"
                assert set(schema["required"]) == set(schema["properties"]), filename
            else:
                assert schema_mode(model) == "validation"

    def test_schema_ids_are_unique(self) -> None:
        """Each published schema has its own $id."""
        ids = [json.loads((JSON_DIR / f).read_text(encoding="utf-8"))["$id"] for f in MODELS]
        assert len(ids) == len(set(ids))

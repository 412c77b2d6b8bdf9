"""The usage-event wire schema is strict, and its published JSON Schema stays in sync."""

from __future__ import annotations

import ast
import json
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from schemas import UsageEvent
from schemas.export import JSON_DIR, MODELS, render
from tests.fakes import usage_body


def errors_of(body: bytes) -> list[tuple[str, tuple[object, ...]]]:
    with pytest.raises(ValidationError) as caught:
        UsageEvent.model_validate_json(body)
    return [(e["type"], tuple(e["loc"])) for e in caught.value.errors()]


class TestUsageEvent:
    def test_contract_example_is_valid(self) -> None:
        """The example event of CONTRACTS.md validates, keeping quantity and dimensions."""
        event = UsageEvent.model_validate_json(usage_body())
        assert event.subject == "acct_42"
        assert event.data.quantity == Decimal(1234)
        assert event.data.dimensions == {"model": "gpt-4"}

    def test_quantity_defaults_to_one(self) -> None:
        """A missing data.quantity means one unit."""
        event = UsageEvent.model_validate_json(usage_body(data={}))
        assert event.data.quantity == Decimal(1)

    @pytest.mark.parametrize(
        ("raw", "expected"),
        [("12.5", Decimal("12.5")), (0, Decimal(0)), (0.1, Decimal("0.1")), ("1e3", Decimal(1000))],
    )
    def test_quantity_accepts_numbers_and_decimal_strings(
        self, raw: object, expected: Decimal
    ) -> None:
        """Quantity may be a JSON number or a decimal string, and stays exact."""
        event = UsageEvent.model_validate_json(usage_body(data={"quantity": raw}))
        assert event.data.quantity == expected

    @pytest.mark.parametrize("raw", [-1, "-0.5", True, "NaN", "Infinity", "ten", None, [1]])
    def test_quantity_refuses_negative_and_non_numbers(self, raw: object) -> None:
        """Negative, boolean, non-finite and non-numeric quantities are schema errors."""
        errors = errors_of(usage_body(data={"quantity": raw}))
        assert any(loc[:2] == ("data", "quantity") for _, loc in errors)

    def test_unknown_top_level_field_refused(self) -> None:
        """An attribute the contract does not define is refused, not ignored."""
        assert ("extra_forbidden", ("plan",)) in errors_of(usage_body(plan="PRO"))

    def test_specversion_must_be_1_0(self) -> None:
        """Only CloudEvents 1.0 is accepted."""
        assert errors_of(usage_body(specversion="0.3"))[0][1] == ("specversion",)

    @pytest.mark.parametrize(
        "when", ["0001-01-01T00:00:00+05:00", "9999-12-31T23:00:00-05:00", "1969-12-31T00:00:00Z"]
    )
    def test_implausible_years_refused(self, when: str) -> None:
        """Times outside 1970-9998 are refused (year 1 with an offset cannot even be UTC)."""
        assert any(loc == ("time",) for _, loc in errors_of(usage_body(time=when)))

    def test_time_is_normalised_to_utc(self) -> None:
        """Any offset is accepted and converted to UTC."""
        event = UsageEvent.model_validate_json(usage_body(time="2026-11-21T12:00:00+02:00"))
        assert event.time.isoformat() == "2026-11-21T10:00:00+00:00"

    def test_naive_time_refused(self) -> None:
        """A time without a UTC offset is ambiguous and refused."""
        assert ("timezone_aware", ("time",)) in errors_of(usage_body(time="2026-11-21T10:15:00"))

    @pytest.mark.parametrize("field", ["id", "source", "type", "subject", "time", "specversion"])
    def test_required_attributes(self, field: str) -> None:
        """Each required CloudEvents attribute must be present."""
        event = json.loads(usage_body())
        del event[field]
        assert ("missing", (field,)) in errors_of(json.dumps(event).encode())

    @pytest.mark.parametrize(("field", "limit"), [("id", 256), ("subject", 256), ("type", 128)])
    def test_string_lengths_bounded(self, field: str, limit: int) -> None:
        """Identifiers have sane length limits."""
        value = "a" * (limit + 1)
        assert any(loc == (field,) for _, loc in errors_of(usage_body(**{field: value})))

    def test_empty_identifiers_refused(self) -> None:
        """An empty id cannot be an idempotency key."""
        assert any(loc == ("id",) for _, loc in errors_of(usage_body(id="")))

    def test_nested_dimension_refused(self) -> None:
        """Dimensions are flat scalars; an object value is refused."""
        errors = errors_of(usage_body(data={"quantity": 1, "meta": {"a": 1}}))
        assert all(loc[:2] == ("data", "meta") for _, loc in errors)

    def test_too_many_dimensions_refused(self) -> None:
        """More than 32 dimension fields is a producer bug."""
        data = {f"d{i}": i for i in range(33)}
        assert errors_of(usage_body(data=data))

    def test_strings_are_not_coerced(self) -> None:
        """Strict mode: a number where a string is required is refused."""
        assert any(loc == ("subject",) for _, loc in errors_of(usage_body(subject=42)))

    @given(st.decimals(min_value=0, max_value=10**15, places=6, allow_nan=False))
    def test_any_non_negative_decimal_round_trips(self, quantity: Decimal) -> None:
        """Every non-negative decimal sent as a string comes back exactly."""
        event = UsageEvent.model_validate_json(usage_body(data={"quantity": str(quantity)}))
        assert event.data.quantity == quantity


class TestPublishedSchema:
    def test_json_schema_files_match_models(self) -> None:
        """schemas/json holds exactly what the models generate (run python -m schemas.export)."""
        for filename, model in MODELS.items():
            assert (JSON_DIR / filename).read_text(encoding="utf-8") == render(model), filename

    def test_schema_forbids_unknown_top_level_fields(self) -> None:
        """The published schema tells producers that extra attributes are refused."""
        schema = json.loads((JSON_DIR / "usage-event.v1.json").read_text(encoding="utf-8"))
        assert schema["additionalProperties"] is False
        assert set(schema["required"]) >= {"specversion", "id", "source", "type", "subject"}

    def test_schemas_package_never_imports_billing_worker(self) -> None:
        """Product services can import schemas without pulling in the worker."""
        for path in Path(JSON_DIR.parent).glob("*.py"):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for node in ast.walk(tree):
                names = []
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module:
                    names = [node.module]
                assert not any(n.split(".")[0] == "billing_worker" for n in names), path

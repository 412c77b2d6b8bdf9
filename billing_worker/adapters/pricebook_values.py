"""Validated values from parsed TOML, each failure naming the file and the dotted key."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from decimal import Decimal, InvalidOperation
from types import MappingProxyType
from typing import Any, TypeVar

from billing_worker.domain.pricebook import (
    MAX_DIGITS,
    MAX_PLACES,
    within_quantity_bounds,
)

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
T = TypeVar("T")


class PriceBookError(Exception):
    """The price book is invalid: ``file: key: what is wrong``."""

    def __init__(self, file: str, key: str, problem: str) -> None:
        self.file, self.key, self.problem = file, key, problem
        super().__init__(f"{file}: {key}: {problem}" if key else f"{file}: {problem}")


class ValueReader:
    """Walks the parsed TOML, tracking the dotted key for error messages."""

    def __init__(self, file: str) -> None:
        self.file = file

    def fail(self, key: str, problem: str) -> PriceBookError:
        return PriceBookError(self.file, key, problem)

    # --- primitives ---------------------------------------------------------------------

    def table(self, value: object, key: str) -> Mapping[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(key, f"must be a table, not {shown(value)}")
        return value

    def only(self, table: Mapping[str, Any], key: str, allowed: tuple[str, ...]) -> None:
        unknown = sorted(set(table) - set(allowed))
        if unknown:
            where = f"{key}.{unknown[0]}" if key else unknown[0]
            raise self.fail(where, f"unknown key (expected one of: {', '.join(allowed)})")

    def required(self, table: Mapping[str, Any], key: str, name: str) -> Any:
        if name not in table:
            raise self.fail(join_key(key, name), "is required")
        return table[name]

    def string(self, value: object, key: str, pattern: re.Pattern[str] | None = None) -> str:
        if not isinstance(value, str) or not value:
            raise self.fail(key, f"must be a non-empty string, not {shown(value)}")
        if pattern is not None and not pattern.match(value):
            raise self.fail(key, f"{value!r} does not match {pattern.pattern}")
        return value

    def number(self, value: object, key: str, *, positive: bool = False) -> Decimal:
        what = "a positive number" if positive else "a non-negative number"
        if isinstance(value, bool) or not isinstance(value, (int, Decimal, str)):
            raise self.fail(key, f"must be {what}, not {shown(value)}")
        try:
            number = Decimal(value) if not isinstance(value, Decimal) else value
        except InvalidOperation:
            raise self.fail(key, f"must be {what}, not {shown(value)}") from None
        if not number.is_finite() or number < 0 or (positive and number == 0):
            raise self.fail(key, f"must be {what}, not {shown(value)}")
        if not within_quantity_bounds(number):
            raise self.fail(
                key,
                f"must have at most {MAX_DIGITS} digits, {MAX_PLACES} after the point, "
                f"not {shown(value)}",
            )
        return number

    def integer(self, value: object, key: str, low: int, high: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise self.fail(key, f"must be a whole number from {low} to {high}, not {shown(value)}")
        return value

    def choice(self, value: object, key: str, choices: type[T] | tuple[str, ...]) -> Any:
        options = tuple(choices) if isinstance(choices, tuple) else tuple(c.value for c in choices)  # type: ignore[attr-defined]
        if value not in options:
            raise self.fail(key, f"must be one of {', '.join(options)}, not {shown(value)}")
        return value if isinstance(choices, tuple) else choices(value)  # type: ignore[call-arg]

    def named_tables(
        self, value: object, key: str, build: Callable[[str, Mapping[str, Any], str], T]
    ) -> Mapping[str, T]:
        tables = self.table(value, key)
        built = {}
        for name, sub in tables.items():
            sub_key = join_key(key, name)
            self.string(name, sub_key, NAME)
            built[name] = build(name, self.table(sub, sub_key), sub_key)
        return MappingProxyType(built)


def join_key(key: str, name: str) -> str:
    return f"{key}.{name}" if key else name


def shown(value: object) -> str:
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "a list"
    return repr(value)

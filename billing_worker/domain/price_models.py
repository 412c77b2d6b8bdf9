"""How a meter is priced: the tier models, a meter's price with its per-value models, and
the dimension values those are chosen by (told apart by their JSON kind)."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal

Scalar = str | int | float | bool | None
ZERO = Decimal(0)


@dataclass(frozen=True, slots=True)
class Tier:
    """One tier: units up to ``up_to`` (inclusive; ``None`` = no bound) at ``unit_price``,
    plus ``flat_fee`` once the tier is reached."""

    up_to: Decimal | None
    unit_price: Decimal = ZERO
    flat_fee: Decimal = ZERO


@dataclass(frozen=True, slots=True)
class PerUnit:
    """Every billable unit at the same price."""

    unit_price: Decimal


@dataclass(frozen=True, slots=True)
class Graduated:
    """Each unit priced by the tier it falls in (the first 1,000 at a, the next at b...)."""

    tiers: tuple[Tier, ...]


@dataclass(frozen=True, slots=True)
class Volume:
    """All units priced by the one tier the total falls in."""

    tiers: tuple[Tier, ...]


@dataclass(frozen=True, slots=True)
class Package:
    """``package_price`` per started block of ``package_size`` units (rounded up)."""

    package_size: Decimal
    package_price: Decimal


@dataclass(frozen=True, slots=True)
class Free:
    """No charge."""


PriceModel = PerUnit | Graduated | Volume | Package | Free


@dataclass(frozen=True, slots=True)
class MeterPrice:
    """How a meter's billable quantity becomes money.

    ``free_quantity`` units per period are free before the model applies. With a
    ``dimension``, each value of that ``data`` field has its own model (``by_value``),
    the others use ``model``.
    """

    meter: str
    model: PriceModel
    free_quantity: Decimal = ZERO
    dimension: str | None = None
    by_value: Mapping[str, PriceModel] = field(default_factory=dict)

    def model_for(self, value: DimensionValue | None) -> PriceModel:
        """The model for events carrying ``value`` in the price's dimension: a string's own
        model in ``by_value``; the default model for any other value, for an event
        without the field, and for a string ``by_value`` does not name."""
        if self.dimension is None or value is None or value.kind is not DimensionKind.STRING:
            return self.model
        return self.by_value.get(value.text, self.model)


class DimensionKind(enum.StrEnum):
    """What an event carried in a dimension field, as JSON types go."""

    STRING = "string"
    NUMBER = "number"
    BOOLEAN = "boolean"
    NULL = "null"
    ABSENT = "absent"
    """The event had no such field."""


@dataclass(frozen=True, slots=True, order=True)
class DimensionValue:
    """One value of a priced dimension, told apart by kind: the string ``"7"`` is not the
    number 7, ``"null"`` is not JSON null, and neither is an event without the field.
    ``text`` is the string itself, or the JSON spelling of a number or boolean
    (``7``, ``1.5``, ``true``); ``null`` and ``""`` for null and absent."""

    text: str
    kind: DimensionKind = DimensionKind.STRING

    @classmethod
    def of(cls, dimensions: Mapping[str, Scalar], name: str) -> DimensionValue:
        """The value of field ``name`` among an event's ``dimensions``."""
        if name not in dimensions:
            return cls("", DimensionKind.ABSENT)
        value = dimensions[name]
        if value is None:
            return cls("null", DimensionKind.NULL)
        if isinstance(value, bool):
            return cls("true" if value else "false", DimensionKind.BOOLEAN)
        if isinstance(value, str):
            return cls(value)
        return cls(str(value), DimensionKind.NUMBER)

    @property
    def label(self) -> str:
        """As an invoice line names it: the string itself; ``(no value)`` for an absent
        field; ``null``, numbers and booleans with their kind (``7 (a number)``)."""
        if self.kind is DimensionKind.STRING:
            return self.text
        if self.kind is DimensionKind.ABSENT:
            return "(no value)"
        if self.kind is DimensionKind.NULL:
            return "null (JSON null)"
        return f"{self.text} (a {self.kind})"


# --- plans, credits -----------------------------------------------------------------------

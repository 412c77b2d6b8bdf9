"""The price book as the domain sees it: meters, plans, prices, credit costs, credit packs.

Plain frozen dataclasses, no I/O: the file format and its validation live in
``billing_worker.pricebook_file``. Everything numeric is ``Decimal``.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Context, Decimal, Inexact, InvalidOperation, Overflow
from types import MappingProxyType

from billing_worker.domain.errors import PermanentError, UnknownEventType
from billing_worker.domain.price_models import (
    ZERO,
    DimensionKind,
    DimensionValue,
    Free,
    Graduated,
    MeterPrice,
    Package,
    PerUnit,
    PriceModel,
    Scalar,
    Tier,
    Volume,
)
from billing_worker.domain.pricebook_terms import (
    DEFAULT_GRANT_PRIORITY,
    CreditProduct,
    CreditSource,
    RefundPolicy,
    StripePrice,
    UsageBilling,
)

ONE = Decimal(1)

MAX_DIGITS, MAX_PLACES = 38, 18
"""Bounds of every quantity, price and credit amount (the usage event's ``quantity``
bounds): sums and products of such numbers stay exact in ``EXACT``."""

EXACT = Context(prec=200, traps=[Inexact, Overflow, InvalidOperation])
"""Arithmetic on bounded quantities: wide enough that sums and products never round, and
loud (``Inexact``) if they ever would."""


def within_quantity_bounds(value: Decimal) -> bool:
    """At most ``MAX_DIGITS`` significant digits, at most ``MAX_PLACES`` after the point."""
    _sign, digits, exponent = value.as_tuple()
    if not isinstance(exponent, int):
        return False
    significant = list(digits)
    while len(significant) > 1 and significant[-1] == 0:  # trailing zeros carry no precision
        significant.pop()
        exponent += 1
    places = max(-exponent, 0)
    whole = max(len(significant) + exponent, 0)
    return places <= MAX_PLACES and whole + places <= MAX_DIGITS


class Aggregation(enum.StrEnum):
    """How a meter folds its events within a period."""

    SUM = "sum"
    """Total of the values."""
    COUNT = "count"
    """Number of events (the value is ignored)."""
    MAX = "max"
    """Largest value seen."""
    UNIQUE_COUNT = "unique_count"
    """Number of distinct values of the meter's field."""
    LATEST = "latest"
    """Value of the event with the latest time (ties: the one recorded last)."""


AGGREGATIONS_THAT_ADD = frozenset({Aggregation.SUM, Aggregation.COUNT})
"""Aggregations whose period total is the sum of its ledger quantities."""


class InvalidMeterValue(PermanentError):
    """The ``data`` field a meter reads is not a non-negative number."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail, reason="schema_violation")


@dataclass(frozen=True, slots=True)
class Meter:
    """What is measured: fed by event types, one value per event, folded per period."""

    name: str
    event_types: tuple[str, ...]
    aggregation: Aggregation = Aggregation.SUM
    value_field: str | None = None
    """``None`` reads ``data.quantity``; otherwise the named ``data`` field (for
    ``unique_count``, the field whose distinct values are counted)."""
    filters: Mapping[str, Scalar] = field(default_factory=dict)
    """Dimension values an event must carry exactly to feed this meter."""
    unit: str = "unit"
    late_events: str = "next_invoice"

    def matches(self, dimensions: Mapping[str, Scalar]) -> bool:
        """Whether an event with these dimensions passes the meter's filters."""
        return all(
            name in dimensions and _same_scalar(dimensions[name], wanted)
            for name, wanted in self.filters.items()
        )

    def value_of(self, quantity: Decimal, dimensions: Mapping[str, Scalar]) -> Decimal | None:
        """The amount this event adds to the ledger for this meter; ``None``: it feeds nothing.

        ``count`` and ``unique_count`` record 1 per event (the distinct value stays in the
        entry's dimensions); an event without the meter's named field does not feed it.
        """
        if self.aggregation is Aggregation.COUNT:
            return ONE
        if self.value_field is None:
            return quantity
        if self.value_field not in dimensions:
            return None
        raw = dimensions[self.value_field]
        if self.aggregation is Aggregation.UNIQUE_COUNT:
            return None if raw is None else ONE
        if isinstance(raw, bool) or not isinstance(raw, (int, float, str)):
            raise InvalidMeterValue(
                f"data.{self.value_field} feeds meter {self.name!r} and must be a "
                f"non-negative number, not {raw!r}"
            )
        try:
            value = Decimal(str(raw))
        except ArithmeticError:
            value = Decimal("NaN")
        if not value.is_finite() or value < 0:
            raise InvalidMeterValue(
                f"data.{self.value_field} feeds meter {self.name!r} and must be a "
                f"non-negative number, not {raw!r}"
            )
        if not within_quantity_bounds(value):
            raise InvalidMeterValue(
                f"data.{self.value_field} feeds meter {self.name!r} and must have at most "
                f"{MAX_DIGITS} digits, {MAX_PLACES} of them after the point, not {raw!r}"
            )
        return value


def _same_scalar(value: Scalar, wanted: Scalar) -> bool:
    """Equal as JSON values: ``true`` is not ``1`` (Python says it is)."""
    return isinstance(value, bool) == isinstance(wanted, bool) and value == wanted


# --- prices -------------------------------------------------------------------------------


class Enforcement(enum.StrEnum):
    """What a limit means to the quota check (usage is always recorded either way)."""

    HARD = "hard"
    """The quota check answers ``allowed: false`` past the limit."""
    SOFT = "soft"
    """The quota check allows; the threshold events still fire."""


class Interval(enum.StrEnum):
    """How often a plan's fee is charged."""

    MONTH = "month"
    YEAR = "year"


@dataclass(frozen=True, slots=True)
class PlanMeter:
    """A plan's terms for one meter."""

    included: Decimal = ZERO
    limit: Decimal | None = None
    enforcement: Enforcement = Enforcement.HARD


DEFAULT_THRESHOLDS = (80, 90, 100)


@dataclass(frozen=True, slots=True)
class Plan:
    """A plan: its fee, its meters' terms, alert thresholds and credit grant per period."""

    name: str
    price: Decimal
    currency: str
    interval: Interval = Interval.MONTH
    meters: Mapping[str, PlanMeter] = field(default_factory=dict)
    thresholds: tuple[int, ...] = DEFAULT_THRESHOLDS
    credit_grant: Decimal = ZERO
    credit_grant_priority: int = 10

    def limit_of(self, meter: str) -> PlanMeter | None:
        """This plan's terms for ``meter``, if it limits or includes it."""
        return self.meters.get(meter)


@dataclass(frozen=True, slots=True)
class MeterFeed:
    """One meter an event feeds, with the value it adds."""

    meter: Meter
    value: Decimal


@dataclass(frozen=True, slots=True)
class PriceBook:
    """Meters, plans, prices and credit terms, validated; identified by ``version``."""

    version: str
    currency: str
    default_plan: str
    meters: Mapping[str, Meter]
    plans: Mapping[str, Plan]
    prices: Mapping[str, MeterPrice] = field(default_factory=dict)
    credit_costs: Mapping[str, Decimal] = field(default_factory=dict)
    credit_products: Mapping[str, CreditProduct] = field(default_factory=dict)
    stripe_prices: Mapping[str, StripePrice] = field(default_factory=dict)
    credits_low_balance: Decimal = ZERO
    credit_shortfall_price: Decimal | None = None
    """Money per credit that usage cost beyond every grant (``[credits] shortfall_price``);
    None: a shortfall is shown on the invoice, not charged."""
    credit_refund_policy: RefundPolicy = RefundPolicy.CLAW_BACK
    usage_billing: UsageBilling = UsageBilling.SUBSCRIPTION
    stripe_automatic_tax: bool = False
    """Turn on Stripe Tax on the invoices the sync creates (``[stripe] automatic_tax``)."""
    digest: str = ""
    """SHA-256 of the source text, so one version can't silently mean two price books."""
    source: str = field(default="", repr=False)
    """The text it was read from (kept with the version in the database)."""
    _by_event_type: Mapping[str, tuple[Meter, ...]] = field(
        init=False, repr=False, compare=False, default_factory=dict
    )
    _alert_levels: Mapping[tuple[str, str], Decimal] = field(
        init=False, repr=False, compare=False, default_factory=dict
    )

    def __post_init__(self) -> None:
        index: dict[str, list[Meter]] = {}
        for meter in self.meters.values():
            for event_type in meter.event_types:
                index.setdefault(event_type, []).append(meter)
        frozen = MappingProxyType({k: tuple(v) for k, v in index.items()})
        object.__setattr__(self, "_by_event_type", frozen)
        levels = {
            (plan.name, meter): terms.limit * plan.thresholds[0] / 100
            for plan in self.plans.values()
            for meter, terms in sorted(plan.meters.items())
            if terms.limit is not None and plan.thresholds
        }
        object.__setattr__(self, "_alert_levels", MappingProxyType(levels))

    @property
    def event_types(self) -> Sequence[str]:
        """Every event type some meter is fed by, sorted."""
        return sorted(self._by_event_type)

    def feeds(
        self, event_type: str, quantity: Decimal, dimensions: Mapping[str, Scalar]
    ) -> tuple[MeterFeed, ...]:
        """The meters this event feeds and what it adds to each.

        An event type no meter names is a permanent error (``unknown_event_type``); a
        known type whose filters all miss feeds nothing and is still recorded as seen.
        """
        meters = self._by_event_type.get(event_type)
        if not meters:
            raise UnknownEventType(f"no meter is fed by event type {event_type!r}")
        feeds = []
        for meter in meters:
            if not meter.matches(dimensions):
                continue
            value = meter.value_of(quantity, dimensions)
            if value is not None:
                feeds.append(MeterFeed(meter, value))
        return tuple(feeds)

    def plan(self, name: str) -> Plan:
        """The plan called ``name``; accounts on a plan the book no longer has use the
        default plan's terms (the account keeps its plan name)."""
        return self.plans.get(name) or self.plans[self.default_plan]

    @property
    def alert_levels(self) -> Mapping[tuple[str, str], Decimal]:
        """(plan, meter) -> the usage at which the plan's lowest threshold is reached, for
        every limited meter: below it no threshold can have been crossed."""
        return self._alert_levels


# Their home is pricebook_terms; importable from here as before.
__all__ = [
    "DEFAULT_GRANT_PRIORITY",
    "ZERO",
    "CreditProduct",
    "CreditSource",
    "DimensionKind",
    "DimensionValue",
    "Free",
    "Graduated",
    "MeterPrice",
    "Package",
    "PerUnit",
    "PriceModel",
    "RefundPolicy",
    "Scalar",
    "StripePrice",
    "Tier",
    "UsageBilling",
    "Volume",
]

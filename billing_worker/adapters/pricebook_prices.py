"""Reading a price book's [prices]: the model of each meter's price and its tiers."""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from types import MappingProxyType
from typing import Any

from billing_worker.adapters.pricebook_values import ValueReader
from billing_worker.domain.pricebook import (
    ZERO,
    Free,
    Graduated,
    MeterPrice,
    Package,
    PerUnit,
    PriceModel,
    Tier,
    Volume,
)

MAX_DIMENSION_CHARS = 256
"""The longest string dimension value an event may carry (the usage schema's limit)."""


class PriceReader(ValueReader):
    """The [prices] part of the price-book reader."""

    def price(self, meter: str, table: Mapping[str, Any], key: str) -> MeterPrice:
        self.only(
            table,
            key,
            (
                "model",
                "unit_price",
                "tiers",
                "package_size",
                "package_price",
                "free_quantity",
                "dimension",
                "by_value",
            ),
        )
        model = self.price_model(table, key)
        free_quantity = self.number(table.get("free_quantity", 0), f"{key}.free_quantity")
        dimension = None
        by_value: dict[str, PriceModel] = {}
        if "dimension" in table:
            dimension = self.string(table["dimension"], f"{key}.dimension")
            values = self.table(self.required(table, key, "by_value"), f"{key}.by_value")
            for value, sub in values.items():
                sub_key = f'{key}.by_value."{value}"'
                if len(value) > MAX_DIMENSION_CHARS or "\x00" in value:
                    raise self.fail(
                        sub_key,
                        f"no event can carry this value (dimension strings have at most "
                        f"{MAX_DIMENSION_CHARS} characters and no NUL), so it would never apply",
                    )
                sub_table = self.table(sub, sub_key)
                self.only(
                    sub_table,
                    sub_key,
                    ("model", "unit_price", "tiers", "package_size", "package_price"),
                )
                by_value[value] = self.price_model(sub_table, sub_key)
        elif "by_value" in table:
            raise self.fail(f"{key}.by_value", "needs a dimension naming the data field it keys on")
        return MeterPrice(
            meter=meter,
            model=model,
            free_quantity=free_quantity,
            dimension=dimension,
            by_value=MappingProxyType(by_value),
        )

    def price_model(self, table: Mapping[str, Any], key: str) -> PriceModel:
        kind = self.choice(
            self.required(table, key, "model"),
            f"{key}.model",
            ("per_unit", "graduated", "volume", "package", "free"),
        )
        if kind == "per_unit":
            return PerUnit(
                self.number(self.required(table, key, "unit_price"), f"{key}.unit_price")
            )
        if kind in ("graduated", "volume"):
            tiers = self.tiers(self.required(table, key, "tiers"), f"{key}.tiers")
            return Graduated(tiers) if kind == "graduated" else Volume(tiers)
        if kind == "package":
            return Package(
                package_size=self.number(
                    self.required(table, key, "package_size"), f"{key}.package_size", positive=True
                ),
                package_price=self.number(
                    self.required(table, key, "package_price"), f"{key}.package_price"
                ),
            )
        return Free()

    def tiers(self, value: object, key: str) -> tuple[Tier, ...]:
        if not isinstance(value, list) or not value:
            raise self.fail(key, "must be a non-empty list of tiers")
        tiers = []
        previous = ZERO
        for i, raw in enumerate(value):
            tier_key = f"{key}[{i}]"
            table = self.table(raw, tier_key)
            self.only(table, tier_key, ("up_to", "unit_price", "flat_fee"))
            last = i == len(value) - 1
            up_to = None
            if "up_to" in table and table["up_to"] not in ("inf", Decimal("Infinity")):
                up_to = self.number(table["up_to"], f"{tier_key}.up_to", positive=True)
                if up_to <= previous:
                    raise self.fail(
                        f"{tier_key}.up_to",
                        f"must be greater than the previous tier's ({previous})",
                    )
                previous = up_to
            if up_to is None and not last:
                raise self.fail(f"{tier_key}.up_to", "only the last tier may be unbounded")
            if up_to is not None and last:
                raise self.fail(
                    f"{tier_key}.up_to",
                    'the last tier must be unbounded (leave up_to out, or "inf")',
                )
            tiers.append(
                Tier(
                    up_to=up_to,
                    unit_price=self.number(table.get("unit_price", 0), f"{tier_key}.unit_price"),
                    flat_fee=self.number(table.get("flat_fee", 0), f"{tier_key}.flat_fee"),
                )
            )
        return tuple(tiers)

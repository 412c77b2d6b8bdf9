"""Read a price book from TOML (standard-library ``tomllib``) and validate every key.

A broken file fails with the file, the dotted key and what is wrong::

    pricebook.toml: plans.PLUS.meters.tokens.limit: must be a non-negative number, not 'lots'

Numbers are read exactly: TOML floats are parsed as ``Decimal``, and decimal strings
(``"0.002"``) are accepted wherever a number is.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import tomllib
from collections.abc import Mapping
from decimal import Decimal
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any

from billing_worker.adapters.pricebook_prices import PriceReader
from billing_worker.adapters.pricebook_values import NAME, PriceBookError, shown
from billing_worker.domain.pricebook import (
    AGGREGATIONS_THAT_ADD,
    DEFAULT_GRANT_PRIORITY,
    DEFAULT_THRESHOLDS,
    Aggregation,
    CreditProduct,
    CreditSource,
    Enforcement,
    Interval,
    Meter,
    MeterPrice,
    Plan,
    PlanMeter,
    PriceBook,
    RefundPolicy,
    StripePrice,
    UsageBilling,
)

DEFAULT_PRICEBOOK_NAME = "default.toml"
CURRENCY = re.compile(r"^[a-z]{3}$")
LATE_EVENT_POLICIES = ("next_invoice", "reject")


def default_pricebook_text() -> str:
    """The built-in price book's TOML source."""
    return (
        resources.files("billing_worker.pricebooks")
        .joinpath(DEFAULT_PRICEBOOK_NAME)
        .read_text(encoding="utf-8")
    )


def load_pricebook(path: Path | None) -> PriceBook:
    """The price book at ``path``, or the built-in default when ``path`` is None."""
    if path is None:
        return parse_pricebook(default_pricebook_text(), f"(built-in {DEFAULT_PRICEBOOK_NAME})")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PriceBookError(str(path), "", f"cannot be read: {exc}") from exc
    return parse_pricebook(text, str(path))


def parse_pricebook(text: str, file: str = "pricebook.toml") -> PriceBook:
    """Parse and validate; raise ``PriceBookError`` at the first problem."""
    try:
        raw = tomllib.loads(text, parse_float=Decimal)
    except tomllib.TOMLDecodeError as exc:
        raise PriceBookError(file, "", f"is not valid TOML: {exc}") from exc
    book = _Reader(file).book(raw)
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    return dataclasses.replace(book, digest=digest, source=text)


class _Reader(PriceReader):
    """Walks the parsed TOML, tracking the dotted key for error messages."""

    # --- the document -------------------------------------------------------------------

    def book(self, raw: Mapping[str, Any]) -> PriceBook:
        self.only(
            raw,
            "",
            (
                "version",
                "currency",
                "default_plan",
                "credits",
                "meters",
                "plans",
                "prices",
                "credit_costs",
                "credit_products",
                "stripe_prices",
                "stripe",
            ),
        )
        version = self.string(self.required(raw, "", "version"), "version", NAME)
        currency = self.string(raw.get("currency", "usd"), "currency", CURRENCY)
        meters = self.named_tables(self.required(raw, "", "meters"), "meters", self.meter)
        if not meters:
            raise self.fail("meters", "must define at least one meter")
        self._meters = meters
        self._currency = currency
        plans = self.named_tables(self.required(raw, "", "plans"), "plans", self.plan)
        if not plans:
            raise self.fail("plans", "must define at least one plan")
        default_plan = self.string(self.required(raw, "", "default_plan"), "default_plan")
        if default_plan not in plans:
            raise self.fail("default_plan", f"{default_plan!r} is not a plan in [plans]")
        prices = self.named_tables(raw.get("prices", {}), "prices", self.price)
        self.check_meters_known(prices, "prices")
        self.check_included_vs_dimensions(plans, prices)
        costs_table = self.table(raw.get("credit_costs", {}), "credit_costs")
        costs = {
            meter: self.number(cost, f"credit_costs.{meter}") for meter, cost in costs_table.items()
        }
        self.check_meters_known(costs, "credit_costs")
        for meter in costs:
            if meter in meters and meters[meter].aggregation not in AGGREGATIONS_THAT_ADD:
                raise self.fail(
                    f"credit_costs.{meter}",
                    f"a {meters[meter].aggregation} meter has no per-event amount to charge "
                    "credits for (use a sum or count meter)",
                )
        credit_terms = self.table(raw.get("credits", {}), "credits")
        self.only(credit_terms, "credits", ("low_balance", "shortfall_price", "on_refund"))
        on_refund = self.choice(
            credit_terms.get("on_refund", RefundPolicy.CLAW_BACK.value),
            "credits.on_refund",
            RefundPolicy,
        )
        stripe_terms = self.table(raw.get("stripe", {}), "stripe")
        self.only(stripe_terms, "stripe", ("usage_billing", "automatic_tax"))
        usage_billing = self.choice(
            stripe_terms.get("usage_billing", UsageBilling.SUBSCRIPTION.value),
            "stripe.usage_billing",
            UsageBilling,
        )
        automatic_tax = stripe_terms.get("automatic_tax", False)
        if not isinstance(automatic_tax, bool):
            raise self.fail("stripe.automatic_tax", "must be true or false")
        low = self.number(credit_terms.get("low_balance", 0), "credits.low_balance")
        shortfall_price = None
        if "shortfall_price" in credit_terms:
            shortfall_price = self.number(
                credit_terms["shortfall_price"], "credits.shortfall_price"
            )
        products = self.named_tables(
            raw.get("credit_products", {}), "credit_products", self.credit_product
        )
        stripe = self.stripe_prices(raw.get("stripe_prices", {}), plans, products)
        return PriceBook(
            version=version,
            currency=currency,
            default_plan=default_plan,
            meters=meters,
            plans=plans,
            prices=prices,
            credit_costs=MappingProxyType(costs),
            credit_products=products,
            stripe_prices=stripe,
            credits_low_balance=low,
            credit_shortfall_price=shortfall_price,
            credit_refund_policy=on_refund,
            usage_billing=usage_billing,
            stripe_automatic_tax=automatic_tax,
        )

    def check_meters_known(self, by_meter: Mapping[str, object], section: str) -> None:
        for meter in by_meter:
            if meter not in self._meters:
                raise self.fail(f"{section}.{meter}", "names no meter defined in [meters]")

    def check_included_vs_dimensions(
        self, plans: Mapping[str, Plan], prices: Mapping[str, MeterPrice]
    ) -> None:
        for plan in plans.values():
            for meter, terms in plan.meters.items():
                price = prices.get(meter)
                if terms.included > 0 and price is not None and price.dimension is not None:
                    raise self.fail(
                        f"plans.{plan.name}.meters.{meter}.included",
                        f"cannot be combined with the per-{price.dimension} prices of "
                        f"prices.{meter} (which {price.dimension} would it cover?)",
                    )

    def meter(self, name: str, table: Mapping[str, Any], key: str) -> Meter:
        self.only(
            table, key, ("event_types", "aggregation", "value", "filters", "unit", "late_events")
        )
        types = self.required(table, key, "event_types")
        if not isinstance(types, list) or not types:
            raise self.fail(f"{key}.event_types", "must be a non-empty list of event types")
        event_types = tuple(
            self.string(t, f"{key}.event_types[{i}]", NAME) for i, t in enumerate(types)
        )
        aggregation = self.choice(
            table.get("aggregation", "sum"), f"{key}.aggregation", Aggregation
        )
        value = table.get("value", "quantity")
        value_field = self.string(value, f"{key}.value")
        if value_field.startswith("data."):
            value_field = value_field.removeprefix("data.")
        field: str | None = None if value_field == "quantity" else value_field
        if aggregation is Aggregation.UNIQUE_COUNT and field is None:
            raise self.fail(
                f"{key}.value", "a unique_count meter must name the data field it counts"
            )
        filters = self.table(table.get("filters", {}), f"{key}.filters")
        for dim, wanted in filters.items():
            if not isinstance(wanted, (str, int, bool)) or isinstance(wanted, Decimal):
                raise self.fail(
                    f"{key}.filters.{dim}",
                    f"must be a string, integer or boolean, not {shown(wanted)}",
                )
        unit = self.string(table.get("unit", "unit"), f"{key}.unit")
        late = self.choice(
            table.get("late_events", "next_invoice"), f"{key}.late_events", LATE_EVENT_POLICIES
        )
        return Meter(
            name=name,
            event_types=event_types,
            aggregation=aggregation,
            value_field=field,
            filters=MappingProxyType(dict(filters)),
            unit=unit,
            late_events=late,
        )

    def plan(self, name: str, table: Mapping[str, Any], key: str) -> Plan:
        self.only(
            table,
            key,
            (
                "price",
                "currency",
                "interval",
                "meters",
                "thresholds",
                "credit_grant",
                "credit_grant_priority",
            ),
        )
        price = self.number(self.required(table, key, "price"), f"{key}.price")
        currency = self.string(table.get("currency", self._currency), f"{key}.currency", CURRENCY)
        interval = self.choice(table.get("interval", "month"), f"{key}.interval", Interval)
        thresholds_raw = table.get("thresholds", list(DEFAULT_THRESHOLDS))
        if not isinstance(thresholds_raw, list):
            raise self.fail(
                f"{key}.thresholds", "must be a list of percentages, e.g. [80, 90, 100]"
            )
        thresholds = tuple(
            self.integer(t, f"{key}.thresholds[{i}]", 1, 1000) for i, t in enumerate(thresholds_raw)
        )
        if list(thresholds) != sorted(set(thresholds)):
            raise self.fail(f"{key}.thresholds", "must be strictly increasing, without repeats")
        meters_table = self.table(table.get("meters", {}), f"{key}.meters")
        meters = {}
        for meter, terms in meters_table.items():
            meter_key = f"{key}.meters.{meter}"
            if meter not in self._meters:
                raise self.fail(meter_key, "names no meter defined in [meters]")
            meters[meter] = self.plan_meter(self.table(terms, meter_key), meter_key)
        grant = self.number(table.get("credit_grant", 0), f"{key}.credit_grant")
        priority = self.integer(
            table.get("credit_grant_priority", DEFAULT_GRANT_PRIORITY[CreditSource.PLAN]),
            f"{key}.credit_grant_priority",
            0,
            1000,
        )
        return Plan(
            name=name,
            price=price,
            currency=currency,
            interval=interval,
            meters=MappingProxyType(meters),
            thresholds=thresholds,
            credit_grant=grant,
            credit_grant_priority=priority,
        )

    def plan_meter(self, table: Mapping[str, Any], key: str) -> PlanMeter:
        self.only(table, key, ("included", "limit", "enforcement"))
        included = self.number(table.get("included", 0), f"{key}.included")
        limit = None
        if "limit" in table:
            limit = self.number(table["limit"], f"{key}.limit", positive=True)
        enforcement = self.choice(
            table.get("enforcement", "hard"), f"{key}.enforcement", Enforcement
        )
        if "enforcement" in table and limit is None:
            raise self.fail(f"{key}.enforcement", "needs a limit to enforce")
        return PlanMeter(included=included, limit=limit, enforcement=enforcement)

    def credit_product(self, name: str, table: Mapping[str, Any], key: str) -> CreditProduct:
        self.only(table, key, ("credits", "price", "currency", "priority"))
        return CreditProduct(
            name=name,
            credits=self.number(
                self.required(table, key, "credits"), f"{key}.credits", positive=True
            ),
            price=self.number(self.required(table, key, "price"), f"{key}.price"),
            currency=self.string(
                table.get("currency", self._currency), f"{key}.currency", CURRENCY
            ),
            priority=self.integer(
                table.get("priority", DEFAULT_GRANT_PRIORITY[CreditSource.PURCHASE]),
                f"{key}.priority",
                0,
                1000,
            ),
        )

    def stripe_prices(
        self, value: object, plans: Mapping[str, Plan], products: Mapping[str, CreditProduct]
    ) -> Mapping[str, StripePrice]:
        table = self.table(value, "stripe_prices")
        mapped = {}
        for price_id, target in table.items():
            key = f"stripe_prices.{price_id}"
            self.string(price_id, key)
            sub = self.table(target, key)
            self.only(sub, key, ("plan", "credit_product"))
            if len(sub) != 1:
                raise self.fail(key, "must name exactly one of plan or credit_product")
            if "plan" in sub:
                plan = self.string(sub["plan"], f"{key}.plan")
                if plan not in plans:
                    raise self.fail(f"{key}.plan", f"{plan!r} is not a plan in [plans]")
                mapped[price_id] = StripePrice(price_id, plan=plan)
            else:
                product = self.string(sub["credit_product"], f"{key}.credit_product")
                if product not in products:
                    raise self.fail(
                        f"{key}.credit_product", f"{product!r} is not in [credit_products]"
                    )
                mapped[price_id] = StripePrice(price_id, credit_product=product)
        return MappingProxyType(mapped)


__all__ = ["PriceBookError", "default_pricebook_text", "load_pricebook", "parse_pricebook"]

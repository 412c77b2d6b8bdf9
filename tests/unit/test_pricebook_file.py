"""The price book file: the built-in book's numbers, exact decimals, one clear error per
broken key, and the ``pricebook check`` operator command."""

from __future__ import annotations

import hashlib
import io
import json
import os
from decimal import Decimal
from pathlib import Path

import pytest

from billing_worker.adapters.pricebook_file import (
    PriceBookError,
    default_pricebook_text,
    load_pricebook,
    parse_pricebook,
)
from billing_worker.domain.pricebook import (
    Aggregation,
    DimensionKind,
    DimensionValue,
    Enforcement,
    Free,
    Graduated,
    Interval,
    PerUnit,
    StripePrice,
    Tier,
)
from billing_worker.entrypoints import cli
from billing_worker.entrypoints.pricebook_commands import check_pricebook
from tests.pricebooks import DEFAULT_BOOK, FEATURES_BOOK, FEATURES_TOML

D = Decimal

CONTRACT_EVENT_TYPES = (
    "generator.website_generated",
    "generator.image_generated",
    "chat.tokens",
    "api.call",
    "api.call_premium",
    "storage.gb_month",
    "ai.inference",
)

MINIMAL_TOML = """
version = "minimal-1"
default_plan = "P"

[meters.m]
event_types = ["x.happened"]

[plans.P]
price = 0
"""


def write(tmp_path: Path, text: str, name: str = "book.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# --- the built-in book ----------------------------------------------------------------------


class TestDefaultBook:
    def test_plans_prices_and_token_limits(self) -> None:
        """FREE/PLUS/PRO cost 0 / 9.90 / 19.90 usd a month and cap tokens at 100k / 1M / 5M."""
        expected = {
            "FREE": (D("0"), D(100_000)),
            "PLUS": (D("9.90"), D(1_000_000)),
            "PRO": (D("19.90"), D(5_000_000)),
        }
        assert set(DEFAULT_BOOK.plans) == set(expected)
        for name, (price, tokens) in expected.items():
            plan = DEFAULT_BOOK.plans[name]
            assert plan.price == price, name
            assert plan.currency == "usd", name
            assert plan.interval is Interval.MONTH, name
            terms = plan.limit_of("tokens")
            assert terms is not None, name
            assert terms.limit == tokens, name
            assert terms.included == tokens, name
            assert terms.enforcement is Enforcement.HARD, name
            assert plan.thresholds == (80, 90, 100), name

    def test_default_plan_is_free(self) -> None:
        """Accounts seen for the first time start on FREE; unknown plans fall back to it."""
        assert DEFAULT_BOOK.default_plan == "FREE"
        assert DEFAULT_BOOK.plan("NO_SUCH_PLAN") is DEFAULT_BOOK.plans["FREE"]

    def test_per_unit_prices(self) -> None:
        """A generated website costs 0.50, an image 0.10, with nothing free before."""
        websites = DEFAULT_BOOK.prices["websites_generated"]
        images = DEFAULT_BOOK.prices["images_generated"]
        assert websites.model == PerUnit(D("0.50"))
        assert images.model == PerUnit(D("0.10"))
        assert websites.free_quantity == images.free_quantity == 0

    def test_credit_costs(self) -> None:
        """Credits per unit: api call 1, premium call 5, GB-month 10, inference call 25."""
        assert dict(DEFAULT_BOOK.credit_costs) == {
            "api_calls": D(1),
            "premium_api_calls": D(5),
            "storage_gb_months": D(10),
            "inference_calls": D(25),
        }

    def test_inference_tokens_priced_per_model(self) -> None:
        """gpt-4 tokens cost 0.002 each; tokens of any other model are free."""
        price = DEFAULT_BOOK.prices["inference_tokens"]
        assert price.dimension == "model"
        assert price.model_for(DimensionValue("gpt-4")) == PerUnit(D("0.002"))
        assert isinstance(price.model_for(DimensionValue("gpt-3.5")), Free)
        assert isinstance(price.model_for(None), Free)
        meter = DEFAULT_BOOK.meters["inference_tokens"]
        assert meter.value_field == "tokens"
        assert meter.event_types == ("ai.inference",)

    def test_inference_event_feeds_calls_and_tokens(self) -> None:
        """One ai.inference event counts its quantity as calls and data.tokens as tokens."""
        feeds = DEFAULT_BOOK.feeds("ai.inference", D(2), {"model": "gpt-4", "tokens": 1500})
        assert {f.meter.name: f.value for f in feeds} == {
            "inference_calls": D(2),
            "inference_tokens": D(1500),
        }

    def test_stripe_prices(self) -> None:
        """Stripe price ids buy PLUS, PRO, or a 1,000-credit pack."""
        stripe = DEFAULT_BOOK.stripe_prices
        assert set(stripe) == {"price_plus_monthly", "price_pro_monthly", "price_credits_1000"}
        assert stripe["price_plus_monthly"] == StripePrice("price_plus_monthly", plan="PLUS")
        assert stripe["price_pro_monthly"] == StripePrice("price_pro_monthly", plan="PRO")
        pack = stripe["price_credits_1000"]
        assert pack.plan is None
        assert pack.credit_product is not None
        assert DEFAULT_BOOK.credit_products[pack.credit_product].credits == D(1000)

    @pytest.mark.parametrize("event_type", CONTRACT_EVENT_TYPES)
    def test_contract_event_type_feeds_a_meter(self, event_type: str) -> None:
        """Every contract event type feeds at least one meter (with its usual data)."""
        feeds = DEFAULT_BOOK.feeds(event_type, D(3), {"model": "gpt-4", "tokens": 10})
        assert feeds, event_type
        assert all(event_type in f.meter.event_types for f in feeds)

    def test_built_in_text_is_the_loaded_book(self) -> None:
        """``load_pricebook(None)`` is the packaged default.toml, digest and all."""
        text = default_pricebook_text()
        assert DEFAULT_BOOK.source == text
        assert DEFAULT_BOOK.digest == hashlib.sha256(text.encode("utf-8")).hexdigest()
        assert DEFAULT_BOOK.version == "2026-11-launch"


# --- exact numbers --------------------------------------------------------------------------


class TestExactNumbers:
    def test_toml_floats_are_read_as_decimals(self) -> None:
        """0.1 in TOML is Decimal("0.1"), not the binary float 0.1000000000000000055..."""
        book = parse_pricebook(
            MINIMAL_TOML.replace("price = 0", "price = 0.1")
            + '\n[prices.m]\nmodel = "per_unit"\nunit_price = 0.2\n'
            + "\n[credit_costs]\nm = 0.3\n"
        )
        plan_price = book.plans["P"].price
        unit_price = book.prices["m"].model
        assert isinstance(plan_price, Decimal)
        assert str(plan_price) == "0.1"
        assert unit_price == PerUnit(D("0.2"))
        assert plan_price + D("0.2") == book.credit_costs["m"] == D("0.3")
        assert plan_price != D(0.1)  # the binary float's exact value differs

    def test_decimal_strings_are_accepted(self) -> None:
        """Numbers may be written as decimal strings, kept digit for digit."""
        book = parse_pricebook(
            MINIMAL_TOML.replace("price = 0", 'price = "19.90"')
            + '\n[prices.m]\nmodel = "graduated"\n'
            + 'tiers = [{ up_to = "1000.5", unit_price = "0.0001" }, { unit_price = "1e-5" }]\n'
            + '\n[credit_costs]\nm = "0.000001"\n'
        )
        assert str(book.plans["P"].price) == "19.90"
        assert book.prices["m"].model == Graduated(
            (Tier(up_to=D("1000.5"), unit_price=D("0.0001")), Tier(None, D("0.00001")))
        )
        assert book.credit_costs["m"] == D("0.000001")


# --- broken books -----------------------------------------------------------------------------


def swap(old: str, new: str, base: str = FEATURES_TOML) -> str:
    """``base`` with its one occurrence of ``old`` replaced (fails loudly if the base moved)."""
    assert base.count(old) == 1, f"{old!r} occurs {base.count(old)} times in the base book"
    return base.replace(old, new)


BROKEN_BOOKS = [
    pytest.param(
        FEATURES_TOML + "\n[plans.BASIC\n",
        "",
        "is not valid TOML",
        id="invalid-toml-syntax",
    ),
    pytest.param(
        swap('version = "test-features-1"\n', ""),
        "version",
        "is required",
        id="missing-version",
    ),
    pytest.param(
        'colour = "blue"\n' + FEATURES_TOML,
        "colour",
        "unknown key",
        id="unknown-top-level-key",
    ),
    pytest.param(
        swap(
            '[meters.api_calls]\nevent_types = ["api.call"]\n',
            '[meters.api_calls]\nevent_types = ["api.call"]\nunits = "call"\n',
        ),
        "meters.api_calls.units",
        "unknown key",
        id="unknown-meter-key",
    ),
    pytest.param(
        swap('event_types = ["api.call"]', "event_types = []"),
        "meters.api_calls.event_types",
        "must be a non-empty list of event types",
        id="meter-with-no-event-types",
    ),
    pytest.param(
        swap('event_types = ["api.call"]\n', ""),
        "meters.api_calls.event_types",
        "is required",
        id="meter-without-event-types-key",
    ),
    pytest.param(
        swap('aggregation = "max"', 'aggregation = "median"'),
        "meters.peak_storage.aggregation",
        "must be one of sum, count, max, unique_count, latest, not 'median'",
        id="unknown-aggregation",
    ),
    pytest.param(
        swap('value = "user_id"\n', ""),
        "meters.seats.value",
        "a unique_count meter must name the data field it counts",
        id="unique-count-without-value",
    ),
    pytest.param(
        swap("[plans.BIG.meters.tokens]", "[plans.BIG.meters.tokenz]"),
        "plans.BIG.meters.tokenz",
        "names no meter defined in [meters]",
        id="plan-references-unknown-meter",
    ),
    pytest.param(
        swap('price = "50.00"', 'price = "-50.00"'),
        "plans.BIG.price",
        "must be a non-negative number, not '-50.00'",
        id="negative-price",
    ),
    pytest.param(
        swap("limit = 10000", "limit = 0"),
        "plans.BIG.meters.tokens.limit",
        "must be a positive number, not 0",
        id="limit-zero",
    ),
    pytest.param(
        swap("thresholds = [50, 100]", "thresholds = [100, 50]"),
        "plans.BIG.thresholds",
        "must be strictly increasing",
        id="non-increasing-thresholds",
    ),
    pytest.param(
        swap("thresholds = [50, 100]", "thresholds = [50, 50, 100]"),
        "plans.BIG.thresholds",
        "must be strictly increasing",
        id="repeated-threshold",
    ),
    pytest.param(
        swap("thresholds = [50, 100]", "thresholds = [0, 100]"),
        "plans.BIG.thresholds[0]",
        "must be a whole number from 1 to 1000, not 0",
        id="threshold-zero",
    ),
    pytest.param(
        swap(
            '{ up_to = 1000, unit_price = "0.01" }, { unit_price = "0.005" }',
            '{ up_to = 1000, unit_price = "0.01" }, { up_to = 500, unit_price = "0.008" }, '
            '{ unit_price = "0.005" }',
        ),
        "prices.tokens.tiers[1].up_to",
        "must be greater than the previous tier's (1000)",
        id="tiers-non-increasing-up-to",
    ),
    pytest.param(
        swap('{ unit_price = "0.005" }', '{ up_to = 5000, unit_price = "0.005" }'),
        "prices.tokens.tiers[1].up_to",
        "the last tier must be unbounded",
        id="bounded-last-tier",
    ),
    pytest.param(
        swap('{ up_to = 1000, unit_price = "0.01" }', '{ unit_price = "0.01" }'),
        "prices.tokens.tiers[0].up_to",
        "only the last tier may be unbounded",
        id="unbounded-non-last-tier",
    ),
    pytest.param(
        swap('model = "graduated"', 'model = "stepped"'),
        "prices.tokens.model",
        "must be one of per_unit, graduated, volume, package, free, not 'stepped'",
        id="unknown-price-model",
    ),
    pytest.param(
        swap(
            'model = "graduated"\ntiers = [{ up_to = 1000, unit_price = "0.01" }, '
            '{ unit_price = "0.005" }]',
            'model = "per_unit"',
        ),
        "prices.tokens.unit_price",
        "is required",
        id="per-unit-without-unit-price",
    ),
    pytest.param(
        swap(
            'model = "graduated"\ntiers = [{ up_to = 1000, unit_price = "0.01" }, '
            '{ unit_price = "0.005" }]',
            'model = "package"\npackage_size = 0\npackage_price = "1.00"',
        ),
        "prices.tokens.package_size",
        "must be a positive number, not 0",
        id="package-size-zero",
    ),
    pytest.param(
        FEATURES_TOML + '\n[prices.emails]\nmodel = "free"\n',
        "prices.emails",
        "names no meter defined in [meters]",
        id="price-for-unknown-meter",
    ),
    pytest.param(
        swap("api_calls = 10", "api_callz = 10"),
        "credit_costs.api_callz",
        "names no meter defined in [meters]",
        id="credit-cost-for-unknown-meter",
    ),
    pytest.param(
        swap('price_big = { plan = "BIG" }', 'price_big = { plan = "HUGE" }'),
        "stripe_prices.price_big.plan",
        "'HUGE' is not a plan in [plans]",
        id="stripe-price-to-unknown-plan",
    ),
    pytest.param(
        swap(
            'price_big = { plan = "BIG" }',
            'price_big = { plan = "BIG", credit_product = "pack_500" }',
        ),
        "stripe_prices.price_big",
        "must name exactly one of plan or credit_product",
        id="stripe-price-names-plan-and-pack",
    ),
    pytest.param(
        swap('default_plan = "BASIC"', 'default_plan = "GOLD"'),
        "default_plan",
        "'GOLD' is not a plan in [plans]",
        id="default-plan-not-in-plans",
    ),
    pytest.param(
        FEATURES_TOML
        + '\n[prices.inference_tokens]\nmodel = "free"\ndimension = "model"\n'
        + '[prices.inference_tokens.by_value."gpt-4"]\nmodel = "per_unit"\nunit_price = "0.002"\n'
        + "\n[plans.BASIC.meters.inference_tokens]\nincluded = 100\n",
        "plans.BASIC.meters.inference_tokens.included",
        "cannot be combined with the per-model prices of prices.inference_tokens",
        id="included-with-per-dimension-price",
    ),
    pytest.param(
        swap("included = 10000\nlimit = 10000", 'included = 10000\nenforcement = "soft"'),
        "plans.BIG.meters.tokens.enforcement",
        "needs a limit to enforce",
        id="enforcement-without-limit",
    ),
    pytest.param(
        swap('filters = { model = "gpt-4" }', 'filters = { model = { name = "gpt-4" } }'),
        "meters.gpt4_tokens.filters.model",
        "must be a string, integer or boolean, not a table",
        id="filter-with-table-value",
    ),
    pytest.param(
        swap("api_calls = 10", "api_calls = 1e999999"),
        "credit_costs.api_calls",
        "at most 38 digits",
        id="absurd-credit-cost",
    ),
    pytest.param(
        swap('unit_price = "0.01"', 'unit_price = "0.0000000000000000001"'),
        "prices.tokens.tiers[0].unit_price",
        "18 after the point",
        id="too-precise-price",
    ),
    pytest.param(
        swap("api_calls = 10", "api_calls = 10\npeak_storage = 1"),
        "credit_costs.peak_storage",
        "a max meter has no per-event amount",
        id="credit-cost-on-max-meter",
    ),
]


class TestBrokenBooks:
    def test_the_base_books_are_valid(self) -> None:
        """The books the broken ones start from load, so each case breaks exactly one thing."""
        assert parse_pricebook(FEATURES_TOML).version == "test-features-1"
        assert parse_pricebook(MINIMAL_TOML).version == "minimal-1"

    @pytest.mark.parametrize(("text", "key", "problem"), BROKEN_BOOKS)
    def test_error_names_file_key_and_problem(
        self, tmp_path: Path, text: str, key: str, problem: str
    ) -> None:
        """A broken book fails with ``file: dotted.key: what is wrong``, at the broken key."""
        path = write(tmp_path, text)
        with pytest.raises(PriceBookError) as caught:
            load_pricebook(path)
        error = caught.value
        assert error.file == str(path)
        assert error.key == key
        assert problem in error.problem
        prefix = f"{path}: {key}: " if key else f"{path}: "
        assert str(error).startswith(prefix)
        assert str(error).endswith(error.problem)

    def test_toml_syntax_error_says_where(self) -> None:
        """A syntax error keeps the parser's line so the operator can find it."""
        with pytest.raises(PriceBookError) as caught:
            parse_pricebook('version = "v"\nprice = = 3\n', "bad.toml")
        assert caught.value.file == "bad.toml"
        assert "line 2" in caught.value.problem

    def test_book_without_plans(self) -> None:
        """A book must define at least one plan."""
        with pytest.raises(PriceBookError) as caught:
            parse_pricebook(MINIMAL_TOML.replace("[plans.P]\nprice = 0\n", "[plans]\n"), "m.toml")
        assert (caught.value.key, caught.value.problem) == (
            "plans",
            "must define at least one plan",
        )


# --- loading --------------------------------------------------------------------------------


class TestLoad:
    def test_missing_file_names_the_path(self, tmp_path: Path) -> None:
        """A price book path that does not exist fails with that path, not a bare OSError."""
        path = tmp_path / "nowhere" / "prices.toml"
        with pytest.raises(PriceBookError) as caught:
            load_pricebook(path)
        assert caught.value.file == str(path)
        assert "cannot be read" in caught.value.problem
        assert str(path) in str(caught.value)

    def test_digest_follows_the_text(self, tmp_path: Path) -> None:
        """The digest is the SHA-256 of the text: equal for equal text, changed by any edit."""
        first = load_pricebook(write(tmp_path, FEATURES_TOML, "a.toml"))
        again = load_pricebook(write(tmp_path, FEATURES_TOML, "b.toml"))
        edited = load_pricebook(write(tmp_path, FEATURES_TOML + "# a comment\n", "c.toml"))
        assert first.digest == hashlib.sha256(FEATURES_TOML.encode("utf-8")).hexdigest()
        assert again.digest == first.digest
        assert edited.digest != first.digest
        assert edited.version == first.version  # same version, different text: digest tells

    def test_version_and_source_are_kept(self, tmp_path: Path) -> None:
        """The book keeps its version and the exact text it came from."""
        book = load_pricebook(write(tmp_path, FEATURES_TOML))
        assert book.version == "test-features-1"
        assert book.source == FEATURES_TOML
        assert book == FEATURES_BOOK  # the file name is not part of the book

    def test_features_book_reads_every_feature(self) -> None:
        """The test book's meters come out with the aggregation, field and filter they name."""
        meters = FEATURES_BOOK.meters
        assert meters["requests"].aggregation is Aggregation.COUNT
        assert meters["peak_storage"].aggregation is Aggregation.MAX
        assert meters["seats"].aggregation is Aggregation.UNIQUE_COUNT
        assert meters["seats"].value_field == "user_id"
        assert meters["plan_level"].aggregation is Aggregation.LATEST
        assert dict(meters["gpt4_tokens"].filters) == {"model": "gpt-4"}
        seats = FEATURES_BOOK.plans["BASIC"].limit_of("seats")
        assert seats is not None
        assert seats.enforcement is Enforcement.SOFT
        assert FEATURES_BOOK.credits_low_balance == D(50)


# --- pricebook check --------------------------------------------------------------------------


@pytest.fixture
def default_book_file(tmp_path: Path) -> Path:
    """The built-in book written out as a file, as an operator would copy it."""
    return write(tmp_path, default_pricebook_text(), "default.toml")


class TestCheckCommand:
    def test_table_lists_every_plan_and_meter(
        self, default_book_file: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """``pricebook check FILE`` exits 0 and prints a row per meter and per plan."""
        out = io.StringIO()
        assert check_pricebook(default_book_file, as_json=False, out=out) == 0
        lines = out.getvalue().splitlines()
        assert lines[0].startswith(f"price book {DEFAULT_BOOK.version} ")
        assert lines[0].endswith(": OK")

        def row(name: str) -> list[str]:
            return [line for line in lines if line.split("  ")[0].strip() == name]

        for meter in DEFAULT_BOOK.meters.values():
            rows = [r for r in row(meter.name) if ", ".join(meter.event_types) in r]
            assert len(rows) == 1, meter.name
        plan_prices = {"FREE": "0.00 usd/month", "PLUS": "9.90 usd/month", "PRO": "19.90 usd/month"}
        for name, price in plan_prices.items():
            rows = row(name)
            assert len(rows) == 1, name
            assert price in rows[0]
        assert "tokens: 1000000 incl., limit 1000000 (hard)" in row("PLUS")[0]
        assert capsys.readouterr().err == ""

    def test_json_matches_the_book(self, default_book_file: Path) -> None:
        """``--json`` prints one JSON document with the book's plans, meters, prices, costs."""
        out = io.StringIO()
        assert check_pricebook(default_book_file, as_json=True, out=out) == 0
        summary = json.loads(out.getvalue())
        assert summary["version"] == DEFAULT_BOOK.version
        assert summary["default_plan"] == "FREE"
        assert summary["digest"] == DEFAULT_BOOK.digest
        plans = {p["name"]: p for p in summary["plans"]}
        assert set(plans) == set(DEFAULT_BOOK.plans)
        for name, plan in DEFAULT_BOOK.plans.items():
            assert D(plans[name]["price"]) == plan.price
            assert plans[name]["thresholds"] == list(plan.thresholds)
            assert D(plans[name]["credit_grant"]) == plan.credit_grant
            terms = plan.limit_of("tokens")
            assert terms is not None
            assert terms.limit is not None
            assert D(plans[name]["meters"]["tokens"]["limit"]) == terms.limit
            assert plans[name]["meters"]["tokens"]["enforcement"] == "hard"
        meters = {m["name"]: m for m in summary["meters"]}
        assert set(meters) == set(DEFAULT_BOOK.meters)
        for name, meter in DEFAULT_BOOK.meters.items():
            assert meters[name]["event_types"] == list(meter.event_types)
            assert meters[name]["aggregation"] == meter.aggregation.value
        assert meters["inference_tokens"]["value"] == "data.tokens"
        prices = {p["meter"]: p for p in summary["prices"]}
        assert set(prices) == set(DEFAULT_BOOK.prices)
        assert prices["websites_generated"]["model"] == "per unit 0.50"
        assert prices["images_generated"]["model"] == "per unit 0.10"
        assert prices["inference_tokens"]["dimension"] == "model"
        assert prices["inference_tokens"]["by_value"] == {"gpt-4": "per unit 0.002"}
        costs = {meter: D(cost) for meter, cost in summary["credit_costs"].items()}
        assert costs == dict(DEFAULT_BOOK.credit_costs)
        assert summary["stripe_prices"]["price_plus_monthly"] == "plan PLUS"

    def test_broken_file_exits_1_with_the_key(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """An invalid book exits 1, prints nothing on stdout, and names file and key on stderr."""
        path = write(tmp_path, swap("limit = 10000", "limit = 0"))
        out = io.StringIO()
        assert check_pricebook(path, as_json=True, out=out) == 1
        assert out.getvalue() == ""
        err = capsys.readouterr().err
        assert str(path) in err
        assert "plans.BIG.meters.tokens.limit" in err

    def test_through_the_cli(
        self,
        default_book_file: Path,
        capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch,
        restore_logging: None,
    ) -> None:
        """``billing-worker pricebook check FILE`` runs without services and exits 0."""
        for name in list(os.environ):
            if name.startswith("BILLING_"):
                monkeypatch.delenv(name)
        assert cli.main(["pricebook", "check", str(default_book_file)]) == 0
        assert f"price book {DEFAULT_BOOK.version}" in capsys.readouterr().out


class TestDimensionKeys:
    def test_a_key_no_event_can_carry_is_refused(self) -> None:
        """A by_value key longer than any dimension string could never apply: refused,
        naming the key."""
        long_key = "m" * 257
        text = default_pricebook_text().replace(
            '[prices.inference_tokens.by_value."gpt-4"]',
            f'[prices.inference_tokens.by_value."{long_key}"]',
        )
        with pytest.raises(PriceBookError, match="would never apply"):
            parse_pricebook(text)

    def test_keys_that_read_like_other_json_kinds_are_strings(self) -> None:
        """A key "null" or "7" prices the strings "null" and "7" only: JSON null, the number
        7 and an event without the field keep the default model."""
        text = default_pricebook_text().replace(
            '[prices.inference_tokens.by_value."gpt-4"]',
            '[prices.inference_tokens.by_value."7"]',
        )
        price = parse_pricebook(text).prices["inference_tokens"]
        assert price.model_for(DimensionValue("7")) == PerUnit(D("0.002"))
        for other in (
            DimensionValue("7", DimensionKind.NUMBER),
            DimensionValue("null", DimensionKind.NULL),
            DimensionValue("", DimensionKind.ABSENT),
        ):
            assert isinstance(price.model_for(other), Free)

"""Rating: price models turn billable quantities into exact amounts; money is rounded once."""

from __future__ import annotations

import math
from decimal import Decimal, Inexact

import pytest
from hypothesis import given
from hypothesis import strategies as st

from billing_worker.domain.pricebook import (
    DimensionValue,
    Free,
    Graduated,
    MeterPrice,
    Package,
    PerUnit,
    PriceModel,
    Tier,
    Volume,
)
from billing_worker.domain.rating import (
    TierCharge,
    billable_quantity,
    check_tiers,
    credits_for,
    minor_unit_places,
    packages_for,
    rate,
    rate_increment,
    rate_line,
    round_money,
    tier_breakdown,
)

D = Decimal

# --- strategies ----------------------------------------------------------------------------

quantities = st.decimals(
    min_value=0, max_value=10**9, places=6, allow_nan=False, allow_infinity=False
)
small_quantities = st.decimals(
    min_value=0, max_value=10**4, places=3, allow_nan=False, allow_infinity=False
)
prices = st.decimals(min_value=0, max_value=100, places=4, allow_nan=False, allow_infinity=False)
fees = st.decimals(min_value=0, max_value=1000, places=2, allow_nan=False, allow_infinity=False)
widths = st.decimals(
    min_value=D("0.001"), max_value=10**6, places=3, allow_nan=False, allow_infinity=False
)
money = st.decimals(
    min_value=-(10**12), max_value=10**12, places=6, allow_nan=False, allow_infinity=False
)
fractions = st.decimals(
    min_value=D("0.000001"), max_value=1, places=6, allow_nan=False, allow_infinity=False
)
"""A share of a tier's range, never 0 (which would fall in the tier below)."""
currencies = st.sampled_from(["usd", "EUR", "jpy", "KRW", "kwd", "bhd", "xyz"])


@st.composite
def tier_lists(draw: st.DrawFn, *, max_tiers: int = 5) -> tuple[Tier, ...]:
    """Tiers with strictly increasing positive bounds and an unbounded last tier."""
    bounded = draw(st.lists(st.tuples(widths, prices, fees), max_size=max_tiers - 1))
    tiers = []
    bound = D(0)
    for width, price, fee in bounded:
        bound += width
        tiers.append(Tier(up_to=bound, unit_price=price, flat_fee=fee))
    tiers.append(Tier(up_to=None, unit_price=draw(prices), flat_fee=draw(fees)))
    return tuple(tiers)


models: st.SearchStrategy[PriceModel] = st.one_of(
    st.builds(PerUnit, prices),
    st.builds(Graduated, tier_lists()),
    st.builds(Volume, tier_lists()),
    st.builds(Package, widths, prices),
    st.just(Free()),
)

monotonic_models: st.SearchStrategy[PriceModel] = st.one_of(
    st.builds(PerUnit, prices),
    st.builds(Graduated, tier_lists()),
    st.builds(Package, widths, prices),
)

STORAGE = Graduated(
    (Tier(up_to=D(1000), unit_price=D("0.01")), Tier(up_to=None, unit_price=D("0.005")))
)
"""The brief's graduated example: the first 1000 units at 0.01, the rest at 0.005."""

BULK = Volume(
    (
        Tier(up_to=D(100), unit_price=D("1.00")),
        Tier(up_to=D(1000), unit_price=D("0.50"), flat_fee=D(5)),
        Tier(up_to=None, unit_price=D("0.25"), flat_fee=D(20)),
    )
)


# --- worked examples -------------------------------------------------------------------------


class TestPlatformPrices:
    def test_websites(self) -> None:
        """3 websites at 0.50 cost 1.50."""
        assert rate(PerUnit(D("0.50")), D(3)) == D("1.50")

    def test_images(self) -> None:
        """7 images at 0.10 cost 0.70."""
        assert rate(PerUnit(D("0.10")), D(7)) == D("0.70")

    def test_gpt4_tokens_exact_then_rounded(self) -> None:
        """12345 gpt-4 tokens at 0.002 are exactly 24.690 (no digit lost), 24.69 on the bill."""
        amount = rate(PerUnit(D("0.002")), D(12345))
        assert amount == D("24.690")
        assert str(amount) == "24.690"
        assert round_money(amount, "usd") == D("24.69")

    def test_gpt4_line_uses_the_dimension_model(self) -> None:
        """The inference-token price charges gpt-4 per token and other models nothing."""
        price = MeterPrice(
            meter="inference_tokens",
            model=Free(),
            dimension="model",
            by_value={"gpt-4": PerUnit(D("0.002"))},
        )
        gpt4 = rate_line(price, D(12345), dimension_value=DimensionValue("gpt-4"))
        assert gpt4.amount == D("24.690")
        assert gpt4.breakdown == (
            TierCharge(0, D(0), D(12345), D(12345), D("0.002"), D(0), D("24.690")),
        )
        other = rate_line(price, D(12345), dimension_value=DimensionValue("llama-3"))
        assert other.amount == 0
        assert other.breakdown == ()


class TestPerUnitAndFree:
    def test_zero_quantity(self) -> None:
        """No usage, no charge, and no breakdown rows."""
        assert rate(PerUnit(D("0.50")), D(0)) == 0
        assert tier_breakdown(PerUnit(D("0.50")), D(0)) == ()

    def test_fractional_quantity(self) -> None:
        """2.5 GB-months at 0.023 cost exactly 0.0575."""
        assert rate(PerUnit(D("0.023")), D("2.5")) == D("0.0575")

    def test_free_is_free(self) -> None:
        """The free model charges nothing and shows no rows, whatever the quantity."""
        assert rate(Free(), D(10**12)) == 0
        assert tier_breakdown(Free(), D(5)) == ()


class TestGraduated:
    def test_within_first_tier(self) -> None:
        """500 units all fall in the first tier: 500 x 0.01."""
        assert rate(STORAGE, D(500)) == D("5.00")

    def test_exactly_at_bound_stays_in_first_tier(self) -> None:
        """Bounds are inclusive: unit 1000 is still priced by the first tier."""
        assert rate(STORAGE, D(1000)) == D("10.00")
        assert len(tier_breakdown(STORAGE, D(1000))) == 1

    def test_across_tiers(self) -> None:
        """1500 units: 1000 x 0.01 + 500 x 0.005 = 12.50, shown as two rows."""
        assert rate(STORAGE, D(1500)) == D("12.50")
        assert tier_breakdown(STORAGE, D(1500)) == (
            TierCharge(0, D(0), D(1000), D(1000), D("0.01"), D(0), D("10.00")),
            TierCharge(1, D(1000), D(1500), D(500), D("0.005"), D(0), D("2.500")),
        )

    def test_fractional_unit_past_bound(self) -> None:
        """1000.5 units: the half unit above the bound belongs to the second tier."""
        assert rate(STORAGE, D("1000.5")) == D("10.00") + D("0.5") * D("0.005")

    def test_flat_fee_once_per_reached_tier(self) -> None:
        """Each reached tier's flat fee is charged once; unreached tiers' fees are not."""
        model = Graduated(
            (
                Tier(up_to=D(10), unit_price=D(1), flat_fee=D(3)),
                Tier(up_to=D(20), unit_price=D(2), flat_fee=D(7)),
                Tier(up_to=None, unit_price=D(4), flat_fee=D(100)),
            )
        )
        assert rate(model, D(1)) == 1 + 3
        assert rate(model, D(10)) == 10 + 3
        assert rate(model, D(11)) == 10 + 3 + 2 + 7
        assert rate(model, D(20)) == 10 + 3 + 20 + 7

    def test_zero_charges_no_flat_fee(self) -> None:
        """A quantity of 0 reaches no tier, so even a first-tier flat fee is not charged."""
        model = Graduated((Tier(up_to=None, unit_price=D(1), flat_fee=D(9)),))
        assert rate(model, D(0)) == 0

    def test_beyond_bounded_last_tier_refused(self) -> None:
        """A quantity past a bounded last tier cannot be priced and says so."""
        model = Graduated((Tier(up_to=D(10), unit_price=D(1)),))
        assert rate(model, D(10)) == 10
        with pytest.raises(ValueError, match="beyond the last tier"):
            rate(model, D("10.000001"))


class TestVolume:
    def test_exactly_at_bound(self) -> None:
        """100 units are in the first tier: all at 1.00, no fee."""
        assert rate(BULK, D(100)) == D(100)

    def test_just_above_bound(self) -> None:
        """101 units move every unit to the second tier and add its fee: 101 x 0.50 + 5."""
        assert rate(BULK, D(101)) == D("55.50")
        assert tier_breakdown(BULK, D(101)) == (
            TierCharge(1, D(0), D(101), D(101), D("0.50"), D(5), D("55.50")),
        )

    def test_price_drops_at_boundary(self) -> None:
        """Like Stripe's volume pricing, crossing into a cheaper tier can lower the total."""
        assert rate(BULK, D(101)) < rate(BULK, D(100))
        assert rate_increment(BULK, D(100), D(101)) == D("55.50") - D(100)

    def test_zero_costs_nothing(self) -> None:
        """No usage reaches no tier: no unit price, no flat fee, no rows."""
        assert rate(BULK, D(0)) == 0
        assert tier_breakdown(BULK, D(0)) == ()

    def test_fractional(self) -> None:
        """100.5 units are above the first bound, so all 100.5 are at the second tier."""
        assert rate(BULK, D("100.5")) == D("100.5") * D("0.50") + 5

    def test_unbounded_tier(self) -> None:
        """Past every bound the last tier applies: 5000 x 0.25 + 20."""
        assert rate(BULK, D(5000)) == D(1270)

    def test_beyond_bounded_last_tier_refused(self) -> None:
        """A bounded last tier does not silently price larger totals."""
        with pytest.raises(ValueError, match="beyond the last tier"):
            rate(Volume((Tier(up_to=D(5), unit_price=D(1)),)), D(6))


class TestPackage:
    PACK = Package(package_size=D(100), package_price=D(2))

    def test_zero(self) -> None:
        """No usage starts no package."""
        assert rate(self.PACK, D(0)) == 0

    def test_exactly_one_package(self) -> None:
        """100 units fill exactly one package."""
        assert rate(self.PACK, D(100)) == 2

    def test_one_unit_over(self) -> None:
        """101 units start a second package, charged in full."""
        assert rate(self.PACK, D(101)) == 4
        assert tier_breakdown(self.PACK, D(101)) == (
            TierCharge(0, D(0), D(101), D(2), D(2), D(0), D(4)),
        )

    def test_a_sliver_starts_a_package(self) -> None:
        """Any positive quantity, however small, starts the first package."""
        assert rate(self.PACK, D("0.000001")) == 2

    def test_fractional_size(self) -> None:
        """Packages of 0.3 GB: 0.9 is exactly three, 0.91 starts a fourth (no float error)."""
        model = Package(package_size=D("0.3"), package_price=D("1.25"))
        assert rate(model, D("0.9")) == D("3.75")
        assert rate(model, D("0.91")) == D("5.00")

    def test_non_positive_size_refused(self) -> None:
        """A package size of 0 is a price error, not a division by zero."""
        with pytest.raises(ValueError, match="package_size"):
            rate(Package(package_size=D(0), package_price=D(1)), D(1))


class TestValidation:
    @pytest.mark.parametrize(
        "model",
        [PerUnit(D(1)), STORAGE, BULK, Package(D(1), D(1)), Free()],
        ids=["per_unit", "graduated", "volume", "package", "free"],
    )
    def test_negative_quantity_refused(self, model: PriceModel) -> None:
        """Every model refuses a negative quantity with a clear message."""
        with pytest.raises(ValueError, match="must not be negative"):
            rate(model, D("-1"))

    @pytest.mark.parametrize("quantity", [D("NaN"), D("Infinity"), D("sNaN")])
    def test_non_finite_quantity_refused(self, quantity: Decimal) -> None:
        """NaN and infinity are not quantities."""
        with pytest.raises(ValueError, match="finite"):
            rate(PerUnit(D(1)), quantity)

    @pytest.mark.parametrize(
        ("tiers", "message"),
        [
            ((), "at least one tier"),
            ((Tier(up_to=D(10)), Tier(up_to=D(10)), Tier(up_to=None)), "greater than"),
            ((Tier(up_to=D(10)), Tier(up_to=D(5)), Tier(up_to=None)), "greater than"),
            ((Tier(up_to=D(0)), Tier(up_to=None)), "greater than"),
            ((Tier(up_to=None), Tier(up_to=D(10))), "not the last tier"),
            ((Tier(up_to=None, unit_price=D(-1)),), "non-negative"),
        ],
        ids=["empty", "equal", "decreasing", "zero_bound", "unbounded_first", "negative_price"],
    )
    def test_broken_tiers_refused(self, tiers: tuple[Tier, ...], message: str) -> None:
        """Malformed tier lists raise instead of rating to something arbitrary."""
        with pytest.raises(ValueError, match=message):
            rate(Graduated(tiers), D(1))
        with pytest.raises(ValueError, match=message):
            rate(Volume(tiers), D(1))

    def test_loader_can_require_unbounded_last(self) -> None:
        """Rating tolerates a bounded last tier; the price book's stricter check does not."""
        tiers = (Tier(up_to=D(10)),)
        check_tiers(tiers)
        with pytest.raises(ValueError, match="must be unbounded"):
            check_tiers(tiers, require_unbounded_last=True)


# --- properties ------------------------------------------------------------------------------


class TestProperties:
    @given(models, quantities)
    def test_non_negative(self, model: PriceModel, quantity: Decimal) -> None:
        """No model charges a negative amount for a non-negative quantity."""
        assert rate(model, quantity) >= 0

    @given(models, quantities)
    def test_breakdown_adds_up(self, model: PriceModel, quantity: Decimal) -> None:
        """The rows an invoice shows add up to the amount, and each row is self-consistent."""
        rows = tier_breakdown(model, quantity)
        assert sum((row.amount for row in rows), D(0)) == rate(model, quantity)
        for row in rows:
            assert row.units > 0
            assert row.amount == row.units * row.unit_price + row.flat_fee

    @given(monotonic_models, quantities, quantities)
    def test_monotonic(self, model: PriceModel, a: Decimal, b: Decimal) -> None:
        """Per-unit, graduated and package amounts never fall as the quantity grows."""
        low, high = sorted((a, b))
        assert rate(model, low) <= rate(model, high)
        assert rate_increment(model, low, high) >= 0

    @given(tier_lists(), st.data(), fractions, fractions)
    def test_volume_monotonic_within_a_tier(
        self, tiers: tuple[Tier, ...], data: st.DataObject, f: Decimal, g: Decimal
    ) -> None:
        """Volume amounts never fall while the total stays inside one tier's range."""
        index = data.draw(st.integers(0, len(tiers) - 1))
        lower = D(0) if index == 0 else tiers[index - 1].up_to
        assert lower is not None
        upper = tiers[index].up_to or lower + 10**9
        low, high = (lower + (upper - lower) * x for x in sorted((f, g)))
        model = Volume(tiers)
        assert tier_breakdown(model, low)[0].tier_index == index
        assert tier_breakdown(model, high)[0].tier_index == index
        assert rate(model, low) <= rate(model, high)

    @given(tier_lists(), st.lists(quantities, max_size=8))
    def test_graduated_split_invariance(
        self, tiers: tuple[Tier, ...], parts: list[Decimal]
    ) -> None:
        """Rating a total equals summing the increments of any split of it into parts."""
        model = Graduated(tiers)
        running, increments = D(0), D(0)
        for part in parts:
            increments += rate_increment(model, running, running + part)
            running += part
        assert increments == rate(model, running)

    @given(tier_lists(), quantities)
    def test_graduated_rows_partition_the_quantity(
        self, tiers: tuple[Tier, ...], quantity: Decimal
    ) -> None:
        """Graduated rows are consecutive slices of (0, quantity] within their tiers' bounds."""
        rows = tier_breakdown(Graduated(tiers), quantity)
        assert sum((row.units for row in rows), D(0)) == quantity
        lower = D(0)
        for index, row in enumerate(rows):
            assert row.tier_index == index
            assert row.from_quantity == lower
            bound = tiers[index].up_to
            assert bound is None or row.to_quantity <= bound
            lower = row.to_quantity

    @given(
        st.lists(st.tuples(st.integers(1, 50), prices, fees), min_size=1, max_size=4),
        st.integers(0, 300),
    )
    def test_graduated_matches_unit_by_unit_oracle(
        self, spec: list[tuple[int, Decimal, Decimal]], quantity: int
    ) -> None:
        """For whole units, graduated pricing equals pricing each unit by its own tier
        and adding the fee of every tier some unit landed in."""
        tiers, bound = [], 0
        for width, price, fee in spec[:-1]:
            bound += width
            tiers.append(Tier(up_to=D(bound), unit_price=price, flat_fee=fee))
        tiers.append(Tier(up_to=None, unit_price=spec[-1][1], flat_fee=spec[-1][2]))

        def tier_of(unit: int) -> int:
            return next(i for i, t in enumerate(tiers) if t.up_to is None or unit <= t.up_to)

        landed = [tier_of(unit) for unit in range(1, quantity + 1)]
        expected = sum((tiers[i].unit_price for i in landed), D(0))
        expected += sum((tiers[i].flat_fee for i in set(landed)), D(0))
        assert rate(Graduated(tuple(tiers)), D(quantity)) == expected

    @given(tier_lists(), small_quantities)
    def test_volume_matches_tier_lookup_oracle(
        self, tiers: tuple[Tier, ...], quantity: Decimal
    ) -> None:
        """Volume pricing equals the quantity times the price of the first tier that holds
        it, plus that tier's fee (0 for no usage)."""
        tier = next(t for t in tiers if t.up_to is None or quantity <= t.up_to)
        expected = quantity * tier.unit_price + tier.flat_fee if quantity > 0 else D(0)
        assert rate(Volume(tiers), quantity) == expected

    @given(prices, fees, quantities)
    def test_single_unbounded_tier_is_per_unit_plus_fee(
        self, price: Decimal, fee: Decimal, quantity: Decimal
    ) -> None:
        """One open tier makes graduated and volume agree: per-unit plus the fee if used."""
        tiers = (Tier(up_to=None, unit_price=price, flat_fee=fee),)
        expected = rate(PerUnit(price), quantity) + (fee if quantity > 0 else 0)
        assert rate(Graduated(tiers), quantity) == expected
        assert rate(Volume(tiers), quantity) == expected

    @given(widths, prices, quantities)
    def test_package_count_is_a_ceiling(
        self, size: Decimal, price: Decimal, quantity: Decimal
    ) -> None:
        """The packages charged are the fewest that cover the quantity."""
        packages = packages_for(quantity, size)
        assert packages == int(packages)
        assert packages * size >= quantity
        assert packages == 0 or (packages - 1) * size < quantity
        assert rate(Package(size, price), quantity) == packages * price

    @given(prices, st.integers(0, 10**6))
    def test_package_of_one_is_per_unit_for_whole_units(
        self, price: Decimal, quantity: int
    ) -> None:
        """Packages of one unit charge whole quantities exactly like a per-unit price."""
        assert rate(Package(D(1), price), D(quantity)) == rate(PerUnit(price), D(quantity))

    @given(
        st.decimals(min_value=0, max_value=D("9" * 20), places=18, allow_nan=False),
        st.decimals(min_value=0, max_value=D("9" * 20), places=18, allow_nan=False),
    )
    def test_38_digit_products_are_exact(self, quantity: Decimal, price: Decimal) -> None:
        """Products of 38-digit numbers keep every digit (28-digit default would round)."""
        amount = rate(PerUnit(price), quantity)
        q, p = quantity.as_integer_ratio(), price.as_integer_ratio()
        assert amount.as_integer_ratio() == _ratio(q[0] * p[0], q[1] * p[1])

    def test_too_many_digits_raise_instead_of_rounding(self) -> None:
        """An amount that would need more digits than the exact context holds raises
        ``decimal.Inexact``; it is never silently rounded."""
        with pytest.raises(Inexact):
            rate(PerUnit(D("1." + "1" * 49)), D("1" * 60))


def _ratio(numerator: int, denominator: int) -> tuple[int, int]:
    gcd = math.gcd(numerator, denominator)
    return numerator // gcd, denominator // gcd


# --- billable quantity and lines -----------------------------------------------------------------


class TestBillable:
    def test_allowances_come_off(self) -> None:
        """Included and free units are subtracted from usage."""
        assert billable_quantity(D(150), included=D(100), free_quantity=D(20)) == 30

    def test_never_below_zero(self) -> None:
        """Usage under the allowances bills nothing, not a negative quantity."""
        assert billable_quantity(D(50), included=D(100), free_quantity=D(20)) == 0

    def test_negative_allowance_refused(self) -> None:
        """A negative allowance would inflate the bill; it is refused."""
        with pytest.raises(ValueError, match="included must not be negative"):
            billable_quantity(D(5), included=D(-1), free_quantity=D(0))

    @given(quantities, quantities, quantities)
    def test_bounds(self, quantity: Decimal, included: Decimal, free: Decimal) -> None:
        """Billable is between 0 and the usage, and is exactly what exceeds the allowances."""
        billable = billable_quantity(quantity, included=included, free_quantity=free)
        assert 0 <= billable <= quantity
        assert billable == max(D(0), quantity - (included + free))

    def test_line_tiers_count_billable_units(self) -> None:
        """Tiers apply to what is left after allowances: 1600 used - 100 included - 100 free
        = 1400 billable -> 1000 x 0.01 + 400 x 0.005."""
        price = MeterPrice(meter="storage_gb_months", model=STORAGE, free_quantity=D(100))
        line = rate_line(price, D(1600), included=D(100))
        assert line.meter == "storage_gb_months"
        assert (line.quantity, line.included, line.free_quantity) == (D(1600), D(100), D(100))
        assert line.billable == D(1400)
        assert line.amount == D("12.00")
        assert [row.units for row in line.breakdown] == [D(1000), D(400)]

    def test_line_under_allowance_is_empty(self) -> None:
        """A line whose usage the allowances cover has no amount and no rows."""
        price = MeterPrice(meter="websites_generated", model=PerUnit(D("0.50")), free_quantity=D(5))
        line = rate_line(price, D(3))
        assert (line.billable, line.amount, line.breakdown) == (D(0), D(0), ())


# --- money and credits ---------------------------------------------------------------------------


class TestRoundMoney:
    def test_half_cent_rounds_up(self) -> None:
        """0.005 usd is half a cent: it rounds up to 0.01 (half-even would give 0.00)."""
        assert round_money(D("0.005"), "usd") == D("0.01")
        assert round_money(D("0.015"), "usd") == D("0.02")
        assert round_money(D("0.0049999"), "usd") == D("0.00")

    def test_result_has_the_minor_unit_exponent(self) -> None:
        """Rounded amounts carry exactly the currency's places (1.5 usd -> 1.50)."""
        assert str(round_money(D("1.5"), "usd")) == "1.50"
        assert str(round_money(D("1234.5"), "jpy")) == "1235"
        assert str(round_money(D("1.2345"), "kwd")) == "1.235"

    @pytest.mark.parametrize(
        ("currency", "places"),
        [("usd", 2), ("EUR", 2), ("jpy", 0), ("KRW", 0), ("xpf", 0), ("kwd", 3), ("Bhd", 3)],
    )
    def test_minor_units(self, currency: str, places: int) -> None:
        """Zero- and three-decimal currencies are known, case-insensitively."""
        assert minor_unit_places(currency) == places

    def test_unknown_code_gets_two_places(self) -> None:
        """A three-letter code not on either list is treated as a cents currency."""
        assert round_money(D("1.005"), "xyz") == D("1.01")

    @pytest.mark.parametrize("currency", ["", "us", "usdt", "u$d", "ÿen"])
    def test_malformed_code_refused(self, currency: str) -> None:
        """Only three ASCII letters name a currency."""
        with pytest.raises(ValueError, match="three-letter"):
            round_money(D(1), currency)

    def test_negative_rounds_away_from_zero(self) -> None:
        """Credit notes round like charges, mirrored: -0.005 usd -> -0.01, -0.5 jpy -> -1."""
        assert round_money(D("-0.005"), "usd") == D("-0.01")
        assert round_money(D("-0.5"), "jpy") == D(-1)

    def test_no_negative_zero(self) -> None:
        """A tiny negative amount rounds to a plain 0.00, not -0.00."""
        assert str(round_money(D("-0.001"), "usd")) == "0.00"

    @given(money, currencies)
    def test_symmetric(self, amount: Decimal, currency: str) -> None:
        """Rounding a negated amount gives the negated rounding."""
        assert round_money(-amount, currency) == -round_money(amount, currency)

    @given(money, currencies)
    def test_idempotent_and_close(self, amount: Decimal, currency: str) -> None:
        """Rounding twice equals rounding once, and moves at most half a minor unit."""
        once = round_money(amount, currency)
        assert round_money(once, currency) == once
        half_unit = D(1).scaleb(-minor_unit_places(currency)) / 2
        assert abs(once - amount) <= half_unit

    def test_per_line_rounding_differs_from_rounding_the_sum(self) -> None:
        """Three lines of 0.005 usd each are 0.01 on the invoice, so the total is 0.03; rounding
        the exact sum (0.015) would give 0.02, a total that disagrees with its own lines.
        That is why amounts are rounded per line and totals are sums of rounded lines."""
        lines = [rate(PerUnit(D("0.001")), D(5)) for _ in range(3)]
        assert sum((round_money(line, "usd") for line in lines), D(0)) == D("0.03")
        assert round_money(sum(lines, D(0)), "usd") == D("0.02")


class TestCredits:
    def test_exact_product(self) -> None:
        """Credits are exact: 3 premium calls at 5 credits are 15; 2.5 GB-months at 10 are 25."""
        assert credits_for(D(3), D(5)) == 15
        assert credits_for(D("2.5"), D(10)) == 25

    def test_never_rounded(self) -> None:
        """Fractional credits keep every digit."""
        assert credits_for(D("0.333"), D("0.0007")) == D("0.0002331")

    def test_negative_quantity_refused(self) -> None:
        """Credits are never computed for negative usage."""
        with pytest.raises(ValueError, match="must not be negative"):
            credits_for(D(-1), D(5))

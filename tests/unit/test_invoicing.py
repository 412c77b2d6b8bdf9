"""Invoice building: plan fees, included quantities, every price model, per-dimension
prices, plan changes mid-period, credits, adjustments, and the one rounding per line.

Expected amounts are worked out by hand in each test, never by calling the code under test.
"""

from __future__ import annotations

import dataclasses
import itertools
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from billing_worker.adapters.pricebook_file import default_pricebook_text, parse_pricebook
from billing_worker.domain.invoice_adjustments import adjustment_line
from billing_worker.domain.invoice_model import (
    CreditUse,
    InvoiceDraft,
    InvoiceLine,
    MeterUsage,
    PlanSpan,
)
from billing_worker.domain.invoice_words import quantity_text
from billing_worker.domain.invoicing import build_invoice
from billing_worker.domain.periods import BillingPeriod, calendar_month_of
from billing_worker.domain.pricebook import DimensionKind, DimensionValue, PriceBook
from billing_worker.domain.proration import prorate
from billing_worker.domain.rating import TierCharge
from tests.pricebooks import DEFAULT_BOOK, FEATURES_BOOK

D = Decimal

NOV = calendar_month_of(datetime(2026, 11, 5, tzinfo=UTC))  # 30 days
OCT = calendar_month_of(datetime(2026, 10, 5, tzinfo=UTC))  # 31 days
FEB = calendar_month_of(datetime(2027, 2, 5, tzinfo=UTC))  # 28 days


def whole(plan: str, period: BillingPeriod = NOV) -> list[PlanSpan]:
    return [PlanSpan(plan, period.start, period.end)]


def day(n: float, period: BillingPeriod = NOV) -> datetime:
    return period.start + timedelta(days=n)


def amounts(draft: InvoiceDraft) -> list[tuple[str, str | None, Decimal]]:
    return [(line.kind, line.meter, line.amount) for line in draft.lines]


def usage_line(draft: InvoiceDraft, meter: str) -> InvoiceLine:
    (line,) = [line for line in draft.lines if line.kind == "usage" and line.meter == meter]
    return line


def invoice(
    book: PriceBook,
    usage: list[MeterUsage],
    *,
    plan: str | None = None,
    spans: list[PlanSpan] | None = None,
    **kwargs: object,
) -> InvoiceDraft:
    return build_invoice(
        book,
        account="acct_1",
        period=NOV,
        spans=whole(plan or book.default_plan) if spans is None else spans,
        usage=usage,
        **kwargs,  # type: ignore[arg-type]
    )


def values(**totals: Decimal) -> dict[DimensionValue, Decimal]:
    """Per-value totals of string dimension values."""
    return {DimensionValue(text): total for text, total in totals.items()}


def text_of(line: InvoiceLine) -> str | None:
    return None if line.dimension_value is None else line.dimension_value.text


def places(amount: Decimal) -> int:
    exponent = amount.as_tuple().exponent
    assert isinstance(exponent, int)
    return max(-exponent, 0)


MODELS_TOML = """
version = "test-models-1"
currency = "{currency}"
default_plan = "P"

[meters.calls]
event_types = ["api.call"]
unit = "call"

[meters.rows]
event_types = ["db.rows"]
unit = "row"

[meters.peak]
event_types = ["storage.peak"]
aggregation = "max"
unit = "GB"

[meters.gen]
event_types = ["ai.gen"]
unit = "image"

[meters.a]
event_types = ["a.used"]
[meters.b]
event_types = ["b.used"]
[meters.c]
event_types = ["c.used"]

[meters.pings]
event_types = ["ping"]

[plans.P]
price = "10.00"
[plans.P.meters.rows]
included = 1

[plans.NONE]
price = "0"

[plans.YEARLY]
price = "120.00"
interval = "year"

[plans.YEARLY_ODD]
price = "100.00"
interval = "year"

# volume: all units at the tier the total reaches
[prices.calls]
model = "volume"
tiers = [
  {{ up_to = 100, unit_price = "1.00" }},
  {{ up_to = 1000, unit_price = "0.50", flat_fee = 5 }},
  {{ unit_price = "0.25", flat_fee = 20 }},
]

# package: 2.00 per started 1,000 rows after 100 free ones
[prices.rows]
model = "package"
package_size = 1000
package_price = "2.00"
free_quantity = 100

[prices.peak]
model = "per_unit"
unit_price = "1.00"

# per model: a at 0.10, b at 1.00, others free; 15 free images per period in all
[prices.gen]
model = "free"
free_quantity = 15
dimension = "model"
[prices.gen.by_value.a]
model = "per_unit"
unit_price = "0.10"
[prices.gen.by_value.b]
model = "per_unit"
unit_price = "1.00"

[prices.a]
model = "per_unit"
unit_price = "0.005"
[prices.b]
model = "per_unit"
unit_price = "0.005"
[prices.c]
model = "per_unit"
unit_price = "0.005"

[prices.pings]
model = "per_unit"
unit_price = "0.5"
"""

MODELS_BOOK = parse_pricebook(MODELS_TOML.format(currency="usd"), "models.toml")
JPY_BOOK = parse_pricebook(MODELS_TOML.format(currency="jpy"), "models-jpy.toml")
KWD_BOOK = parse_pricebook(MODELS_TOML.format(currency="kwd"), "models-kwd.toml")


# --- worked examples -----------------------------------------------------------------------


class TestDefaultBook:
    def test_plus_month(self) -> None:
        """PLUS with 1.2M tokens (no price: a 0.00 line so the usage shows), 3 websites at
        0.50 and 7 images at 0.10: 9.90 + 1.50 + 0.70 = 12.10, lines in meter order."""
        draft = invoice(
            DEFAULT_BOOK,
            [
                MeterUsage("websites_generated", D(3), 3, 11, 13),
                MeterUsage("tokens", D(1_200_000), 4, 1, 4),
                MeterUsage("images_generated", D(7), 7, 5, 10),
            ],
            plan="PLUS",
        )
        assert amounts(draft) == [
            ("plan_fee", None, D("9.90")),
            ("usage", "images_generated", D("0.70")),
            ("usage", "tokens", D("0.00")),
            ("usage", "websites_generated", D("1.50")),
        ]
        assert draft.subtotal == draft.total == D("12.10")
        assert (draft.account, draft.period, draft.currency) == ("acct_1", NOV, "usd")
        assert (draft.plan, draft.pricebook_version) == ("PLUS", "2026-11-launch")
        assert draft.credits_applied == 0

    def test_plan_fee_line(self) -> None:
        """A full month's fee line names the plan and the dates, fraction 1, price 9.90."""
        fee = invoice(DEFAULT_BOOK, [], plan="PLUS").lines[0]
        assert fee.description == "PLUS plan, 2026-11-01 to 2026-12-01"
        assert (fee.quantity, fee.amount, fee.unrounded) == (D(1), D("9.90"), D("9.90"))
        assert fee.price == "9.90 per month"
        assert fee.meter is None

    def test_unpriced_meter_line(self) -> None:
        """tokens have no price: the line shows usage and the allowance, charges 0.00 and
        bills nothing; it still names the ledger entries behind it."""
        draft = invoice(DEFAULT_BOOK, [MeterUsage("tokens", D(1_200_000), 4, 1, 4)], plan="PLUS")
        line = usage_line(draft, "tokens")
        assert line.description == "tokens: 1,200,000 used, 1,000,000 included (no usage charge)"
        assert (line.quantity, line.included, line.billable) == (D(1_200_000), D(1_000_000), D(0))
        assert (line.amount, line.tiers, line.price) == (D("0.00"), (), "no usage charge")
        assert (line.entries, line.first_entry_id, line.last_entry_id) == (4, 1, 4)

    def test_credit_priced_meter_line(self) -> None:
        """api_calls are paid with credits (1 credit a call): a 0.00 line that says so."""
        line = usage_line(invoice(DEFAULT_BOOK, [MeterUsage("api_calls", D(40), 40)]), "api_calls")
        assert line.amount == D("0.00")
        assert line.price == "paid with credits, 1 credits per call"
        assert line.description == "api_calls: 40 used (paid with credits, 1 credits per call)"

    def test_per_unit_line(self) -> None:
        """3 websites at 0.50: quantity, billable, price words and the one tier row."""
        draft = invoice(DEFAULT_BOOK, [MeterUsage("websites_generated", D(3), 3)], plan="PLUS")
        line = usage_line(draft, "websites_generated")
        assert line.description == "websites_generated: 3 used, 3 billable"
        assert line.price == "0.50 per website"
        assert line.tiers == (TierCharge(0, D(0), D(3), D(3), D("0.50"), D(0), D("1.50")),)
        assert (line.amount, line.unrounded) == (D("1.50"), D("1.50"))


class TestGraduated:
    @pytest.mark.parametrize(
        ("used", "billable", "expected", "tiers"),
        [
            # 500 billable, all in the first tier at 0.01
            (1_500, 500, D("5.00"), [(0, 0, 500, D("5.00"))]),
            # 1,500 billable: 1,000 at 0.01 = 10.00, 500 at 0.005 = 2.50
            (2_500, 1_500, D("12.50"), [(0, 0, 1000, D("10.00")), (1, 1000, 1500, D("2.50"))]),
            # within the 1,000 included
            (900, 0, D("0.00"), []),
            (1_000, 0, D("0.00"), []),
        ],
    )
    def test_tiers_after_the_included_quantity(
        self,
        used: int,
        billable: int,
        expected: Decimal,
        tiers: list[tuple[int, int, int, Decimal]],
    ) -> None:
        """BASIC includes 1,000 tokens; the rest is rated by graduated tiers (first 1,000
        at 0.01, then 0.005), with the tier breakdown on the line."""
        draft = invoice(FEATURES_BOOK, [MeterUsage("tokens", D(used), 1)], plan="BASIC")
        line = usage_line(draft, "tokens")
        assert (line.included, line.billable, line.amount) == (D(1000), D(billable), expected)
        assert [(t.tier_index, t.from_quantity, t.to_quantity, t.amount) for t in line.tiers] == [
            (index, D(low), D(high), D(amount)) for index, low, high, amount in tiers
        ]
        assert draft.total == D("5.00") + expected

    def test_words(self) -> None:
        """The graduated line reads like the brief's example."""
        line = usage_line(
            invoice(FEATURES_BOOK, [MeterUsage("tokens", D(2_500), 1)], plan="BASIC"), "tokens"
        )
        assert line.description == "tokens: 2,500 used, 1,000 included, 1,500 billable"
        assert line.price == "graduated per unit: first 1,000 at 0.01, then 0.005"


class TestVolumeAndPackage:
    @pytest.mark.parametrize(
        ("calls", "expected"),
        [
            (D(0), None),  # no usage, no line
            (D(100), D("100.00")),  # 100 at 1.00
            (D(150), D("80.00")),  # 150 at 0.50 + 5
            (D(1000), D("505.00")),  # 1000 at 0.50 + 5
            (D(1001), D("270.25")),  # 1001 at 0.25 + 20: cheaper than 1000
        ],
    )
    def test_volume(self, calls: Decimal, expected: Decimal | None) -> None:
        """Volume pricing: every unit at the tier the total falls in, plus its flat fee."""
        draft = invoice(MODELS_BOOK, [MeterUsage("calls", calls, 0 if calls == 0 else 1)])
        if expected is None:
            assert [line.kind for line in draft.lines] == ["plan_fee"]
            return
        line = usage_line(draft, "calls")
        assert line.amount == expected
        assert draft.total == D("10.00") + expected
        assert line.price.startswith("volume per call")

    @pytest.mark.parametrize(
        ("rows", "billable", "packages", "expected"),
        [
            (D(201), D(100), 1, D("2.00")),  # 1 included + 100 free, 100 left: 1 package
            (D(2_101), D(2_000), 2, D("4.00")),  # exactly 2 packages
            (D(2_102), D(2_001), 3, D("6.00")),  # one row more starts a third
            (D(50), D(0), 0, D("0.00")),
        ],
    )
    def test_package(
        self, rows: Decimal, billable: Decimal, packages: int, expected: Decimal
    ) -> None:
        """Package pricing after the plan's 1 included row and the price's 100 free ones:
        2.00 per started 1,000 rows."""
        line = usage_line(invoice(MODELS_BOOK, [MeterUsage("rows", rows, 1)]), "rows")
        assert (line.included, line.free_quantity) == (D(1), D(100))
        assert (line.billable, line.amount) == (billable, expected)
        assert [t.units for t in line.tiers] == ([D(packages)] if packages else [])
        assert line.price == (
            "package: 2.00 per 1,000 rows, a started package in full, after 100 free per period"
        )


class TestZeroUsageAndCredits:
    def test_zero_usage_still_names_the_plan(self) -> None:
        """No usage: one plan-fee line, even for a free plan (0.00); meters reported with
        nothing in them get no line."""
        draft = invoice(
            DEFAULT_BOOK,
            [MeterUsage("websites_generated", D(0), 0), MeterUsage("tokens", D(0), 0)],
            plan="FREE",
        )
        assert amounts(draft) == [("plan_fee", None, D("0.00"))]
        assert draft.lines[0].description == "FREE plan, 2026-11-01 to 2026-12-01"
        assert draft.total == 0
        assert places(draft.total) == 2

    def test_credits_line_is_informational(self) -> None:
        """Credits used show as a line worth nothing, after the usage, and as
        credits_applied; they don't change the total."""
        draft = invoice(
            DEFAULT_BOOK,
            [MeterUsage("api_calls", D(130), 130)],
            plan="FREE",
            credit_use=CreditUse(D(130)),
        )
        assert amounts(draft) == [
            ("plan_fee", None, D("0.00")),
            ("usage", "api_calls", D("0.00")),
            ("credits", None, D("0.00")),
        ]
        line = draft.lines[-1]
        assert (line.description, line.quantity) == ("130 credits applied", D(130))
        assert draft.credits_applied == D(130)
        assert draft.total == 0

    def test_a_shortfall_is_its_own_figure_and_not_charged_by_default(self) -> None:
        """12 calls at 0.25 credits with no grant: nothing applied, 3 credits short, shown
        on a line of their own at 0.00 (no shortfall price in the book)."""
        draft = invoice(
            DEFAULT_BOOK,
            [MeterUsage("api_calls", D(12), 12)],
            plan="FREE",
            credit_use=CreditUse(D(0), D(3)),
        )
        assert (draft.credits_applied, draft.credits_shortfall) == (D(0), D(3))
        line = draft.lines[-1]
        assert (line.kind, line.amount, line.quantity) == ("credits", D("0.00"), D(3))
        assert line.description == "3 credits not covered by a grant"
        assert "not charged" in line.price
        assert not any(ln.description.endswith("credits applied") for ln in draft.lines)

    def test_a_priced_shortfall_is_charged_once(self) -> None:
        """With credits.shortfall_price = 0.015, 48.086905 credits applied and 12.982905 short
        cost 12.982905 x 0.015 = 0.194743575, rounded once to 0.19."""
        book = dataclasses.replace(DEFAULT_BOOK, credit_shortfall_price=D("0.015"))
        draft = invoice(book, [], plan="FREE", credit_use=CreditUse(D("35.104"), D("12.982905")))
        applied, short = draft.lines[-2:]
        assert (applied.description, applied.amount) == ("35.104 credits applied", D("0.00"))
        assert (short.amount, short.unrounded) == (D("0.19"), D("0.194743575"))
        assert short.price == "0.015 per credit not covered"
        assert draft.total == D("0.19")

    def test_no_credits_no_line(self) -> None:
        """No credits applied or short adds no line."""
        draft = invoice(DEFAULT_BOOK, [], plan="FREE", credit_use=CreditUse(D(0)))
        assert [line.kind for line in draft.lines] == ["plan_fee"]

    def test_fractional_credits(self) -> None:
        """Credits are exact: 2.5 credits read as such."""
        draft = invoice(FEATURES_BOOK, [], credit_use=CreditUse(D("2.5")))
        assert draft.lines[-1].description == "2.5 credits applied"
        assert draft.credits_applied == D("2.5")


class TestPlanChange:
    def test_basic_then_big(self) -> None:
        """BASIC 10 days then BIG 20 days of 30: fees 5 x 1/3 = 1.666.. -> 1.67 and
        50 x 2/3 = 33.333.. -> 33.33 (35.00 together); allowance 1000/3 + 20000/3 = 7000,
        so 8,000 tokens leave 1,000 billable at 0.01 = 10.00."""
        draft = invoice(
            FEATURES_BOOK,
            [MeterUsage("tokens", D(8_000), 9)],
            spans=[PlanSpan("BASIC", NOV.start, day(10)), PlanSpan("BIG", day(10), NOV.end)],
        )
        fees = [line for line in draft.lines if line.kind == "plan_fee"]
        assert [fee.amount for fee in fees] == [D("1.67"), D("33.33")]
        assert [fee.description for fee in fees] == [
            "BASIC plan, 2026-11-01 to 2026-11-11 (10/30 days)",
            "BIG plan, 2026-11-11 to 2026-12-01 (20/30 days)",
        ]
        assert abs(fees[0].unrounded - D(5) / 3) < D("1e-20")
        assert abs(fees[1].unrounded - D(100) / 3) < D("1e-20")
        tokens = usage_line(draft, "tokens")
        assert (tokens.included, tokens.billable, tokens.amount) == (D(7000), D(1000), D("10.00"))
        assert draft.plan == "BIG"
        assert draft.total == D("45.00")

    def test_half_days(self) -> None:
        """BASIC for 7.5 days then BIG for 22.5: fees 5 x 0.25 = 1.25 and 50 x 0.75 = 37.50;
        allowance 250 + 7,500 = 7,750; the switch time shows in the dates."""
        switch = day(7.5)
        draft = invoice(
            FEATURES_BOOK,
            [MeterUsage("tokens", D(8_000), 2)],
            spans=[PlanSpan("BASIC", NOV.start, switch), PlanSpan("BIG", switch, NOV.end)],
        )
        fees = draft.lines[:2]
        assert [(f.amount, f.quantity) for f in fees] == [
            (D("1.25"), D("0.25")),
            (D("37.50"), D("0.75")),
        ]
        assert fees[0].description == "BASIC plan, 2026-11-01 to 2026-11-08 12:00 UTC (7.5/30 days)"
        tokens = usage_line(draft, "tokens")
        assert (tokens.included, tokens.billable, tokens.amount) == (D(7750), D(250), D("2.50"))

    def test_three_spans_and_a_plan_without_terms(self) -> None:
        """FREE 15 days, PLUS 10, PRO 5 of 30: fees 0, 9.90/3 = 3.30 and 19.90/6 = 3.3166..
        -> 3.32; tokens included 100,000/2 + 1,000,000/3 + 5,000,000/6 = 50,000 +
        333,333.33.. + 833,333.33.. = 1,216,666.66.. (not finite: rounded up at 18 places,
        shown to 6)."""
        draft = invoice(
            DEFAULT_BOOK,
            [MeterUsage("tokens", D(2_000_000), 1)],
            spans=[
                PlanSpan("FREE", NOV.start, day(15)),
                PlanSpan("PLUS", day(15), day(25)),
                PlanSpan("PRO", day(25), NOV.end),
            ],
        )
        assert [line.amount for line in draft.lines[:3]] == [D("0.00"), D("3.30"), D("3.32")]
        assert draft.total == D("6.62")
        tokens = usage_line(draft, "tokens")
        assert tokens.included == D("1216666.666666666666666667")
        assert (
            tokens.description
            == "tokens: 2,000,000 used, ~1,216,666.666667 included (no usage charge)"
        )

    def test_non_terminating_allowance_rounds_up(self) -> None:
        """P includes 1 row, NONE none: P for 10 of 30 days includes 1/3 of a row, rounded
        up to 18 places, so the billable part is the exact one rounded down."""
        draft = invoice(
            MODELS_BOOK,
            [MeterUsage("rows", D(500), 1)],
            spans=[PlanSpan("P", NOV.start, day(10)), PlanSpan("NONE", day(10), NOV.end)],
        )
        rows = usage_line(draft, "rows")
        assert rows.included == D("0.333333333333333334")
        # 500 - 1/3 - 100 free = 399.666.. -> one package
        assert rows.billable == D("399.666666666666666666")
        assert rows.amount == D("2.00")

    def test_same_plan_twice(self) -> None:
        """Two spans of the same plan (a re-subscription) charge 1/2 + 1/2 of the fee and
        include exactly the plan's quantity."""
        draft = invoice(
            FEATURES_BOOK,
            [MeterUsage("tokens", D(1_000), 1)],
            spans=[PlanSpan("BASIC", NOV.start, day(15)), PlanSpan("BASIC", day(15), NOV.end)],
        )
        assert [line.amount for line in draft.lines[:2]] == [D("2.50"), D("2.50")]
        assert usage_line(draft, "tokens").included == D(1000)
        assert draft.total == D("5.00")

    def test_prorate(self) -> None:
        """prorate: a half is exactly 0.5, a full span 1, a third to 18 places."""
        assert prorate(PlanSpan("P", NOV.start, day(15)), NOV) == D("0.5")
        assert prorate(PlanSpan("P", NOV.start, NOV.end), NOV) == 1
        assert prorate(PlanSpan("P", NOV.start, day(10)), NOV) == D("0.333333333333333333")
        assert prorate(PlanSpan("P", day(10), NOV.end), NOV) == D("0.666666666666666667")
        with pytest.raises(ValueError, match="not within the period"):
            prorate(PlanSpan("P", OCT.start, NOV.end), NOV)


class TestAnnualPlans:
    @pytest.mark.parametrize(
        ("plan", "period", "expected"),
        [
            ("YEARLY", NOV, D("10.00")),  # 120 / 12
            ("YEARLY", FEB, D("10.00")),  # the same in a short month
            ("YEARLY_ODD", NOV, D("8.33")),  # 100 / 12 = 8.333..
        ],
    )
    def test_a_twelfth_per_month(self, plan: str, period: BillingPeriod, expected: Decimal) -> None:
        """An annual plan charges a twelfth of its yearly price each monthly period."""
        draft = build_invoice(
            MODELS_BOOK, account="a", period=period, spans=whole(plan, period), usage=[]
        )
        fee = draft.lines[0]
        assert fee.amount == expected
        assert fee.description.endswith(", 1/12 of the yearly fee")
        assert fee.price.endswith("per year, billed monthly")

    def test_prorated_twelfth(self) -> None:
        """P (10.00 a month) for half of November, then YEARLY: 5.00 + 120/12/2 = 5.00."""
        draft = invoice(
            MODELS_BOOK,
            [],
            spans=[PlanSpan("P", NOV.start, day(15)), PlanSpan("YEARLY", day(15), NOV.end)],
        )
        assert [line.amount for line in draft.lines] == [D("5.00"), D("5.00")]


class TestPerDimension:
    def test_gpt4_priced_other_models_free(self) -> None:
        """gpt-4 inference tokens at 0.002 each (12,345 -> 24.690 -> 24.69); other models
        free; one line per model, sorted."""
        draft = invoice(
            DEFAULT_BOOK,
            [
                MeterUsage(
                    "inference_tokens",
                    D(12_365),
                    3,
                    1,
                    3,
                    by_dimension=values(**{"llama-3": D(10), "gpt-4": D(12_345), "claude": D(10)}),
                )
            ],
            plan="FREE",
        )
        lines = draft.lines[1:]
        assert [(text_of(line), line.amount) for line in lines] == [
            ("claude", D("0.00")),
            ("gpt-4", D("24.69")),
            ("llama-3", D("0.00")),
        ]
        gpt4 = lines[1]
        assert gpt4.unrounded == D("24.690")
        assert gpt4.description == "inference_tokens (model gpt-4): 12,345 used, 12,345 billable"
        assert (gpt4.price, lines[0].price) == ("0.002 per token", "free")
        assert all(line.meter == "inference_tokens" for line in lines)
        assert draft.total == D("24.69")

    def test_absent_null_and_numbers_are_neither_merged_nor_priced_as_strings(self) -> None:
        """A book pricing the strings "null" and "7": the string "null" and the string "7"
        get those prices; an event without the field, JSON null and the number 7 are each
        their own line at the default model, named by kind."""
        book = parse_pricebook(
            default_pricebook_text().replace(
                '[prices.inference_tokens.by_value."gpt-4"]',
                '[prices.inference_tokens.by_value."null"]\nmodel = "per_unit"\n'
                'unit_price = "100"\n[prices.inference_tokens.by_value."7"]\n'
                'model = "per_unit"\nunit_price = "10"\n[prices.inference_tokens.by_value.x]',
            )
        )
        usage = {
            DimensionValue("null"): D(1),
            DimensionValue("7"): D(1),
            DimensionValue("", DimensionKind.ABSENT): D(1),
            DimensionValue("null", DimensionKind.NULL): D(1),
            DimensionValue("7", DimensionKind.NUMBER): D(1),
        }
        draft = invoice(
            book, [MeterUsage("inference_tokens", D(5), 5, 1, 5, by_dimension=usage)], plan="FREE"
        )
        lines = {ln.description.split(":")[0]: ln.amount for ln in draft.lines[1:]}
        assert lines == {
            "inference_tokens (model (no value))": D("0.00"),
            "inference_tokens (model 7)": D("10.00"),
            "inference_tokens (model 7 (a number))": D("0.00"),
            "inference_tokens (model null)": D("100.00"),
            "inference_tokens (model null (JSON null))": D("0.00"),
        }

    def test_free_quantity_taken_in_sorted_order(self) -> None:
        """15 free images for the meter: a (sorted first) uses 10 of them, b the other 5,
        so b bills 5 at 1.00 = 5.00 and c (free model) bills its 3 at 0."""
        draft = invoice(
            MODELS_BOOK,
            [MeterUsage("gen", D(23), 23, by_dimension=values(b=D(10), c=D(3), a=D(10)))],
        )
        lines = [line for line in draft.lines if line.meter == "gen"]
        assert [(text_of(ln), ln.free_quantity, ln.billable, ln.amount) for ln in lines] == [
            ("a", D(10), D(0), D("0.00")),
            ("b", D(5), D(5), D("5.00")),
            ("c", D(0), D(3), D("0.00")),
        ]
        assert lines[1].price == "1.00 per image, after 15 free per period"
        assert draft.total == D("15.00")

    def test_free_quantity_spread_over_small_values(self) -> None:
        """a has only 4: the remaining 11 free images go to b (12 -> 1 billable)."""
        draft = invoice(
            MODELS_BOOK, [MeterUsage("gen", D(16), 2, by_dimension=values(a=D(4), b=D(12)))]
        )
        lines = [line for line in draft.lines if line.meter == "gen"]
        assert [(ln.free_quantity, ln.billable) for ln in lines] == [(D(4), 0), (D(11), D(1))]
        assert [ln.amount for ln in lines] == [D("0.00"), D("1.00")]

    def test_no_breakdown_uses_the_default_model(self) -> None:
        """Usage without per-value totals is one line at the price's default (free) model."""
        draft = invoice(MODELS_BOOK, [MeterUsage("gen", D(40), 4)])
        line = usage_line(draft, "gen")
        assert (line.dimension_value, line.free_quantity, line.billable) == (None, D(15), D(25))
        assert (line.amount, line.price) == (D("0.00"), "free, after 15 free per period")

    def test_breakdown_must_add_up(self) -> None:
        """A sum meter whose values don't add up to its total is refused."""
        with pytest.raises(ValueError, match="add up to 11, not to the period's 12"):
            invoice(MODELS_BOOK, [MeterUsage("gen", D(12), 2, by_dimension=values(a=D(5), b=D(6)))])


class TestRounding:
    def test_once_per_line(self) -> None:
        """Three lines of exactly 0.005 each round to 0.01 each: the total is 0.03, the
        sum of the rounded lines (rounding the exact 0.015 would give 0.02)."""
        draft = invoice(
            MODELS_BOOK,
            [MeterUsage(m, D(1), 1) for m in ("c", "a", "b")],
            plan="NONE",
        )
        assert amounts(draft) == [
            ("plan_fee", None, D("0.00")),
            ("usage", "a", D("0.01")),
            ("usage", "b", D("0.01")),
            ("usage", "c", D("0.01")),
        ]
        assert [line.unrounded for line in draft.lines[1:]] == [D("0.005")] * 3
        assert draft.total == D("0.03")

    def test_zero_decimal_currency(self) -> None:
        """In JPY, 3 pings at 0.5 = 1.5 round half up to 2 yen; the plan's 10 yen stays 10."""
        draft = invoice(JPY_BOOK, [MeterUsage("pings", D(3), 3)])
        assert draft.currency == "jpy"
        assert [line.amount for line in draft.lines] == [D(10), D(2)]
        assert draft.total == D(12)
        assert all(places(line.amount) == 0 for line in draft.lines)

    def test_three_decimal_currency(self) -> None:
        """In KWD, 3 lines of 0.005 stay 0.005 each (a thousandth is the minor unit)."""
        draft = invoice(KWD_BOOK, [MeterUsage(m, D(1), 1) for m in "abc"], plan="NONE")
        assert [line.amount for line in draft.lines[1:]] == [D("0.005")] * 3
        assert draft.total == D("0.015")


class TestAdjustments:
    def test_increment_over_what_was_invoiced(self) -> None:
        """Late tokens for October: 2,500 now, 1,500 invoiced for 5.00; 2,500 rates at
        12.50 after the 1,000 included, so the adjustment is +7.50."""
        line = adjustment_line(
            FEATURES_BOOK,
            meter="tokens",
            refers_to=OCT,
            included=D(1000),
            invoiced_quantity=D(1500),
            new_quantity=D(2500),
            invoiced_amount=D("5.00"),
            currency="usd",
            entries=3,
            first_entry_id=10,
            last_entry_id=12,
        )
        assert (line.kind, line.amount, line.refers_to) == ("adjustment", D("7.50"), OCT)
        assert (line.quantity, line.included, line.billable) == (D(2500), D(1000), D(1500))
        assert (line.entries, line.first_entry_id, line.last_entry_id) == (3, 10, 12)
        assert [t.amount for t in line.tiers] == [D("10.00"), D("2.500")]
        assert line.description == (
            "late usage of tokens for 2026-10: 2,500 used (1,000 more than the 1,500 invoiced), "
            "1,000 included, 1,500 billable; 12.50 less 5.00 already invoiced"
        )
        draft = invoice(
            FEATURES_BOOK,
            [MeterUsage("tokens", D(1_200), 2)],
            plan="BASIC",
            credit_use=CreditUse(D(10)),
            adjustments=[line],
        )
        assert [ln.kind for ln in draft.lines] == [
            "plan_fee",
            "usage",
            "credits",
            "adjustment",
        ]
        assert draft.lines[-1] is line
        # 5.00 fee + 200 tokens at 0.01 + 7.50
        assert draft.total == D("14.50")

    def test_rounded_once_then_subtracted(self) -> None:
        """1 late ping of 0.005 each: 0.005 x 3 = 0.015 -> 0.02, less the 0.01 invoiced for
        0.005 x 2 (0.01): +0.01 (the exact difference, 0.005, is kept as unrounded)."""
        book = parse_pricebook(
            MODELS_TOML.format(currency="usd").replace('unit_price = "0.5"', 'unit_price = "0.005"')
        )
        line = adjustment_line(
            book,
            meter="pings",
            refers_to=OCT,
            included=D(0),
            invoiced_quantity=D(2),
            new_quantity=D(3),
            invoiced_amount=D("0.01"),
            currency="usd",
            entries=1,
            first_entry_id=5,
            last_entry_id=5,
        )
        assert (line.amount, line.unrounded) == (D("0.01"), D("0.005"))

    def test_negative_for_a_max_meter(self) -> None:
        """A max meter whose late events lower the period's figure (10 -> 7 GB at 1.00)
        gives -3.00; an invoice of only that is negative: the account is owed 3.00."""
        line = adjustment_line(
            MODELS_BOOK,
            meter="peak",
            refers_to=OCT,
            included=D(0),
            invoiced_quantity=D(10),
            new_quantity=D(7),
            invoiced_amount=D("10.00"),
            currency="usd",
            entries=1,
            first_entry_id=None,
            last_entry_id=None,
        )
        assert line.amount == D("-3.00")
        assert "3 less than the 10 invoiced" in line.description
        draft = invoice(MODELS_BOOK, [], plan="NONE", adjustments=[line])
        assert draft.total == D("-3.00")

    def test_per_dimension_needs_the_value(self) -> None:
        """Late gpt-4 tokens: 1,500 now, 1,000 invoiced for 2.00 -> 3.00, +1.00. Without
        the dimension value the meter's total can't be priced: refused."""
        common = {
            "meter": "inference_tokens",
            "refers_to": OCT,
            "included": D(0),
            "invoiced_quantity": D(1000),
            "new_quantity": D(1500),
            "invoiced_amount": D("2.00"),
            "currency": "usd",
            "entries": 1,
            "first_entry_id": 1,
            "last_entry_id": 1,
        }
        gpt4 = DimensionValue("gpt-4")
        line = adjustment_line(DEFAULT_BOOK, dimension_value=gpt4, **common)  # type: ignore[arg-type]
        assert (line.amount, line.dimension_value) == (D("1.00"), gpt4)
        assert line.description.startswith("late usage of inference_tokens (model gpt-4)")
        with pytest.raises(ValueError, match="priced per model"):
            adjustment_line(DEFAULT_BOOK, **common)  # type: ignore[arg-type]

    def test_unpriced_meter(self) -> None:
        """Late usage of a meter without a price costs nothing more."""
        line = adjustment_line(
            DEFAULT_BOOK,
            meter="tokens",
            refers_to=OCT,
            included=D(1_000_000),
            invoiced_quantity=D(10),
            new_quantity=D(2_000_000),
            invoiced_amount=D("0.00"),
            currency="usd",
            entries=1,
            first_entry_id=1,
            last_entry_id=1,
        )
        assert (line.amount, line.billable, line.price) == (D("0.00"), D(0), "no usage charge")

    @pytest.mark.parametrize(
        ("line", "message"),
        [
            (InvoiceLine("usage", "x", D("1.00"), refers_to=OCT), "must be 'adjustment'"),
            (InvoiceLine("adjustment", "x", D("1.00")), "closed before"),
            (InvoiceLine("adjustment", "x", D("1.00"), refers_to=NOV), "closed before"),
            (InvoiceLine("adjustment", "x", D("1.005"), refers_to=OCT), "not rounded"),
        ],
    )
    def test_bad_adjustments_refused(self, line: InvoiceLine, message: str) -> None:
        """Only rounded adjustment lines of an earlier period go on an invoice."""
        with pytest.raises(ValueError, match=message):
            invoice(FEATURES_BOOK, [], adjustments=[line])

    def test_bad_inputs_refused(self) -> None:
        """An unknown meter, a negative quantity or an unrounded invoiced amount."""
        good = {
            "meter": "tokens",
            "refers_to": OCT,
            "included": D(0),
            "invoiced_quantity": D(1),
            "new_quantity": D(2),
            "invoiced_amount": D("0.01"),
            "currency": "usd",
            "entries": 1,
            "first_entry_id": 1,
            "last_entry_id": 1,
        }
        for change, message in (
            ({"meter": "nope"}, "not defined"),
            ({"new_quantity": D(-1)}, "new_quantity"),
            ({"invoiced_amount": D("0.015")}, "not rounded"),
        ):
            with pytest.raises(ValueError, match=message):
                adjustment_line(FEATURES_BOOK, **(good | change))  # type: ignore[arg-type]


class TestValidation:
    @pytest.mark.parametrize(
        ("spans", "message"),
        [
            ([], "no plan spans"),
            ([PlanSpan("BASIC", day(1), NOV.end)], "first plan span starts"),
            ([PlanSpan("BASIC", NOV.start, day(29))], "last plan span ends"),
            (
                [PlanSpan("BASIC", NOV.start, day(3)), PlanSpan("BIG", day(4), NOV.end)],
                "gap between plan spans",
            ),
            (
                [PlanSpan("BASIC", NOV.start, day(5)), PlanSpan("BIG", day(4), NOV.end)],
                "overlap",
            ),
            (
                [
                    PlanSpan("BASIC", NOV.start, day(10)),
                    PlanSpan("BIG", day(20), NOV.end),
                    PlanSpan("BASIC", day(10), day(20)),
                ],
                "gap between plan spans",
            ),
            ([PlanSpan("BASIC", OCT.start, NOV.end)], "first plan span starts"),
        ],
    )
    def test_spans_must_cover_the_period(self, spans: list[PlanSpan], message: str) -> None:
        """Spans must cover the period in order, without gaps or overlaps."""
        with pytest.raises(ValueError, match=message):
            invoice(FEATURES_BOOK, [], spans=spans)

    def test_span_itself(self) -> None:
        """A span ends after it starts and is timezone-aware."""
        with pytest.raises(ValueError, match="must end after it starts"):
            PlanSpan("BASIC", day(3), day(3))
        with pytest.raises(ValueError, match="timezone-aware"):
            PlanSpan("BASIC", datetime(2026, 11, 1), day(3))  # noqa: DTZ001 - the point

    def test_unknown_meter(self) -> None:
        """Usage of a meter the book doesn't define means the wrong book: refused."""
        with pytest.raises(ValueError, match="does not define"):
            invoice(FEATURES_BOOK, [MeterUsage("websites_generated", D(1), 1)])

    def test_meter_twice(self) -> None:
        """Two usages of one meter are refused (which one would count?)."""
        with pytest.raises(ValueError, match="given twice"):
            invoice(FEATURES_BOOK, [MeterUsage("tokens", D(1), 1), MeterUsage("tokens", D(2), 1)])

    def test_negative_quantities(self) -> None:
        """Negative usage or credits are refused."""
        with pytest.raises(ValueError, match="non-negative"):
            invoice(FEATURES_BOOK, [MeterUsage("tokens", D(-1), 1)])
        with pytest.raises(ValueError, match="credits applied"):
            invoice(FEATURES_BOOK, [], credit_use=CreditUse(D(-1)))

    def test_one_currency(self) -> None:
        """A plan priced in another currency than the book's can't be invoiced with it."""
        book = parse_pricebook(
            FEATURES_BOOK.source.replace("[plans.BIG]\n", '[plans.BIG]\ncurrency = "eur"\n')
        )
        with pytest.raises(ValueError, match="one currency"):
            invoice(book, [], plan="BIG")

    def test_unknown_plan_uses_the_default_terms(self) -> None:
        """A plan the book no longer has is billed on the default plan's terms, by its name."""
        draft = invoice(FEATURES_BOOK, [MeterUsage("tokens", D(1_500), 1)], plan="LEGACY")
        assert draft.plan == "LEGACY"
        assert draft.lines[0].description.startswith("LEGACY plan")
        assert [line.amount for line in draft.lines] == [D("5.00"), D("5.00")]


# --- properties ----------------------------------------------------------------------------

BOOKS = [MODELS_BOOK, JPY_BOOK, KWD_BOOK, DEFAULT_BOOK, FEATURES_BOOK]
MINOR_PLACES = {"usd": 2, "jpy": 0, "kwd": 3}

quantities = st.decimals(min_value=0, max_value=10**7, places=4, allow_nan=False)
months = st.builds(
    lambda year, month: calendar_month_of(datetime(year, month, 15, tzinfo=UTC)),
    st.integers(2020, 2040),
    st.integers(1, 12),
)


@st.composite
def spans_of(draw: st.DrawFn, book: PriceBook, period: BillingPeriod) -> list[PlanSpan]:
    """1-4 spans of the book's plans (or an unknown one) covering ``period``, cut at
    random seconds."""
    seconds = int((period.end - period.start).total_seconds())
    cuts = sorted(draw(st.sets(st.integers(1, seconds - 1), max_size=3)))
    bounds = [period.start, *(period.start + timedelta(seconds=c) for c in cuts), period.end]
    plans = st.sampled_from([*sorted(book.plans), "GONE"])
    return [PlanSpan(draw(plans), a, b) for a, b in itertools.pairwise(bounds)]


@st.composite
def usages_of(draw: st.DrawFn, book: PriceBook) -> list[MeterUsage]:
    """Usage of a random subset of the book's meters; per-value totals for meters priced
    per dimension that add up to the total."""
    usage = []
    for meter in draw(st.sets(st.sampled_from(sorted(book.meters)))):
        price = book.prices.get(meter)
        by_dimension: dict[DimensionValue, Decimal] = {}
        if price is not None and price.dimension is not None and draw(st.booleans()):
            kinds = [
                *(DimensionValue(v) for v in sorted(price.by_value)),
                DimensionValue("other"),
                DimensionValue("null"),
                DimensionValue("null", DimensionKind.NULL),
                DimensionValue("", DimensionKind.ABSENT),
                DimensionValue("7", DimensionKind.NUMBER),
            ]
            by_dimension = draw(st.dictionaries(st.sampled_from(kinds), quantities))
            quantity = sum(by_dimension.values(), D(0))
        else:
            quantity = draw(quantities)
        usage.append(
            MeterUsage(meter, quantity, draw(st.integers(0, 50)), None, None, by_dimension)
        )
    return usage


Drawn = tuple[PriceBook, list[PlanSpan], InvoiceDraft]


@st.composite
def invoices(draw: st.DrawFn) -> Drawn:
    """An invoice of random spans, usage and credits under one of the test books."""
    book = draw(st.sampled_from(BOOKS))
    period = draw(months)
    spans = draw(spans_of(book, period))
    draft = build_invoice(
        book,
        account="acct",
        period=period,
        spans=spans,
        usage=draw(usages_of(book)),
        credit_use=CreditUse(draw(quantities), draw(quantities)),
    )
    return book, spans, draft


class TestProperties:
    @given(invoices())
    def test_total_is_the_sum_of_rounded_lines(self, drawn: Drawn) -> None:
        """total == subtotal == the sum of the line amounts, exactly."""
        _book, _spans, draft = drawn
        assert draft.total == draft.subtotal == sum((ln.amount for ln in draft.lines), D(0))

    @given(invoices())
    def test_amounts_in_minor_units(self, drawn: Drawn) -> None:
        """Every amount and the total have the currency's minor-unit places, and each line is
        its unrounded amount rounded once (within half a minor unit of it)."""
        _book, _spans, draft = drawn
        minor = MINOR_PLACES[draft.currency]
        half = D(5).scaleb(-minor - 1)
        for line in draft.lines:
            assert places(line.amount) == minor
            assert abs(line.amount - line.unrounded) <= half
        assert places(draft.total) == minor

    @given(invoices())
    def test_non_negative_without_adjustments(self, drawn: Drawn) -> None:
        """Without adjustments no line and no total is negative."""
        _book, _spans, draft = drawn
        assert all(line.amount >= 0 for line in draft.lines)
        assert draft.total >= 0

    @given(invoices())
    def test_line_order(self, drawn: Drawn) -> None:
        """Plan fees, then usage by meter name (and dimension value), then credits."""
        _book, _spans, draft = drawn
        kinds = [line.kind for line in draft.lines]
        assert kinds == sorted(kinds, key=["plan_fee", "usage", "credits"].index)
        keys = [
            (ln.meter or "", ln.dimension_value or DimensionValue(""))
            for ln in draft.lines
            if ln.kind == "usage"
        ]
        assert keys == sorted(keys)
        assert len(set(keys)) == len(keys)

    @given(invoices())
    def test_fees_are_prorated_prices(self, drawn: Drawn) -> None:
        """One fee line per span, in order, each the exact rational price x span / period
        (a twelfth of it for annual plans) rounded to the nearest minor unit; the fractions
        shown add up to 1 (to their 18 places)."""
        book, spans, draft = drawn
        fees = [line for line in draft.lines if line.kind == "plan_fee"]
        assert len(fees) == len(spans)
        half = Fraction(5, 10 ** (MINOR_PLACES[draft.currency] + 1))
        whole_period = (draft.period.end - draft.period.start).total_seconds()
        for span, fee in zip(spans, fees, strict=True):
            plan = book.plan(span.plan)
            yearly = plan.interval.value == "year"
            share = Fraction(int((span.end - span.start).total_seconds()), int(whole_period))
            exact = Fraction(plan.price) * share / (12 if yearly else 1)
            assert abs(Fraction(fee.amount) - exact) <= half
            assert Fraction(fee.unrounded) == exact or abs(
                Fraction(fee.unrounded) - exact
            ) < Fraction(1, 10**150)
            assert fee.description.startswith(f"{span.plan} plan, ")
        assert abs(sum((fee.quantity for fee in fees), D(0)) - 1) <= D("1e-18") * len(fees)

    @given(
        price=st.decimals(min_value=0, max_value=10**6, places=2, allow_nan=False),
        period=months,
    )
    def test_single_full_span_charges_the_plan_price(
        self, price: Decimal, period: BillingPeriod
    ) -> None:
        """A plan in force all period charges exactly its price, whatever the month."""
        book = parse_pricebook(
            MODELS_TOML.format(currency="usd").replace('price = "10.00"', f'price = "{price}"', 1)
        )
        draft = build_invoice(book, account="a", period=period, spans=whole("P", period), usage=[])
        assert draft.lines[0].amount == price
        assert draft.lines[0].unrounded == price
        assert draft.total == price

    @given(data=st.data(), period=months, used=quantities)
    def test_splitting_one_plan_changes_nothing_but_rounding(
        self, data: st.DataObject, period: BillingPeriod, used: Decimal
    ) -> None:
        """Spans that all name PLUS include exactly PLUS's 1,000,000 tokens, and their fee
        lines add up to 9.90 within half a cent per line."""
        spans = data.draw(spans_of(DEFAULT_BOOK, period))
        spans = [PlanSpan("PLUS", s.start, s.end) for s in spans]
        draft = build_invoice(
            DEFAULT_BOOK,
            account="a",
            period=period,
            spans=spans,
            usage=[MeterUsage("tokens", used, 1)],
        )
        fees = [line.amount for line in draft.lines if line.kind == "plan_fee"]
        assert len(fees) == len(spans)
        assert abs(sum(fees, D(0)) - D("9.90")) <= D("0.005") * len(spans)
        assert usage_line(draft, "tokens").included == D(1_000_000)

    @given(st.data())
    def test_spans_with_a_hole_refused(self, data: st.DataObject) -> None:
        """Removing any inner span of a valid cover leaves a gap: refused."""
        period = data.draw(months)
        spans = data.draw(spans_of(FEATURES_BOOK, period).filter(lambda s: len(s) >= 3))
        index = data.draw(st.integers(1, len(spans) - 2))
        with pytest.raises(ValueError, match="gap"):
            build_invoice(
                FEATURES_BOOK,
                account="a",
                period=period,
                spans=spans[:index] + spans[index + 1 :],
                usage=[],
            )


class TestSubscriptionCycles:
    """Periods of an account on its subscription's cycle (``cycle_period``/``cycle_months``)."""

    CYCLE = BillingPeriod(
        datetime(2026, 11, 15, 10, tzinfo=UTC), datetime(2026, 12, 15, 10, tzinfo=UTC)
    )
    STUB = BillingPeriod(datetime(2026, 12, 1, tzinfo=UTC), CYCLE.end)

    def test_stub_period_pays_its_part_of_the_cycle(self) -> None:
        """The stub Dec 1 → Dec 15 10:00 is 14d10h of a 30-day cycle: P's 10.00 fee gives
        4.81 (10 x 346/720 = 4.8055..), described as 14.42 of 30 days."""
        draft = build_invoice(
            MODELS_BOOK,
            account="a",
            period=self.STUB,
            spans=[PlanSpan("P", self.STUB.start, self.STUB.end)],
            usage=[],
            cycle_period=self.CYCLE,
        )
        fee = draft.lines[0]
        exact = Fraction(10) * Fraction(346, 720)  # not a finite decimal: 200 digits kept
        assert fee.amount == D("4.81")
        assert abs(Fraction(fee.unrounded) - exact) < Fraction(1, 10**150)
        assert "(14.42/30 days)" in fee.description

    def test_whole_cycle_period_is_charged_in_full(self) -> None:
        """A period that is the whole cycle pays the whole fee, whatever its length."""
        draft = build_invoice(
            MODELS_BOOK,
            account="a",
            period=self.CYCLE,
            spans=whole("P", self.CYCLE),
            usage=[],
            cycle_period=self.CYCLE,
        )
        assert draft.lines[0].amount == D("10.00")

    @pytest.mark.parametrize(
        ("plan", "months", "expected", "price"),
        [
            ("P", 3, D("30.00"), "per month, billed every 3 months"),
            ("YEARLY", 12, D("120.00"), "per year"),
            ("YEARLY", 3, D("30.00"), "per year, billed every 3 months"),
        ],
    )
    def test_multi_month_cycles(
        self, plan: str, months: int, expected: Decimal, price: str
    ) -> None:
        """A monthly fee is charged once per month of the cycle; a yearly one its share."""
        period = BillingPeriod(
            datetime(2026, 11, 15, tzinfo=UTC),
            datetime(2026, 11, 15, tzinfo=UTC).replace(year=2027)
            if months == 12
            else datetime(2027, 2, 15, tzinfo=UTC),
        )
        draft = build_invoice(
            MODELS_BOOK,
            account="a",
            period=period,
            spans=whole(plan, period),
            usage=[],
            cycle_period=period,
            cycle_months=months,
        )
        assert draft.lines[0].amount == expected
        assert draft.lines[0].price.endswith(price)

    def test_cycle_must_contain_the_period(self) -> None:
        """A cycle that does not contain the period is a bug in the caller: ValueError."""
        with pytest.raises(ValueError, match="does not contain"):
            build_invoice(
                MODELS_BOOK,
                account="a",
                period=NOV,
                spans=whole("P"),
                usage=[],
                cycle_period=self.CYCLE,
            )


class TestQuantityWords:
    def test_a_tiny_quantity_is_shown_whole_not_as_zero(self) -> None:
        """0.0000001 units of a package price start one package (3.000 kwd): the line
        says 0.0000001 used, never "0 used" next to an amount."""
        book = parse_pricebook(
            default_pricebook_text()
            .replace('currency = "usd"', 'currency = "kwd"')
            .replace(
                'model = "per_unit"\nunit_price = "0.50"',
                'model = "package"\npackage_size = 10\npackage_price = "3"',
            )
        )
        draft = invoice(book, [MeterUsage("websites_generated", D("0.0000001"), 1)], plan="FREE")
        line = usage_line(draft, "websites_generated")
        assert line.amount == D("3.000")
        assert line.description.startswith("websites_generated: 0.0000001 used")

    def test_long_quantities_are_marked_rounded(self) -> None:
        """More than six places: rounded to six, with a ~ (the fields stay exact)."""
        assert quantity_text(D("1216666.666666666666666667")) == "~1,216,666.666667"
        assert quantity_text(D("2.5000")) == "2.5"
        assert quantity_text(D("0.0000004")) == "0.0000004"

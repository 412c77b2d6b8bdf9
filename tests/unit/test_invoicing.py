"""Invoice building: plan fees, included quantities, tiers, per-dimension prices, plan
changes mid-period, credits, adjustments, and the one rounding per line."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from billing_worker.domain.invoicing import (
    MeterUsage,
    PlanSpan,
    adjustment_line,
    build_invoice,
)
from billing_worker.domain.periods import calendar_month_of
from tests.pricebooks import DEFAULT_BOOK, FEATURES_BOOK

NOV = calendar_month_of(datetime(2026, 11, 5, tzinfo=UTC))  # 30 days
OCT = calendar_month_of(datetime(2026, 10, 5, tzinfo=UTC))


def whole(plan: str) -> list[PlanSpan]:
    return [PlanSpan(plan, NOV.start, NOV.end)]


def amounts(draft: object) -> list[tuple[str, str | None, Decimal]]:
    return [(line.kind, line.meter, line.amount) for line in draft.lines]  # type: ignore[attr-defined]


def test_default_book_plus_month() -> None:
    """PLUS with 1.2M tokens (no price: shown at 0), 3 websites and 7 images:
    9.90 + 1.50 + 0.70 = 12.10."""
    draft = build_invoice(
        DEFAULT_BOOK,
        account="a",
        period=NOV,
        spans=whole("PLUS"),
        usage=[
            MeterUsage("tokens", Decimal(1_200_000), 4),
            MeterUsage("websites_generated", Decimal(3), 3),
            MeterUsage("images_generated", Decimal(7), 7),
        ],
    )
    assert amounts(draft) == [
        ("plan_fee", None, Decimal("9.90")),
        ("usage", "images_generated", Decimal("0.70")),
        ("usage", "tokens", Decimal("0.00")),
        ("usage", "websites_generated", Decimal("1.50")),
    ]
    assert draft.total == Decimal("12.10")
    assert (draft.currency, draft.plan) == ("usd", "PLUS")


@pytest.mark.parametrize(
    ("used", "expected", "tiers"),
    [
        (1_500, Decimal("5.00"), [Decimal("5.00")]),  # 500 billable at 0.01
        (2_500, Decimal("12.50"), [Decimal("10.00"), Decimal("2.50")]),  # 1000@0.01 + 500@0.005
        (900, Decimal("0.00"), []),  # within the 1000 included
    ],
)
def test_graduated_tiers_after_the_included_quantity(
    used: int, expected: Decimal, tiers: list[Decimal]
) -> None:
    """BASIC includes 1,000 tokens; the rest is rated by graduated tiers, with the tier
    breakdown on the line."""
    draft = build_invoice(
        FEATURES_BOOK,
        account="a",
        period=NOV,
        spans=whole("BASIC"),
        usage=[MeterUsage("tokens", Decimal(used), 1)],
    )
    line = draft.lines[1]
    assert (line.included, line.amount) == (Decimal(1000), expected)
    assert [t.amount for t in line.tiers] == tiers
    assert draft.total == Decimal("5.00") + expected


def test_zero_usage_still_names_the_plan() -> None:
    """No usage: one plan-fee line, even for a free plan."""
    draft = build_invoice(DEFAULT_BOOK, account="a", period=NOV, spans=whole("FREE"), usage=[])
    assert amounts(draft) == [("plan_fee", None, Decimal("0.00"))]
    assert draft.total == 0


def test_plan_change_mid_period_prorates_fee_and_allowance() -> None:
    """BASIC for 10 of 30 days, then BIG: fees 5/3 -> 1.67 and 100/3 -> 33.33; allowance
    1000/3 + 20000/3 = 7000 tokens, so 10,000 used leaves 3,000 billable."""
    switch = NOV.start + timedelta(days=10)
    draft = build_invoice(
        FEATURES_BOOK,
        account="a",
        period=NOV,
        spans=[PlanSpan("BASIC", NOV.start, switch), PlanSpan("BIG", switch, NOV.end)],
        usage=[MeterUsage("tokens", Decimal(10_000), 9)],
    )
    fees = [line.amount for line in draft.lines if line.kind == "plan_fee"]
    assert fees == [Decimal("1.67"), Decimal("33.33")]
    tokens = draft.lines[2]
    assert (tokens.included, tokens.billable) == (Decimal(7000), Decimal(3000))
    assert tokens.amount == Decimal("20.00")  # 1000 at 0.01 + 2000 at 0.005
    assert draft.plan == "BIG"
    assert draft.total == Decimal("55.00")


def test_per_dimension_prices() -> None:
    """gpt-4 inference tokens at 0.002 each (12,345 -> 24.69); other models free."""
    draft = build_invoice(
        DEFAULT_BOOK,
        account="a",
        period=NOV,
        spans=whole("FREE"),
        usage=[
            MeterUsage(
                "inference_tokens",
                Decimal(12_355),
                2,
                by_dimension={"gpt-4": Decimal(12_345), "llama-3": Decimal(10)},
            )
        ],
    )
    assert [(line.dimension_value, line.amount) for line in draft.lines[1:]] == [
        ("gpt-4", Decimal("24.69")),
        ("llama-3", Decimal("0.00")),
    ]


def test_credits_line_is_informational() -> None:
    """Credits used show as a line worth nothing, and as credits_applied."""
    draft = build_invoice(
        DEFAULT_BOOK,
        account="a",
        period=NOV,
        spans=whole("FREE"),
        usage=[],
        credits_used=Decimal(130),
    )
    assert amounts(draft)[-1] == ("credits", None, Decimal("0.00"))
    assert draft.credits_applied == Decimal(130)


def test_adjustment_is_the_increment_over_what_was_invoiced() -> None:
    """Late tokens for October: 2,500 total now, 1,500 invoiced for 5.00 -> +7.50."""
    line = adjustment_line(
        FEATURES_BOOK,
        meter="tokens",
        refers_to=OCT,
        included=Decimal(1000),
        invoiced_quantity=Decimal(1500),
        new_quantity=Decimal(2500),
        invoiced_amount=Decimal("5.00"),
        currency="usd",
        entries=3,
        first_entry_id=10,
        last_entry_id=12,
    )
    assert (line.kind, line.amount, line.refers_to) == ("adjustment", Decimal("7.50"), OCT)
    draft = build_invoice(
        FEATURES_BOOK,
        account="a",
        period=NOV,
        spans=whole("BASIC"),
        usage=[],
        adjustments=[line],
    )
    assert draft.total == Decimal("12.50")


def test_spans_must_cover_the_period() -> None:
    """Gaps, overlaps and partial coverage are refused."""
    mid = NOV.start + timedelta(days=3)
    for spans in (
        [],
        [PlanSpan("BASIC", NOV.start, mid)],
        [PlanSpan("BASIC", NOV.start, mid), PlanSpan("BIG", mid + timedelta(1), NOV.end)],
    ):
        with pytest.raises(ValueError, match="span"):
            build_invoice(FEATURES_BOOK, account="a", period=NOV, spans=spans, usage=[])


@given(
    websites=st.integers(0, 10**6),
    images=st.integers(0, 10**6),
    switch_day=st.integers(1, 29),
)
def test_total_is_the_sum_of_rounded_lines(websites: int, images: int, switch_day: int) -> None:
    """Whatever the usage and plan change: every amount has at most 2 places, none is
    negative, and the total is exactly the sum of the lines."""
    switch = NOV.start + timedelta(days=switch_day)
    draft = build_invoice(
        DEFAULT_BOOK,
        account="a",
        period=NOV,
        spans=[PlanSpan("PLUS", NOV.start, switch), PlanSpan("PRO", switch, NOV.end)],
        usage=[
            MeterUsage("websites_generated", Decimal(websites), 1),
            MeterUsage("images_generated", Decimal(images), 1),
        ],
    )
    assert all(line.amount >= 0 for line in draft.lines)
    assert all(-line.amount.as_tuple().exponent <= 2 for line in draft.lines)  # type: ignore[operator]
    assert draft.total == sum(line.amount for line in draft.lines)
    assert draft.total == (
        sum(line.amount for line in draft.lines if line.kind == "plan_fee")
        + Decimal("0.50") * websites
        + Decimal("0.10") * images
    )

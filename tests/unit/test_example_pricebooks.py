"""The example price books shipped for the platforms this replaces: each passes
`pricebook check`, and each does what its comment promises, computed by hand."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

import billing_worker
from billing_worker.adapters.pricebook_file import load_pricebook
from billing_worker.domain.credits import GrantBalance, burn_order
from billing_worker.domain.pricebook import (
    DEFAULT_GRANT_PRIORITY,
    CreditSource,
    DimensionValue,
    Enforcement,
    PriceBook,
)
from billing_worker.domain.rating import rate_line
from billing_worker.entrypoints.cli import main

EXAMPLES = Path(billing_worker.__file__).parent / "pricebooks" / "examples"
D = Decimal


def book(name: str) -> PriceBook:
    return load_pricebook(EXAMPLES / f"{name}.toml")


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.toml")), ids=lambda p: p.stem)
def test_every_example_passes_pricebook_check(
    path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`billing-worker pricebook check FILE` exits 0 for each shipped example."""
    assert main(["pricebook", "check", str(path)]) == 0
    assert "plan" in capsys.readouterr().out


def test_there_is_an_example_for_each_platform() -> None:
    """Chat, credits SaaS, API marketplace and generator examples are shipped."""
    names = {p.stem for p in EXAMPLES.glob("*.toml")}
    assert {"chat", "credits_saas", "api_marketplace", "generator"} <= names


def test_chat_quotas_are_100k_1m_5m_tokens_with_80_90_100_alerts() -> None:
    """FREE, PLUS and PRO limit tokens at 100k, 1M and 5M, hard, alerting at 80/90/100."""
    chat = book("chat")
    limits = {}
    for name in ("FREE", "PLUS", "PRO"):
        plan = chat.plans[name]
        terms = plan.limit_of("tokens")
        assert terms is not None
        assert terms.enforcement is Enforcement.HARD
        assert tuple(plan.thresholds) == (D(80), D(90), D(100))
        limits[name] = terms.limit
    assert limits == {"FREE": D(100_000), "PLUS": D(1_000_000), "PRO": D(5_000_000)}


def test_purchased_credits_burn_before_the_plans() -> None:
    """A pack bought after the month's plan grant is still burnt first."""
    saas = book("credits_saas")
    t = datetime(2026, 12, 1, tzinfo=UTC)
    plan_grant = GrantBalance(
        1, "a", CreditSource.PLAN, D(5000), DEFAULT_GRANT_PRIORITY[CreditSource.PLAN], t
    )
    pack = saas.credit_products["pack_1000"]
    bought = GrantBalance(
        2, "a", CreditSource.PURCHASE, pack.credits, pack.priority, t.replace(day=15)
    )
    assert sorted([plan_grant, bought], key=burn_order)[0] is bought


def test_api_calls_are_priced_in_graduated_tiers() -> None:
    """150,000 calls: 1,000 free, then 100,000 at 0.002 (200) and 49,000 at 0.0015 (73.5)."""
    line = rate_line(book("api_marketplace").prices["api_calls"], D(150_000))
    assert (line.billable, line.amount) == (D(149_000), D("273.5"))


def test_premium_calls_are_priced_by_volume() -> None:
    """12,000 premium calls all at the second tier: 12,000 x 0.015 + 25 flat = 205."""
    line = rate_line(book("api_marketplace").prices["premium_calls"], D(12_000))
    assert line.amount == D(205)


def test_generator_items_have_their_own_prices() -> None:
    """A website is 0.50; an image 0.04, or 0.12 with the hd-v2 model; STUDIO includes 50."""
    generator = book("generator")
    assert rate_line(generator.prices["websites_generated"], D(2)).amount == D("1.00")
    images = generator.prices["images_generated"]
    assert rate_line(images, D(10)).amount == D("0.40")
    assert rate_line(images, D(10), dimension_value=DimensionValue("hd-v2")).amount == D("1.20")
    studio = generator.plans["STUDIO"].limit_of("websites_generated")
    assert studio is not None
    assert studio.included == D(50)

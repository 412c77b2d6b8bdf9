"""``billing-worker account show`` on an account that Stripe events touched: every ledger
entry says what it holds, and the payment ledger is listed (text and --json)."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from billing_worker.adapters.postgres.account_view import describe_entry
from billing_worker.adapters.postgres.database import create_engine_for
from billing_worker.adapters.postgres.unit_of_work import PostgresUnitOfWork
from billing_worker.domain.stripe import parse_stripe_event
from billing_worker.entrypoints import cli
from billing_worker.service.stripe_events import StripeOutcome, apply_stripe_event
from tests import stripe_fixtures as sf
from tests.pricebooks import DEFAULT_BOOK

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
T0 = int(datetime(2026, 11, 20, tzinfo=UTC).timestamp())


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, database_url: str, restore_logging: None) -> None:
    """Point the CLI at this test's database with the built-in price book."""
    monkeypatch.setenv("BILLING_DATABASE_URL", database_url)
    monkeypatch.delenv("BILLING_PRICEBOOK", raising=False)


async def apply(engine: AsyncEngine, payload: dict[str, Any]) -> None:
    outcome = await apply_stripe_event(
        lambda: PostgresUnitOfWork(engine), DEFAULT_BOOK, parse_stripe_event(payload), now=NOW
    )
    assert outcome == StripeOutcome.APPLIED


def pack_bought_and_refunded(database_url: str) -> str:
    """acct_v's customer linked, a credit pack bought through Checkout, 4.00 refunded;
    returns the customer id."""
    return asyncio.run(_pack_bought_and_refunded(database_url))


async def _pack_bought_and_refunded(database_url: str) -> str:
    engine = create_engine_for(database_url, pool_size=1)
    try:
        return await _events(engine)
    finally:
        await engine.dispose()


async def _events(engine: AsyncEngine) -> str:
    customer = sf.fixture("new", "customer", metadata={"account_id": "acct_v"})
    await apply(engine, sf.fixture_event("new", "customer.created", customer, created=T0))
    session = sf.fixture(
        "new",
        "checkout.session",
        mode="payment",
        status="complete",
        payment_status="paid",
        customer=customer["id"],
        client_reference_id="acct_v",
        metadata={"price_id": "price_credits_1000", "quantity": "1"},
        amount_total=1000,
        currency="usd",
    )
    await apply(engine, sf.fixture_event("new", "checkout.session.completed", session,
                                         created=T0 + 1))  # fmt: skip
    charge = sf.fixture("new", "charge", payment_intent=session["payment_intent"], amount=1000,
                        amount_refunded=400, customer=None, metadata={})  # fmt: skip
    await apply(engine, sf.fixture_event("new", "charge.refunded", charge, created=T0 + 2))
    return str(customer["id"])


class TestAccountShowAfterStripe:
    @pytest.mark.usefixtures("env")
    def test_entries_show_what_they_hold_and_payments_are_listed(
        self, database_url: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """The customer link shows its customer and event (not "(new) -> ?"), the claw-back
        its credits, and the payments table the payment and the refund."""
        customer = pack_bought_and_refunded(database_url)
        assert cli.main(["account", "show", "acct_v", "--json"]) == 0
        shown = json.loads(capsys.readouterr().out)
        linked = next(e for e in shown["recent_entries"]
                      if e["what"].startswith("stripe_customer_linked"))  # fmt: skip
        assert linked["what"] == f"stripe_customer_linked customer={customer}"
        assert linked["ref"].startswith("evt_")
        assert linked["details"]["customer"] == customer
        assert not any("-> ?" in e["what"] for e in shown["recent_entries"])
        clawed = next(e for e in shown["recent_entries"]
                      if e["what"].startswith("credits_clawed_back"))  # fmt: skip
        assert "credits_clawed_back=400" in clawed["what"]
        assert [(p["kind"], p["amount"], p["currency"]) for p in shown["payments"]] == [
            ("refund", "-4.00", "usd"),
            ("payment", "10.00", "usd"),
        ]
        assert shown["payments"][1]["details"]["for"] == "credit pack"

        assert cli.main(["account", "show", "acct_v"]) == 0
        table = capsys.readouterr().out
        assert "payments and refunds (Stripe):" in table
        assert "-4.00" in table
        assert "for=credit pack" in table
        assert f"stripe_customer_linked customer={customer}" in table

    @pytest.mark.usefixtures("env")
    def test_an_account_without_payments_says_none(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """An account Stripe never paid for lists no payments, in both outputs."""
        assert cli.main(["account", "set-plan", "acct_q", "PLUS"]) == 0
        capsys.readouterr()
        assert cli.main(["account", "show", "acct_q", "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["payments"] == []
        assert cli.main(["account", "show", "acct_q"]) == 0
        table = capsys.readouterr().out
        payments = table.split("payments and refunds (Stripe):", 1)[1]
        assert "(none)" in payments


class TestDescribeEntry:
    def test_a_plan_change_reads_as_the_move_and_its_terms(self) -> None:
        """plan_changed shows previous -> new plan first, the rest as key=value, and its
        change id as ref."""
        what, ref = describe_entry(
            "plan_changed",
            {"plan": "PLUS", "status": "active", "previous_plan": None,
             "previous_status": None, "cause": "operator", "change_id": "operator:1"},
        )  # fmt: skip
        assert (what, ref) == ("plan_changed (new) -> PLUS status=active cause=operator",
                               "operator:1")  # fmt: skip

    def test_any_other_kind_shows_every_detail_it_holds(self) -> None:
        """An entry of a kind the renderer knows nothing about shows all its non-empty
        details (nested ones as JSON) and its event id as ref."""
        what, ref = describe_entry(
            "something_new",
            {"invoice_id": "inv_1", "empty": "", "lines": [1, 2], "event_id": "evt_9"},
        )
        assert (what, ref) == ("something_new invoice_id=inv_1 lines=[1,2]", "evt_9")

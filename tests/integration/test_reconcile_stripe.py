"""`billing-worker reconcile stripe` against invoices the real sync pushed to the fake Stripe,
then changed there (paid, voided, refunded, edited) or here: each difference is found, kept
for the worker's gauges, and Stripe is only ever read."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from billing_worker.adapters.observability.metrics import Metrics
from billing_worker.adapters.postgres.database import create_engine_for
from billing_worker.adapters.postgres.unit_of_work import PostgresUnitOfWork
from billing_worker.adapters.stripe_api import StripeInvoiceSync
from billing_worker.config import Settings
from billing_worker.domain.usage import UsageRecord
from billing_worker.entrypoints.cli import build_parser
from billing_worker.entrypoints.housekeeping import Housekeeping
from billing_worker.entrypoints.reconcile_commands import run_reconcile_command
from billing_worker.service.invoice_sync import sync_invoices
from billing_worker.service.invoices import close_due_periods
from billing_worker.service.reconcile_kinds import KINDS
from billing_worker.service.record_usage import record_usage_batch
from tests.clock import child_env, now, unix_now
from tests.fake_stripe import FakeStripe
from tests.pricebooks import DEFAULT_BOOK

CUSTOMER = "cus_rec1"
ACCOUNT = "acct_s"
OURS = "inv-202610-acct_s"
OCT = datetime(2026, 10, 10, tzinfo=UTC)


@pytest.fixture
def fake() -> Iterator[FakeStripe]:
    with FakeStripe(customers={CUSTOMER}) as server:
        yield server


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    eng = create_engine_for(database_url, pool_size=2)
    yield eng
    await eng.dispose()


async def closed_invoice(engine: AsyncEngine, sql: psycopg.Connection, customer: str) -> None:
    """acct_s with 3 websites (1.50) in October, linked to ``customer``, then closed."""
    records = [
        UsageRecord("web", f"w{i}", "generator.website_generated", ACCOUNT, OCT, Decimal(1))
        for i in range(3)
    ]
    uow = lambda: PostgresUnitOfWork(engine)  # noqa: E731
    await record_usage_batch(uow, DEFAULT_BOOK, records, clock=lambda: OCT)
    sql.execute(
        "INSERT INTO stripe_customers (customer_id, account_id) VALUES (%s, %s)",
        (customer, ACCOUNT),
    )
    await close_due_periods(
        uow, DEFAULT_BOOK, as_of=datetime(2026, 11, 2, tzinfo=UTC), grace=timedelta(hours=1)
    )


async def pushed(engine: AsyncEngine, sql: psycopg.Connection, fake: FakeStripe) -> str:
    """The October invoice closed and pushed by the real sync; its Stripe invoice id."""
    await closed_invoice(engine, sql, CUSTOMER)
    pusher = StripeInvoiceSync(fake.api_key, api_base=fake.base_url, timeout=5)
    done = await sync_invoices(lambda: PostgresUnitOfWork(engine), pusher)
    assert done.pushed == 1
    (stripe_invoice,) = fake.invoices
    return str(stripe_invoice["id"])


def settings_for(database_url: str, fake: FakeStripe) -> Settings:
    return Settings(
        database_url=database_url,  # type: ignore[arg-type]
        stripe_api_key=fake.api_key,  # type: ignore[arg-type]
        stripe_api_base=fake.base_url,
    )


async def reconciled(
    database_url: str, fake: FakeStripe, capsys: pytest.CaptureFixture[str], *argv: str
) -> tuple[int, dict[str, Any]]:
    """Run ``reconcile stripe --json ARGV`` in this process: exit status and report."""
    capsys.readouterr()
    args = build_parser().parse_args(["reconcile", "stripe", "--json", *argv])
    code = await run_reconcile_command(args, settings_for(database_url, fake))
    return code, json.loads(capsys.readouterr().out)


def kinds(report: dict[str, Any]) -> list[str]:
    return sorted(d["kind"] for d in report["differences"])


def pay_here(sql: psycopg.Connection, stripe_id: str, amount: str) -> None:
    """What an applied invoice.paid event leaves: a payment entry, ours paid."""
    sql.execute(
        "INSERT INTO payment_ledger (account_id, kind, amount, currency, stripe_object_id, "
        "stripe_event_id, details, effective_at) VALUES (%s, 'payment', %s, 'usd', %s, "
        "'evt_paid', %s, %s)",
        (ACCOUNT, amount, stripe_id, json.dumps({"for": "invoice", "invoice_id": OURS}), now()),
    )
    sql.execute("UPDATE invoices SET status = 'paid' WHERE invoice_id = %s", (OURS,))


def refund_here(sql: psycopg.Connection, charge: str, intent: str, amount: str) -> None:
    """What an applied charge.refunded event leaves: a reversing payment entry."""
    sql.execute(
        "INSERT INTO payment_ledger (account_id, kind, amount, currency, stripe_object_id, "
        "stripe_event_id, details, effective_at) VALUES (%s, 'refund', %s, 'usd', %s, "
        "'evt_refund', %s, %s)",
        (ACCOUNT, f"-{amount}", charge, json.dumps({"payment_intent": intent}), now()),
    )


class TestInvoiceTarget:
    """Invoices the sync pushed as Stripe invoices of their own."""

    async def test_a_fresh_push_is_clean_and_only_read(
        self,
        engine: AsyncEngine,
        sql: psycopg.Connection,
        fake: FakeStripe,
        database_url: str,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """Right after the push: exit 0, no difference, the run is recorded, and every
        request reconciling made is a GET."""
        await pushed(engine, sql, fake)
        before = len(fake.requests)
        code, report = await reconciled(database_url, fake, capsys)
        assert (code, report["clean"], report["invoices_checked"]) == (0, True, 1)
        assert {r.method for r in fake.requests[before:]} == {"GET"}
        runs = sql.execute("SELECT scope, invoices_checked, differences FROM stripe_reconcile_runs")
        assert runs.fetchall() == [("all", 1, 0)]

    async def test_paid_in_stripe_open_here_then_recorded(
        self,
        engine: AsyncEngine,
        sql: psycopg.Connection,
        fake: FakeStripe,
        database_url: str,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """Paid in Stripe with the webhook lost: exit 1, paid_there_open_here; once the
        payment is recorded here the next run is clean and clears the stored finding."""
        stripe_id = await pushed(engine, sql, fake)
        fake.pay_invoice(stripe_id)
        code, report = await reconciled(database_url, fake, capsys)
        assert (code, kinds(report)) == (1, ["paid_there_open_here"])
        (found,) = report["differences"]
        assert (found["invoice_id"], found["stripe_object_id"]) == (OURS, stripe_id)
        assert found["repair"]
        stored = sql.execute("SELECT kind, invoice_id, period FROM stripe_reconcile_differences")
        assert stored.fetchall() == [("paid_there_open_here", OURS, "2026-10")]
        pay_here(sql, stripe_id, "1.50")
        assert (await reconciled(database_url, fake, capsys))[0] == 0
        assert sql.execute("SELECT count(*) FROM stripe_reconcile_differences").fetchone() == (0,)

    async def test_an_edited_item_and_a_stray_one(
        self,
        engine: AsyncEngine,
        sql: psycopg.Connection,
        fake: FakeStripe,
        database_url: str,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """An item's amount changed in Stripe and a second item carrying our id added:
        amount_differs and extra_in_stripe."""
        stripe_id = await pushed(engine, sql, fake)
        (ours,) = fake.invoice_items
        fake.set_item_amount(ours["id"], 120)
        fake.seed_item(stripe_id, 150, metadata={"billing_invoice_id": OURS, "line_no": "99"})
        code, report = await reconciled(database_url, fake, capsys)
        assert (code, kinds(report)) == (1, ["amount_differs", "extra_in_stripe"])
        amount = next(d for d in report["differences"] if d["kind"] == "amount_differs")
        assert (amount["ours"], amount["stripe"]) == ("1.50 usd", "1.20 usd")

    async def test_voided_in_stripe(
        self,
        engine: AsyncEngine,
        sql: psycopg.Connection,
        fake: FakeStripe,
        database_url: str,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """Voided in Stripe while open here: status_differs, naming both statuses."""
        fake.void_invoice(await pushed(engine, sql, fake))
        code, report = await reconciled(database_url, fake, capsys)
        assert (code, kinds(report)) == (1, ["status_differs"])
        assert (report["differences"][0]["ours"], report["differences"][0]["stripe"]) == (
            "open",
            "void",
        )

    async def test_refunds_on_one_side_only(
        self,
        engine: AsyncEngine,
        sql: psycopg.Connection,
        fake: FakeStripe,
        database_url: str,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """A refund in Stripe the ledger lacks is refunded_there_only; recorded, it is
        clean; a ledger refund Stripe doesn't show is refunded_here_only."""
        stripe_id = await pushed(engine, sql, fake)
        intent, charge = fake.pay_invoice(stripe_id)
        pay_here(sql, stripe_id, "1.50")
        fake.refund_invoice(stripe_id, 50)
        code, report = await reconciled(database_url, fake, capsys)
        assert (code, kinds(report)) == (1, ["refunded_there_only"])
        refund_here(sql, charge, intent, "0.50")
        assert (await reconciled(database_url, fake, capsys))[0] == 0
        refund_here(sql, charge, intent, "0.25")
        code, report = await reconciled(database_url, fake, capsys)
        assert (code, kinds(report)) == (1, ["refunded_here_only"])

    async def test_a_recorded_id_stripe_does_not_have(
        self,
        engine: AsyncEngine,
        sql: psycopg.Connection,
        fake: FakeStripe,
        database_url: str,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """Our row names a Stripe invoice Stripe lacks: missing_in_stripe, and the one that
        really carries our id is extra."""
        await pushed(engine, sql, fake)
        sql.execute("UPDATE invoices SET stripe_invoice_id = 'in_gone'")
        code, report = await reconciled(database_url, fake, capsys)
        assert (code, kinds(report)) == (1, ["extra_in_stripe", "missing_in_stripe"])

    async def test_a_push_that_failed_for_good(
        self,
        engine: AsyncEngine,
        sql: psycopg.Connection,
        fake: FakeStripe,
        database_url: str,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """A customer Stripe doesn't know: the sync records a permanent error, reconcile
        says not_pushed with that error."""
        await closed_invoice(engine, sql, "cus_unknown")
        pusher = StripeInvoiceSync(fake.api_key, api_base=fake.base_url, timeout=5)
        assert (await sync_invoices(lambda: PostgresUnitOfWork(engine), pusher)).failed == 1
        code, report = await reconciled(database_url, fake, capsys)
        assert (code, kinds(report)) == (1, ["not_pushed"])
        assert "cus_unknown" in report["differences"][0]["cause"]


class TestSubscriptionTarget:
    """Lines pushed as pending items on the customer's subscription."""

    async def pushed_onto(
        self, engine: AsyncEngine, sql: psycopg.Connection, fake: FakeStripe
    ) -> None:
        """The October invoice as the subscription push leaves it: its worker lines pending
        on sub_rec, the invoice marked pushed there."""
        await closed_invoice(engine, sql, CUSTOMER)
        lines = sql.execute(
            "SELECT line_no, amount FROM invoice_lines WHERE invoice_id = %s AND amount <> 0",
            (OURS,),
        ).fetchall()
        for line_no, amount in lines:
            fake.seed_pending_item(
                CUSTOMER,
                int(amount * 100),
                subscription="sub_rec",
                metadata={"billing_invoice_id": OURS, "line_no": str(line_no)},
            )
        sql.execute(
            "UPDATE invoices SET stripe_sync_target = 'subscription', stripe_synced_at = %s, "
            "stripe_subscription_id = 'sub_rec'",
            (now(),),
        )

    async def test_items_left_pending_after_the_period(
        self,
        engine: AsyncEngine,
        sql: psycopg.Connection,
        fake: FakeStripe,
        database_url: str,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """Pending two days after the subscription's period ended: still_pending; once
        the renewal invoice takes them, clean."""
        fake.add_subscription("sub_rec", CUSTOMER, current_period_end=unix_now() - 2 * 86_400)
        await self.pushed_onto(engine, sql, fake)
        code, report = await reconciled(database_url, fake, capsys)
        assert (code, kinds(report)) == (1, ["still_pending"])
        fake.invoice_subscription("sub_rec", fee=900)
        code, report = await reconciled(database_url, fake, capsys)
        assert (code, report["differences"]) == (0, [])

    async def test_canceled_before_invoicing(
        self,
        engine: AsyncEngine,
        sql: psycopg.Connection,
        fake: FakeStripe,
        database_url: str,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """The subscription canceled with our items pending: still_pending, naming it."""
        fake.add_subscription("sub_rec", CUSTOMER, current_period_end=unix_now() + 86_400)
        await self.pushed_onto(engine, sql, fake)
        assert (await reconciled(database_url, fake, capsys))[0] == 0
        fake.cancel_subscription("sub_rec")
        code, report = await reconciled(database_url, fake, capsys)
        assert (code, kinds(report)) == (1, ["still_pending"])
        assert "canceled" in report["differences"][0]["cause"]


class TestFindings:
    """What a run leaves for the worker's gauges."""

    async def test_a_month_replaces_only_its_own_findings(
        self,
        engine: AsyncEngine,
        sql: psycopg.Connection,
        fake: FakeStripe,
        database_url: str,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """A run over another month leaves October's finding; a run over October, after
        the repair, removes it."""
        fake.void_invoice(await pushed(engine, sql, fake))
        assert (await reconciled(database_url, fake, capsys))[0] == 1
        code, report = await reconciled(database_url, fake, capsys, "--period", "2026-09")
        assert (code, report["invoices_checked"]) == (0, 0)
        assert sql.execute("SELECT count(*) FROM stripe_reconcile_differences").fetchone() == (1,)
        sql.execute("UPDATE invoices SET status = 'void'")
        assert (await reconciled(database_url, fake, capsys, "--period", "2026-10"))[0] == 0
        assert sql.execute("SELECT count(*) FROM stripe_reconcile_differences").fetchone() == (0,)

    async def test_the_gauges_read_the_last_run(
        self,
        engine: AsyncEngine,
        sql: psycopg.Connection,
        fake: FakeStripe,
        database_url: str,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """The worker's gauges show each kind's open differences (0 for the others) and
        when the run finished; before any run, 0 everywhere."""
        metrics = Metrics()
        jobs = Housekeeping(
            settings_for(database_url, fake),
            DEFAULT_BOOK,
            engine,
            on_outbox_written=lambda: None,
            metrics=metrics,
        )
        sample = metrics.registry.get_sample_value
        await jobs.refresh_reconcile_gauges()
        assert sample("billing_stripe_reconcile_last_run_timestamp_seconds") == 0
        assert sample("billing_stripe_reconcile_differences", {"kind": "status_differs"}) == 0
        fake.void_invoice(await pushed(engine, sql, fake))
        await reconciled(database_url, fake, capsys)
        await jobs.refresh_reconcile_gauges()
        for kind in KINDS:
            expected = 1 if kind == "status_differs" else 0
            assert sample("billing_stripe_reconcile_differences", {"kind": kind}) == expected
        ran = sample("billing_stripe_reconcile_last_run_timestamp_seconds") or 0
        assert abs(ran - now().timestamp()) < 60


class TestCommandLine:
    """The command as an operator's script runs it."""

    def run(self, database_url: str, *argv: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "billing_worker", "reconcile", "stripe", *argv],
            env=child_env(BILLING_DATABASE_URL=database_url, **env),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    async def test_json_alone_on_stdout_and_exit_1_on_a_difference(
        self, engine: AsyncEngine, sql: psycopg.Connection, fake: FakeStripe, database_url: str
    ) -> None:
        """With logging on, stdout is exactly the JSON report; a difference exits 1 and the
        text report names its kind, cause and repair."""
        fake.void_invoice(await pushed(engine, sql, fake))
        env = {"BILLING_STRIPE_API_KEY": fake.api_key, "BILLING_STRIPE_API_BASE": fake.base_url}
        done = self.run(database_url, "--json", **env)
        assert done.returncode == 1, done.stderr
        assert kinds(json.loads(done.stdout)) == ["status_differs"]
        text = self.run(database_url, **env)
        assert text.returncode == 1
        assert "status_differs" in text.stdout
        assert "repairs:" in text.stdout

    def test_without_a_stripe_key_it_refuses(self, database_url: str) -> None:
        """No BILLING_STRIPE_API_KEY: exit 2 naming it, nothing on stdout."""
        done = self.run(database_url, "--json")
        assert done.returncode == 2
        assert done.stdout == ""
        assert "BILLING_STRIPE_API_KEY" in done.stderr

    async def test_stripe_unreachable_is_exit_2(
        self,
        engine: AsyncEngine,
        sql: psycopg.Connection,
        fake: FakeStripe,
        database_url: str,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """A connection Stripe drops: exit 2 saying Stripe could not be read, and the
        findings of an earlier run stay as they were."""
        await pushed(engine, sql, fake)
        fake.fail("GET /v1/invoices", status=None)
        args = build_parser().parse_args(["reconcile", "stripe"])
        assert await run_reconcile_command(args, settings_for(database_url, fake)) == 2
        assert "cannot read Stripe" in capsys.readouterr().err
        assert sql.execute("SELECT count(*) FROM stripe_reconcile_runs").fetchone() == (0,)

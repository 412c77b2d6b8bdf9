"""``billing-worker demo``: a newcomer's first five minutes, from usage events to an invoice.

Against the configured broker and database (``BILLING_*``) and in the configured namespace:
a worker starts in this process, a new account is created, a day of image-generator and
chat usage is published as producers publish it, the billing events it causes are shown as
they arrive on ``billing.events``, the period is closed and its invoice printed; then the
worker drains and stops.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import uuid
from collections.abc import Callable
from datetime import date, timedelta
from typing import Any, TextIO

import aio_pika
from aio_pika.abc import AbstractRobustConnection
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from tqdm import tqdm

from billing_worker.adapters.observability.logging import configure_logging
from billing_worker.adapters.postgres.account_store import PostgresAccounts
from billing_worker.adapters.postgres.database import create_engine_for, redacted
from billing_worker.adapters.postgres.unit_of_work import PostgresUnitOfWork
from billing_worker.adapters.pricebook_file import PriceBookError, load_pricebook
from billing_worker.bootstrap import topology_for
from billing_worker.config import Settings
from billing_worker.domain.periods import BillingPeriod
from billing_worker.domain.pricebook import PriceBook
from billing_worker.entrypoints.demo_bus import BillingEventFeed, describe_event, publish_usage
from billing_worker.entrypoints.demo_day import (
    CHAT_TYPE,
    DemoDay,
    DemoPlan,
    demo_day,
    demo_period,
    demo_plan,
)
from billing_worker.entrypoints.invoicing_commands import show_invoice
from billing_worker.entrypoints.progress import progress
from billing_worker.entrypoints.worker import StartupError, Worker
from billing_worker.service.accounts import change_plan
from billing_worker.service.invoices import close_due_periods, invoice_id_for, move_invoice

RECORD_TIMEOUT_SECONDS = 120.0
EVENT_WAIT_SECONDS = 15.0
POLL_SECONDS = 0.2

COUNT_SETTLED = text(
    "SELECT count(*) FROM idempotency_keys WHERE (source, event_id) IN "
    "(SELECT * FROM unnest(CAST(:sources AS text[]), CAST(:ids AS text[])))"
)


class DemoError(Exception):
    """The demo can't go on; the message says why."""


def add_demo_command(commands: Any) -> None:
    """Register ``demo``."""
    demo = commands.add_parser(
        "demo",
        help="a day of usage for a new account, from events to an invoice, on the configured "
        "broker, database and namespace (runs a worker in this process)",
    )
    demo.add_argument("--account", help="id of the new account (default: demo-<random>)")
    demo.add_argument(
        "--day",
        type=date.fromisoformat,
        help="YYYY-MM-DD, in the latest period that can be closed now (default: its 15th)",
    )
    demo.add_argument("--seed", type=int, default=2026, help="seed of the day's usage")


async def run_demo(args: argparse.Namespace, settings: Settings) -> int:
    """Run the demo: 0 once the invoice is printed and the worker stopped."""
    if "BILLING_LOG_LEVEL" not in os.environ:
        configure_logging("error", sys.stderr)  # the demo narrates; JSON logs would drown it
    try:
        book = load_pricebook(settings.pricebook)
    except PriceBookError as exc:
        sys.stderr.write(f"billing-worker: invalid price book (BILLING_PRICEBOOK): {exc}\n")
        return 2
    period = demo_period(settings.clock(), timedelta(seconds=settings.close_grace_seconds))
    day = args.day or (period.start + timedelta(days=14)).date()
    if not period.start.date() <= day < period.end.date():
        sys.stderr.write(
            f"billing-worker: --day {day} is not in {period.start:%Y-%m-%d} .. "
            f"{period.end:%Y-%m-%d}, the latest period that can be closed now\n"
        )
        return 2
    plan = demo_plan(book)
    account = args.account or f"demo-{uuid.uuid4().hex[:8]}"
    # The demo closes its period itself: the worker's scheduler waits a day meanwhile.
    worker_settings = settings.model_copy(
        update={"http_host": "127.0.0.1", "http_port": 0, "close_interval_seconds": 86_400.0}
    )
    demo = Demo(
        settings=worker_settings,
        book=book,
        plan=plan,
        usage=demo_day(account, day, chat_tokens=plan.chat_tokens, seed=args.seed),
        period=period,
        out=sys.stdout,
    )
    try:
        await demo.run()
    except (DemoError, StartupError) as exc:
        sys.stderr.write(f"billing-worker demo: {exc}\n")
        return 1
    finally:
        await demo.stop()
    return 0


class Demo:
    """The demo's steps, and what they hold open: the worker, a connection, an engine."""

    def __init__(
        self,
        *,
        settings: Settings,
        book: PriceBook,
        plan: DemoPlan,
        usage: DemoDay,
        period: BillingPeriod,
        out: TextIO,
    ) -> None:
        self.settings, self.book, self.plan, self.usage = settings, book, plan, usage
        self.period, self.out = period, out
        self.account = usage.account
        self.topology = topology_for(settings)
        self.worker = Worker(settings, book)
        self.feed = BillingEventFeed(self.account, lambda e: self.say(f"   <- {describe_event(e)}"))
        self.engine: AsyncEngine | None = None
        self.connection: AbstractRobustConnection | None = None

    def say(self, *lines: str) -> None:
        """Narration, printed above any progress bar."""
        for line in lines:
            tqdm.write(line, file=self.out)

    async def run(self) -> None:
        """Every step, in order."""
        s = self.settings
        self.say(
            "billing-worker demo: a day of usage, from events to an invoice",
            f"  broker    {redacted(s.amqp_url.get_secret_value())}",
            f"  database  {redacted(s.database_url.get_secret_value())}",
            f"  namespace {s.namespace or '(none)'}",
        )
        await self.start_worker()
        await self.listen()
        await self.create_account()
        await self.publish_day()
        await self.print_invoice(await self.close_period())

    async def start_worker(self) -> None:
        """1: a worker in this process, started as ``billing-worker run`` starts one."""
        t = self.topology
        self.say(
            "",
            "1. Start a worker",
            "   It runs in this process as `billing-worker run` would: creates and migrates the",
            f"   database, declares {t.usage_exchange} and its queue {t.usage_queue},",
            "   and consumes usage events from it.",
        )
        await self.worker.start()
        self.engine = create_engine_for(self.settings.database_url.get_secret_value(), pool_size=2)
        checks = [
            f"{name} {'up' if ok else 'DOWN'}" for name, ok in self.worker.readiness.checks.items()
        ]
        self.say(f"   ready: {', '.join(checks)}")

    async def listen(self) -> None:
        """2: a temporary queue on the billing-events exchange."""
        exchange = self.topology.events_exchange
        self.say(
            "",
            "2. Listen to billing events",
            f"   A temporary queue bound to the topic exchange {exchange} (routing key: the",
            "   event type) shows what the worker announces about the account (<-).",
        )
        self.connection = await aio_pika.connect_robust(self.settings.amqp_url.get_secret_value())
        await self.feed.subscribe(self.connection, exchange)

    async def create_account(self) -> None:
        """3: a new account, on the plan with the smallest chat limit."""
        plan, terms = self.plan.plan, self.plan.terms
        self.say("", "3. Create an account")
        async with self._engine().connect() as conn:
            if await PostgresAccounts(conn).get(self.account) is not None:
                raise DemoError(f"account {self.account} exists; leave out --account")
        await change_plan(
            self._unit_of_work,
            self.book,
            account=self.account,
            plan=plan.name,
            cause="operator",
            change_id=f"demo:{self.account}",
            now=self.settings.clock(),
        )
        self.say(f"   {self.account}, plan {plan.name}: {plan.price} {plan.currency} a month")
        if terms is not None and terms.limit is not None:
            warnings = ", ".join(f"{t}%" for t in plan.thresholds if t < 100) or "-"
            self.say(
                f"   {self.plan.chat_meter}: {terms.included} included, {terms.enforcement.value} "
                f"limit {terms.limit}; quota.warning at {warnings}, quota.exceeded at 100%"
            )
        await self._wait_for(lambda: self.feed.has("subscription.changed"), "subscription.changed")

    async def publish_day(self) -> None:
        """4: the day's usage, published as producers publish it, then recorded."""
        usage, connection = self.usage, self.connection
        if connection is None:
            raise RuntimeError("listen() opens the connection first")
        self.say(
            "",
            f"4. Publish a day of usage ({usage.day}, UTC)",
            "   The image generator and the chat service publish CloudEvents to",
            f"   {self.topology.usage_exchange}, routing key usage.<source>.<type>, persistent",
            f"   and confirmed. {len(usage.events)} events, spread over the day:",
        )
        for kind in sorted({e.event_type for e in usage.events}):
            self.say(f"     {usage.count(kind):>4} x {kind:<28} quantity {usage.quantity(kind)}")
        self.say(
            "   Each lands in the period its `time` names: "
            f"{self.period.start:%Y-%m-%d} .. {self.period.end:%Y-%m-%d}, already over."
        )
        await publish_usage(connection, self.topology.usage_exchange, usage.events)
        recorded = await self._wait_recorded()
        self.say(
            f"   published {len(usage.events)} events; the worker recorded {recorded}, each "
            "idempotency key once"
        )
        expected = self._expected_quota_events()
        await self._wait_for(
            lambda: all(self.feed.has(kind, n) for kind, n in expected), "the quota events"
        )
        if expected:
            self.say(
                "   Usage past a limit is still recorded; the event says how far over it is.",
                "   Services that must not overspend ask the quota check before they spend.",
            )

    async def close_period(self) -> str:
        """5: close the account's period, as the scheduler does once it is due."""
        self.say(
            "",
            f"5. Close the period {self.period.start:%Y-%m-%d} .. {self.period.end:%Y-%m-%d}",
            "   Workers close due periods by themselves, BILLING_CLOSE_GRACE_SECONDS after they",
            "   end; `billing-worker close-periods --account A` closes them now.",
        )
        review = self.settings.invoice_review
        closed = await close_due_periods(
            self._unit_of_work,
            self.book,
            as_of=self.settings.clock(),
            grace=timedelta(seconds=self.settings.close_grace_seconds),
            account=self.account,
            review=review,
        )
        # Nothing closed here: another worker on this database closed it first.
        ours = [c.invoice_id for c in closed if c.period.start == self.period.start]
        invoice_id = ours[0] if ours else invoice_id_for(self.account, self.period)
        if review and ours:
            self.say(
                "   BILLING_INVOICE_REVIEW is on: the invoice is a draft nobody sees until",
                f"   `billing-worker invoice finalize {invoice_id}`, which the demo does now.",
            )
            await move_invoice(
                self._unit_of_work,
                self.book,
                invoice_id=invoice_id,
                status="open",
                cause="operator",
                now=self.settings.clock(),
            )
        await self._wait_for(lambda: self.feed.has("invoice.ready"), "invoice.ready")
        return invoice_id

    async def print_invoice(self, invoice_id: str) -> None:
        """6: the invoice, as ``invoice show`` prints it."""
        self.say(
            "",
            f"6. The invoice (`billing-worker invoice show {invoice_id}`)",
            "   Usage rated by the price book; each line rounded once, the total their sum.",
            "",
        )
        if await show_invoice(
            self._engine(), self.book, invoice_id, explain=False, as_json=False, out=self.out
        ):
            raise DemoError(f"no invoice {invoice_id} after closing the period")
        self.say(
            "",
            "Next:",
            f"  billing-worker account show {self.account}",
            f"  billing-worker invoice show {invoice_id} --explain   # the events behind each line",
        )

    async def stop(self) -> None:
        """7: the worker drains and stops; the connection and the engine close."""
        started = self.engine is not None
        drained = await self.worker.stop()
        if self.connection is not None:
            await self.connection.close()
        if self.engine is not None:
            await self.engine.dispose()
        if started:
            self.say("", f"7. Stopped: the worker {'drained and ' if drained else ''}shut down.")

    def _engine(self) -> AsyncEngine:
        if self.engine is None:
            raise RuntimeError("the worker has not started")
        return self.engine

    def _unit_of_work(self) -> PostgresUnitOfWork:
        # Commits wake the worker's outbox relay, as the worker's own writes do.
        return PostgresUnitOfWork(
            self._engine(), on_outbox_written=self.worker.components.relay.wake
        )

    def _expected_quota_events(self) -> list[tuple[str, int]]:
        terms = self.plan.terms
        if terms is None or terms.limit is None:
            return []
        used = self.usage.quantity(CHAT_TYPE)
        return [
            ("quota.exceeded" if t >= 100 else "quota.warning", t)
            for t in self.plan.plan.thresholds
            if used * 100 >= terms.limit * t
        ]

    async def _wait_recorded(self) -> int:
        events = self.usage.events
        params = {"sources": [e.source for e in events], "ids": [e.event_id for e in events]}
        deadline = time.monotonic() + RECORD_TIMEOUT_SECONDS
        with progress("worker recording", total=len(events), unit="event") as bar:
            while True:
                async with self._engine().connect() as conn:
                    recorded = int((await conn.execute(COUNT_SETTLED, params)).scalar_one())
                settled = recorded + self.feed.count("usage.rejected")
                bar.update(settled - bar.n)
                if settled >= len(events):
                    return recorded
                if time.monotonic() > deadline:
                    raise DemoError(
                        f"the worker settled {settled} of {len(events)} events in "
                        f"{RECORD_TIMEOUT_SECONDS:g} s"
                    )
                await asyncio.sleep(POLL_SECONDS)

    async def _wait_for(self, condition: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + EVENT_WAIT_SECONDS
        while not condition():
            if time.monotonic() > deadline:
                raise DemoError(f"{what} did not arrive on {self.topology.events_exchange}")
            await asyncio.sleep(0.05)

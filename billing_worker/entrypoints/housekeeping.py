"""The worker's periodic jobs beside the consumers: expire credits, close due periods, push
closed invoices to Stripe, read the last Stripe reconcile run into its gauges. Each round
is one use case; a failed round is logged and tried again at the next one (replicas may all
run them: each effect is claimed in the database)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine
from datetime import timedelta
from typing import Any

import structlog
from sqlalchemy.ext.asyncio import AsyncEngine

from billing_worker.adapters.observability.metrics import Metrics
from billing_worker.adapters.postgres.reconcile_store import open_differences
from billing_worker.adapters.postgres.rejections import PostgresRejections
from billing_worker.adapters.postgres.unit_of_work import PostgresUnitOfWork
from billing_worker.config import Settings
from billing_worker.domain.pricebook import PriceBook
from billing_worker.service.accounts import expire_credits
from billing_worker.service.invoice_sync import sync_invoices
from billing_worker.service.invoices import close_due_periods
from billing_worker.service.reconcile_kinds import KINDS

log = structlog.get_logger(__name__)

STRIPE_SYNC_INTERVAL_SECONDS = 30.0
CREDIT_EXPIRY_INTERVAL_SECONDS = 60.0
REJECTION_PRUNE_INTERVAL_SECONDS = 3600.0
RECONCILE_GAUGE_INTERVAL_SECONDS = 60.0


class Housekeeping:
    """The periodic jobs of one worker process, started after the consumers."""

    def __init__(
        self,
        settings: Settings,
        book: PriceBook,
        engine: AsyncEngine,
        *,
        on_outbox_written: Callable[[], None],
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.book = book
        self._engine = engine
        self._on_outbox_written = on_outbox_written
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        """Start every job (Stripe sync only with BILLING_STRIPE_API_KEY)."""
        jobs: dict[str, Callable[[], Coroutine[Any, Any, None]]] = {
            "credits": self._expire_credits_forever,
            "period-closer": self._close_periods_forever,
            "rejections": self._prune_rejections_forever,
        }
        if self.settings.stripe_api_key is not None:
            jobs["stripe-sync"] = self._sync_invoices_forever
        if self.metrics is not None:
            jobs["stripe-reconcile-gauges"] = self._refresh_reconcile_gauges_forever
        self._tasks = [asyncio.create_task(job(), name=name) for name, job in jobs.items()]

    async def stop(self) -> None:
        """Cancel the jobs; a round cut short leaves nothing half-done (each is one
        transaction per effect) and is run again by the next start."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    def _unit_of_work(self) -> PostgresUnitOfWork:
        return PostgresUnitOfWork(self._engine, on_outbox_written=self._on_outbox_written)

    async def _expire_credits_forever(self) -> None:
        while True:
            try:
                expired = await expire_credits(self._unit_of_work, self.book, self.settings.clock())
                if expired:
                    log.info("credits_expired", grants=expired)
            except Exception as exc:  # noqa: BLE001 - retried at the next sweep
                log.warning("credit_expiry_failed", error=repr(exc))
            await asyncio.sleep(CREDIT_EXPIRY_INTERVAL_SECONDS)

    async def _prune_rejections_forever(self) -> None:
        """Forget recorded rejections past BILLING_REJECTED_RETENTION_DAYS."""
        keep = timedelta(days=self.settings.rejected_retention_days)
        rejections = PostgresRejections(self._engine)
        while True:
            try:
                pruned = await rejections.prune(self.settings.clock() - keep)
                if pruned:
                    log.info("rejections_pruned", events=pruned)
            except Exception as exc:  # noqa: BLE001 - retried at the next sweep
                log.warning("rejection_prune_failed", error=repr(exc))
            await asyncio.sleep(REJECTION_PRUNE_INTERVAL_SECONDS)

    async def _refresh_reconcile_gauges_forever(self) -> None:
        """The reconcile command runs on its own; the gauges read what it left."""
        while True:
            try:
                await self.refresh_reconcile_gauges()
            except Exception as exc:  # noqa: BLE001 - read again at the next round
                log.warning("reconcile_gauge_refresh_failed", error=repr(exc))
            await asyncio.sleep(RECONCILE_GAUGE_INTERVAL_SECONDS)

    async def refresh_reconcile_gauges(self) -> None:
        """Set ``billing_stripe_reconcile_*`` from the findings table (every kind, 0 when
        none is open, so alerts see the series before the first difference)."""
        if self.metrics is None:
            return
        counts, last_run = await open_differences(self._engine)
        for kind in sorted(set(KINDS) | set(counts)):
            self.metrics.stripe_reconcile_differences.labels(kind=kind).set(counts.get(kind, 0))
        self.metrics.stripe_reconcile_last_run.set(last_run.timestamp() if last_run else 0)

    async def _close_periods_forever(self) -> None:
        """Close due periods every BILLING_CLOSE_INTERVAL_SECONDS."""
        grace = timedelta(seconds=self.settings.close_grace_seconds)
        while True:
            try:
                closed = await close_due_periods(
                    self._unit_of_work,
                    self.book,
                    as_of=self.settings.clock(),
                    grace=grace,
                    review=self.settings.invoice_review,
                )
                if closed:
                    log.info("periods_closed", invoices=len(closed))
            except Exception as exc:  # noqa: BLE001 - retried at the next round
                log.warning("period_close_failed", error=repr(exc))
            await asyncio.sleep(self.settings.close_interval_seconds)

    async def _sync_invoices_forever(self) -> None:
        """Push closed invoices of Stripe-linked accounts to Stripe (BILLING_STRIPE_API_KEY)."""
        from billing_worker.adapters.stripe_api import StripeInvoiceSync  # noqa: PLC0415

        key = self.settings.stripe_api_key
        if key is None:  # pragma: no cover - only started with a key
            return
        pusher = StripeInvoiceSync(key.get_secret_value(), api_base=self.settings.stripe_api_base)
        while True:
            try:
                done = await sync_invoices(
                    self._unit_of_work,
                    pusher,
                    usage_billing=self.book.usage_billing,
                    automatic_tax=self.book.stripe_automatic_tax,
                )
                if done.pushed or done.failed:
                    log.info("stripe_invoices_synced", pushed=done.pushed, failed=done.failed)
            except Exception as exc:  # noqa: BLE001 - retried at the next round
                log.warning("stripe_sync_round_failed", error=repr(exc))
            await asyncio.sleep(STRIPE_SYNC_INTERVAL_SECONDS)

"""What the use cases need from storage, as Protocols the adapters implement."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from types import TracebackType
from typing import Any, Protocol, Self

from billing_worker.domain.credits import BurnResult, GrantBalance
from billing_worker.domain.invoice_model import (
    CreditUse,
    InvoiceDraft,
    LateUsage,
    MeterUsage,
    StoredInvoice,
)
from billing_worker.domain.periods import BillingPeriod, CycleChange, PeriodCalendar
from billing_worker.domain.pricebook import CreditSource, PriceBook
from billing_worker.domain.quotas import PeriodUsage, ThresholdCrossing
from billing_worker.domain.stripe import StripeEvent, SubscriptionTerms
from billing_worker.domain.usage import AggregateDelta, IdempotencyKey, LedgerEntry, UsageRecord

Clock = Callable[[], datetime]
"""Where the time comes from: called for "now". The composition root hands every part the
process's one clock; nothing reads the system time on its own."""


@dataclass(frozen=True, slots=True)
class OutgoingEvent:
    """A billing event to publish: its deterministic id, routing type, account, and the
    whole CloudEvents envelope as JSON-ready data."""

    event_id: str
    event_type: str
    subject: str
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class QuotaAlert:
    """A threshold crossing and the event announcing it."""

    crossing: ThresholdCrossing
    event: OutgoingEvent


@dataclass(frozen=True, slots=True)
class Account:
    """An account as stored."""

    account: str
    plan: str
    status: str
    created_at: datetime
    plan_changed_at: datetime | None


class UsageStore(Protocol):
    """Idempotency records, the usage ledger and its aggregates, inside one transaction."""

    async def claim_keys(self, records: Sequence[UsageRecord]) -> set[IdempotencyKey]:
        """Insert idempotency records; return the keys this call inserted (not seen before)."""
        ...

    async def release_keys(self, keys: Sequence[IdempotencyKey]) -> None:
        """Drop idempotency records this transaction claimed (their events are refused)."""
        ...

    async def stored_fingerprints(
        self, keys: Sequence[IdempotencyKey]
    ) -> dict[IdempotencyKey, bytes]:
        """The content fingerprints already stored for ``keys``."""
        ...

    async def ensure_accounts(self, accounts: Sequence[str], plan: str, at: datetime) -> None:
        """Create the accounts that do not exist yet, on ``plan``, as created ``at``."""
        ...

    async def period_calendars(self, accounts: Sequence[str]) -> Mapping[str, PeriodCalendar]:
        """The billing periods of each of ``accounts`` (possibly cached for a minute: a
        change of cycle only takes effect far enough ahead for that not to matter)."""
        ...

    async def append_usage(
        self,
        entries: Sequence[LedgerEntry],
        deltas: Sequence[AggregateDelta],
        *,
        book: PriceBook,
    ) -> list[PeriodUsage]:
        """Append ledger rows, fold ``deltas`` (sorted by key) into the running totals
        (recording ``book``'s version), and return, with each account's plan, the new
        totals that reach their plan's lowest alert level on a limited meter."""
        ...


class Outbox(Protocol):
    """Events to publish, written in the transaction that caused them."""

    async def add(self, events: Sequence[OutgoingEvent]) -> int:
        """Write events (ids already present are skipped); return how many were new."""
        ...

    async def add_quota_alerts(self, alerts: Sequence[QuotaAlert]) -> int:
        """Record crossings never announced before, with their events; return how many."""
        ...


class CreditStore(Protocol):
    """Credit grants and the credit ledger."""

    async def allocate_plan_grants(
        self, needed: Sequence[tuple[str, BillingPeriod]], book: PriceBook, now: datetime
    ) -> None:
        """Grant each (account, period) its plan's credits, once ever: the plan in force,
        or at the end of a period already over by ``now``."""
        ...

    async def live_grants(self, accounts: Sequence[str], now: datetime) -> list[GrantBalance]:
        """Unexpired grants with credits left, locked until the transaction ends."""
        ...

    async def record_burns(self, burn: BurnResult, pricebook_version: str) -> None:
        """Append the burn's ledger entries and update the grants' balances."""
        ...

    async def add_grant(
        self,
        *,
        account: str,
        source: CreditSource,
        amount: Decimal,
        priority: int,
        valid_from: datetime,
        expires_at: datetime | None,
        key: str,
        note: str,
        pricebook_version: str,
    ) -> int | None:
        """Add a grant with its ledger entry; ``None`` if ``key`` was granted before."""
        ...

    async def end_plan_grants(
        self, account: str, period: BillingPeriod, now: datetime, pricebook_version: str
    ) -> int:
        """Expire what is left of the account's plan grants for ``period`` now."""
        ...

    async def expire_due(self, now: datetime, pricebook_version: str, limit: int = 1000) -> int:
        """Write expiry entries for grants past expiry; return how many."""
        ...


class AccountStore(Protocol):
    """Accounts, their plans, the account ledger and period totals."""

    async def get(self, account: str, *, lock: bool = False) -> Account | None:
        """The account or None; ``lock`` holds it (``FOR UPDATE``: usage batches for the
        account wait, as their ledger rows' foreign key check needs a key-share lock)
        until the transaction ends."""
        ...

    async def create(self, account: str, plan: str, at: datetime) -> bool:
        """Create the account on ``plan``, as created ``at``, unless it exists; True if this
        call created it."""
        ...

    async def set_plan(self, account: str, plan: str, status: str, at: datetime) -> None:
        """Move the account to ``plan`` and ``status``."""
        ...

    async def append_entry(
        self, account: str, kind: str, details: dict[str, Any], version: str, at: datetime
    ) -> None:
        """Append an account-ledger entry."""
        ...

    async def period_usage(self, account: str, period: BillingPeriod) -> dict[str, Decimal]:
        """Every meter's total for the account in ``period``."""
        ...

    async def period_calendar(self, account: str) -> PeriodCalendar:
        """The account's billing periods, read now."""
        ...

    async def add_cycle_change(
        self, account: str, change: CycleChange, subscription: str | None
    ) -> None:
        """Record a change of the account's billing cycle."""
        ...

    async def usage_horizon(self, account: str) -> datetime | None:
        """The end of the latest period holding usage of the account, if any."""
        ...


class StripeStore(Protocol):
    """Processed Stripe events, object ordering, customers, subscriptions, payments."""

    async def claim_event(self, event: StripeEvent) -> bool:
        """Record the event id; False if taken before (a duplicate delivery)."""
        ...

    async def set_outcome(self, event: StripeEvent, outcome: str, account: str | None) -> None:
        """Say what became of a claimed event."""
        ...

    async def advance_object(self, event: StripeEvent, *, terminal: bool) -> bool:
        """Move the object's clock to the event; False if the event is stale."""
        ...

    async def link_customer(self, customer: str, account: str) -> bool:
        """Link a Stripe customer to an account; True if new."""
        ...

    async def customer_account(self, customer: str) -> str | None:
        """The account a Stripe customer is linked to."""
        ...

    async def subscription_account(self, subscription_id: str) -> str | None:
        """The account a Stripe subscription is kept under."""
        ...

    async def save_subscription(self, terms: SubscriptionTerms, account: str, plan: str) -> None:
        """Keep the subscription's current state."""
        ...

    async def append_payment(
        self,
        *,
        account: str,
        kind: str,
        amount: Decimal,
        currency: str,
        object_id: str,
        event_id: str,
        details: dict[str, Any],
        at: datetime,
    ) -> None:
        """Append a payment (+) or refund (-) entry."""
        ...

    async def other_live_subscription(
        self, account: str, subscription_id: str
    ) -> tuple[str, str] | None:
        """(plan, status) of another live subscription of the account, the latest one."""
        ...

    async def refunded_so_far(self, charge_id: str) -> Decimal:
        """Refunds of the charge the ledger already holds."""
        ...


class InvoiceStore(Protocol):
    """Invoices and what closing a period reads."""

    async def closed_periods(
        self, pairs: Sequence[tuple[str, datetime]]
    ) -> set[tuple[str, datetime]]:
        """Those (account, period start) pairs already invoiced."""
        ...

    async def invoice_for(self, account: str, period: BillingPeriod) -> str | None:
        """The id of the account's invoice for ``period``."""
        ...

    async def plan_changes(
        self, account: str, period: BillingPeriod
    ) -> list[tuple[datetime, str, str | None]]:
        """(effective at, plan, previous plan) of every change before the period's end."""
        ...

    async def usage(
        self, account: str, period: BillingPeriod, dimensions: Mapping[str, str]
    ) -> list[MeterUsage]:
        """Each meter's period total with the ledger entries behind it."""
        ...

    async def credits_used(self, account: str, period: BillingPeriod) -> CreditUse:
        """Credits grants paid for usage in the period, and those no grant covered."""
        ...

    async def late_usage(
        self, account: str, before: BillingPeriod, dimensions: Mapping[str, str]
    ) -> list[LateUsage]:
        """Usage of invoiced periods before ``before`` recorded since their invoice."""
        ...

    async def insert(
        self, invoice_id: str, draft: InvoiceDraft, *, status: str, last_entry_id: int | None
    ) -> bool:
        """Write the invoice and its lines; False if the period was invoiced already."""
        ...

    async def as_draft(self, invoice: StoredInvoice) -> InvoiceDraft:
        """The stored invoice with its lines, as the close built it."""
        ...

    async def get(self, invoice_id: str, *, lock: bool = False) -> StoredInvoice | None:
        """The invoice."""
        ...

    async def set_status(self, invoice_id: str, status: str) -> None:
        """Move the invoice to ``status``."""
        ...

    async def to_sync(self, limit: int) -> list[tuple[str, str, str, BillingPeriod]]:
        """(invoice, Stripe customer, currency, period) of invoices to push, locked."""
        ...

    async def sync_lines(self, invoice_id: str) -> list[tuple[int, str, Decimal]]:
        """(line no, description, amount) of an invoice."""
        ...

    async def record_sync(self, invoice_id: str, stripe_invoice_id: str) -> None:
        """The invoice is in Stripe."""
        ...

    async def record_sync_failure(self, invoice_id: str, error: str, *, permanent: bool) -> None:
        """Count a failed push; keep a permanent one's error."""
        ...


class CloseSchedule(Protocol):
    """Which periods are due for closing: each account's close watermark."""

    async def due_periods(
        self, cutoff: datetime, *, account: str | None, limit: int
    ) -> list[tuple[str, BillingPeriod]]:
        """(account, period) of the periods ended by ``cutoff`` without an invoice yet,
        oldest first, reading only accounts with something due."""
        ...

    async def advance(self, account: str, calendar: PeriodCalendar) -> None:
        """Move the account's watermark past its invoiced periods (account row locked)."""
        ...

    async def reopen(self, periods: Sequence[tuple[str, BillingPeriod]]) -> None:
        """Usage landed in these ended periods: move a watermark back to one that has no
        invoice yet."""
        ...


class UnitOfWork(Protocol):
    """One database transaction. Leaving it without ``commit()`` rolls back.

    Storage failures leave it translated: transient ones as ``TransientError``, data
    the store refuses as ``UnprocessableEvent``.
    """

    @property
    def usage(self) -> UsageStore:
        """The usage store bound to this transaction."""
        ...

    @property
    def outbox(self) -> Outbox:
        """The outbox bound to this transaction."""
        ...

    @property
    def credits(self) -> CreditStore:
        """Credit grants and ledger bound to this transaction."""
        ...

    @property
    def accounts(self) -> AccountStore:
        """Accounts bound to this transaction."""
        ...

    @property
    def stripe(self) -> StripeStore:
        """Stripe state bound to this transaction."""
        ...

    @property
    def invoices(self) -> InvoiceStore:
        """Invoices bound to this transaction."""
        ...

    @property
    def schedule(self) -> CloseSchedule:
        """The close schedule bound to this transaction."""
        ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    async def commit(self) -> None:
        """Make the transaction's writes durable."""
        ...


UnitOfWorkFactory = Callable[[], UnitOfWork]

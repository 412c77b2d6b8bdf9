"""What the use cases need from storage, as Protocols the adapters implement."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from types import TracebackType
from typing import Any, Protocol, Self

from billing_worker.domain.credits import BurnResult, GrantBalance
from billing_worker.domain.periods import BillingPeriod, CycleChange, PeriodCalendar
from billing_worker.domain.pricebook import CreditSource, PriceBook
from billing_worker.domain.quotas import PeriodUsage, ThresholdCrossing
from billing_worker.domain.stripe import IntentPayment, StripeEvent, SubscriptionTerms
from billing_worker.domain.usage import AggregateDelta, IdempotencyKey, LedgerEntry, UsageRecord
from billing_worker.service.invoice_ports import CloseSchedule, InvoiceStore, InvoiceToSync

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
    plan_billed_by: str = "worker"
    """``worker`` or ``stripe_subscription``: who charges the present plan's fee."""
    plan_subscription: str | None = None
    """The Stripe subscription that bills it, if one does."""


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

    async def claw_back(
        self,
        *,
        account: str,
        grant_id: int,
        amount: Decimal,
        event_id: str,
        now: datetime,
        pricebook_version: str,
    ) -> Decimal | None:
        """Take up to ``amount`` credits of what is left of the account's grant back, as a
        ``reversal`` entry; return what was taken (None: no such grant of the account)."""
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

    async def set_plan(
        self,
        account: str,
        plan: str,
        status: str,
        at: datetime,
        *,
        billed_by: str = "worker",
        subscription: str | None = None,
    ) -> None:
        """Move the account to ``plan`` and ``status`` from ``at``, its fee billed by
        ``billed_by`` (under ``subscription``)."""
        ...

    async def append_entry(
        self,
        account: str,
        kind: str,
        details: dict[str, Any],
        version: str,
        at: datetime,
        *,
        effective_at: datetime | None = None,
    ) -> None:
        """Append an account-ledger entry, recorded ``at``, in effect from ``effective_at``
        (default ``at``)."""
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
    ) -> tuple[str, str, str] | None:
        """(plan, status, id) of another live subscription of the account, the latest one."""
        ...

    async def refunded_so_far(self, charge_id: str) -> Decimal:
        """Refunds of the charge the ledger already holds."""
        ...

    async def payment_of_intent(self, payment_intent: str) -> IntentPayment | None:
        """The payment the ledger holds for a Stripe payment intent, if any."""
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

__all__ = [
    "Account",
    "AccountStore",
    "Clock",
    "CloseSchedule",
    "CreditStore",
    "InvoiceStore",
    "InvoiceToSync",
    "Outbox",
    "OutgoingEvent",
    "QuotaAlert",
    "StripeStore",
    "UnitOfWork",
    "UnitOfWorkFactory",
    "UsageStore",
]

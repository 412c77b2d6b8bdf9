"""What the invoice sync sends Stripe: one invoice's worker-billed lines, where they go,
the idempotency keys of each write, and the errors a push ends with."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

METADATA_INVOICE_ID = "billing_invoice_id"
METADATA_LINE_NO = "line_no"
KEY_PREFIX = "billing-worker"
MAX_INVOICE_ID_LENGTH = 200  # keeps every idempotency key under Stripe's 255 characters
CURRENCY = re.compile(r"^[a-z]{3}$")


@dataclass(frozen=True, slots=True)
class SyncLine:
    """One line of our invoice: ``amount_minor`` in integer minor units, may be negative."""

    line_no: int
    description: str
    amount_minor: int

    def __post_init__(self) -> None:
        if isinstance(self.line_no, bool) or not isinstance(self.line_no, int):
            raise TypeError(f"line_no must be an int, not {self.line_no!r}")
        if self.line_no < 0:
            raise ValueError(f"line_no must not be negative, not {self.line_no}")
        if isinstance(self.amount_minor, bool) or not isinstance(self.amount_minor, int):
            raise TypeError(
                f"line {self.line_no}: amount_minor must be an int, not {self.amount_minor!r}"
            )


@dataclass(frozen=True, slots=True)
class SyncInvoice:
    """One of our invoices, as Stripe needs it."""

    invoice_id: str
    customer_id: str
    currency: str
    lines: tuple[SyncLine, ...]
    period_start: datetime
    period_end: datetime
    subscription_id: str | None = None
    """Add the lines as pending items on this subscription (its next invoice charges
    them) instead of making an invoice of their own."""
    automatic_tax: bool = False
    """Ask Stripe Tax to compute the tax of the invoice this push creates."""

    def __post_init__(self) -> None:
        if not self.invoice_id or len(self.invoice_id) > MAX_INVOICE_ID_LENGTH:
            raise ValueError(
                f"invoice_id must be 1 to {MAX_INVOICE_ID_LENGTH} characters, "
                f"not {self.invoice_id!r}"
            )
        if not self.customer_id:
            raise ValueError(f"{self.invoice_id}: customer_id is empty")
        if not CURRENCY.match(self.currency):
            raise ValueError(
                f"{self.invoice_id}: currency must be three lower-case letters, "
                f"not {self.currency!r}"
            )
        for name in ("period_start", "period_end"):
            moment = getattr(self, name)
            if moment.tzinfo is None or moment.utcoffset() is None:
                raise ValueError(f"{self.invoice_id}: {name} must be timezone-aware")
        if self.period_end <= self.period_start:
            raise ValueError(f"{self.invoice_id}: period_end must be after period_start")
        numbers = [line.line_no for line in self.lines]
        if len(set(numbers)) != len(numbers):
            # Two lines with one number would share an idempotency key.
            raise ValueError(f"{self.invoice_id}: line numbers repeat: {sorted(numbers)}")

    @property
    def billable_lines(self) -> tuple[SyncLine, ...]:
        """The lines Stripe gets an item for: every line with a non-zero amount."""
        return tuple(line for line in self.lines if line.amount_minor != 0)

    @property
    def description(self) -> str:
        """The Stripe invoice's description: the period, in UTC."""
        start = self.period_start.astimezone(UTC)
        end = self.period_end.astimezone(UTC)
        return f"Usage {start:%Y-%m-%d %H:%M} to {end:%Y-%m-%d %H:%M} UTC"


class StripeSyncError(Exception):
    """Pushing an invoice failed; ``detail`` names the step and never the API key."""

    def __init__(
        self,
        detail: str,
        *,
        step: str,
        invoice_id: str,
        http_status: int | None = None,
        code: str | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.step = step
        self.invoice_id = invoice_id
        self.http_status = http_status
        self.code = code
        self.request_id = request_id


class TransientStripeError(StripeSyncError):
    """Network error, 429, 5xx or an idempotency conflict: push again later."""


class PermanentStripeError(StripeSyncError):
    """A request retrying cannot fix (invalid, unauthorised, no such customer...)."""


def invoice_key(invoice_id: str) -> str:
    """Idempotency key of creating the Stripe invoice."""
    return f"{KEY_PREFIX}:{invoice_id}:invoice"


def line_key(invoice_id: str, line_no: int) -> str:
    """Idempotency key of adding line ``line_no``."""
    return f"{KEY_PREFIX}:{invoice_id}:line:{line_no}"


def finalize_key(invoice_id: str) -> str:
    """Idempotency key of finalizing."""
    return f"{KEY_PREFIX}:{invoice_id}:finalize"


def pending_line_key(invoice_id: str, line_no: int) -> str:
    """Idempotency key of adding line ``line_no`` as a pending item on a subscription."""
    return f"{KEY_PREFIX}:{invoice_id}:pending:{line_no}"

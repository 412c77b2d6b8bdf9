"""Push one of our invoices to Stripe, idempotently, with the official SDK.

A push is three kinds of write: create a draft invoice, add one invoice item per line with
a non-zero amount, finalize. Each write carries an ``Idempotency-Key`` derived only from
our ids (``billing-worker:<invoice_id>:invoice``, ``...:line:<line_no>``,
``...:finalize``), never a random one, so the keys of a retry are the keys of the first
attempt: when Stripe saw a request but the answer was lost (a timeout, a dropped
connection, a crash of this process), the same request again is answered from the
response Stripe saved for that key instead of being performed twice, and a racing second
worker sending the same key while the first is still in flight is refused (409) rather
than served. Stripe applies the key only to the same endpoint and parameters: the
parameters are therefore built only from the invoice itself, deterministically.

The limit: Stripe keeps a key for at least 24 hours, not forever. After that the same key
is a new request, and a create would make a second invoice or item. So every push first
looks the invoice up by what it carries, not by the key: the customer's invoices are
listed (``invoices.list``, strongly consistent, unlike the search API which lags) and
filtered on ``metadata["billing_invoice_id"]``. An invoice found that is already
finalized is returned as it is; a draft is reused, and before adding items the draft's
own items are listed and matched on ``metadata["line_no"]``, so a line added by an earlier
attempt is never added again however old its key. Creating goes through the keyed calls
only for what is really missing; the keys still guard the gap between the lookup and the
create (two workers racing, or a create that landed but whose answer was lost).

Two consequences of Stripe saving the first response, whatever it was:
  * a 500 Stripe returned after it began executing is replayed for the same key for up
    to 24 hours; the reconciliation above steps around it when the object was made,
    otherwise the step keeps failing as transient until Stripe forgets the key;
  * a key reused with other parameters is an ``IdempotencyError``; it is treated as
    transient (it also covers "a request with this key is in flight").

A voided invoice carrying our id is not recreated (someone decided it in Stripe) and two
live ones are not chosen between: both are permanent errors for a human to look at.

The SDK is synchronous here. A push runs on one worker thread (``asyncio.to_thread``)
with an HTTP client of its own, closed on that same thread when the push ends (the
SDK's requests-based client keeps one session per thread and closes only the calling
thread's). Cancelling the awaiting task does not stop a push already on its thread; the
keys make finishing it harmless. The SDK's own retries are off: the caller decides when
to retry, from the error type.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

import stripe

if TYPE_CHECKING:
    from stripe import Invoice, StripeClient

T = TypeVar("T")

METADATA_INVOICE_ID = "billing_invoice_id"
METADATA_LINE_NO = "line_no"
KEY_PREFIX = "billing-worker"
MAX_INVOICE_ID_LENGTH = 200  # keeps every idempotency key under Stripe's 255 characters
LIST_PAGE_SIZE = 100
CURRENCY = re.compile(r"^[a-z]{3}$")

TRANSIENT_SDK_ERRORS: tuple[type[stripe.StripeError], ...] = (
    stripe.APIConnectionError,
    stripe.RateLimitError,
    stripe.APIError,
    stripe.IdempotencyError,
)
PERMANENT_SDK_ERRORS: tuple[type[stripe.StripeError], ...] = (
    stripe.InvalidRequestError,
    stripe.AuthenticationError,
    stripe.PermissionError,
    stripe.CardError,
)
# Their error bodies may quote the credential; their SDK exception is not chained.
CREDENTIAL_ERRORS: tuple[type[stripe.StripeError], ...] = (
    stripe.AuthenticationError,
    stripe.PermissionError,
)


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


class StripeInvoiceSync:
    """Pushes invoices to Stripe; see the module docstring for what makes retries safe."""

    def __init__(self, api_key: str, *, api_base: str | None = None, timeout: float = 20.0) -> None:
        if not api_key:
            raise ValueError("a Stripe API key is required")
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, not {timeout}")
        self._api_key = api_key
        self._api_base = api_base
        self._timeout = timeout

    def __repr__(self) -> str:
        return f"StripeInvoiceSync(api_base={self._api_base!r}, timeout={self._timeout})"

    async def push(self, invoice: SyncInvoice) -> str:
        """Create, fill and finalize ``invoice`` in Stripe (or finish an earlier attempt).

        Returns the Stripe invoice id (``in_...``). Raises ``TransientStripeError`` when a
        later push may succeed and ``PermanentStripeError`` when it cannot.
        """
        return await asyncio.to_thread(self._push_blocking, invoice)

    # --- on the worker thread -----------------------------------------------------------

    def _push_blocking(self, invoice: SyncInvoice) -> str:
        http_client = stripe.RequestsClient(timeout=self._timeout)
        try:
            client = stripe.StripeClient(
                self._api_key,
                base_addresses={"api": self._api_base} if self._api_base else None,
                max_network_retries=0,
                http_client=http_client,
            )
            return _Push(client, invoice, self._call).run()
        finally:
            # The session of this thread, the only one this push used. (Untyped in the SDK.)
            http_client.close()  # type: ignore[no-untyped-call]

    def _call(self, step: str, invoice: SyncInvoice, request: Callable[[], T]) -> T:
        """``request()``, with the SDK's errors mapped onto ours."""
        try:
            return request()
        except stripe.StripeError as exc:
            error = self._mapped(step, invoice, exc)
            if isinstance(exc, CREDENTIAL_ERRORS):
                raise error from None
            raise error from exc

    def _mapped(self, step: str, invoice: SyncInvoice, exc: stripe.StripeError) -> StripeSyncError:
        status = exc.http_status
        if isinstance(exc, TRANSIENT_SDK_ERRORS):
            kind: type[StripeSyncError] = TransientStripeError
        elif isinstance(exc, PERMANENT_SDK_ERRORS):
            kind = PermanentStripeError
        else:  # any other SDK error: by status, an answer-less failure may pass
            kind = TransientStripeError if status is None or status >= 500 else PermanentStripeError
        message = self._scrubbed(exc.user_message or "(no message)")
        facts = ", ".join(
            fact
            for fact in (
                f"HTTP {status}" if status is not None else "no HTTP answer",
                f"code {exc.code}" if exc.code else "",
                f"request {exc.request_id}" if exc.request_id else "",
            )
            if fact
        )
        detail = (
            f"Stripe {step} for {invoice.invoice_id} failed: "
            f"{type(exc).__name__} ({facts}): {message}"
        )
        return kind(
            detail,
            step=step,
            invoice_id=invoice.invoice_id,
            http_status=status,
            code=exc.code,
            request_id=exc.request_id,
        )

    def _scrubbed(self, text: str) -> str:
        return text.replace(self._api_key, "[redacted]")


class _Push:
    """One push of one invoice, on one thread, with one client."""

    def __init__(
        self,
        client: StripeClient,
        invoice: SyncInvoice,
        call: Callable[[str, SyncInvoice, Callable[[], Any]], Any],
    ) -> None:
        self.client = client
        self.invoice = invoice
        self._call = call

    def call(self, step: str, request: Callable[[], T]) -> T:
        result: T = self._call(step, self.invoice, request)
        return result

    def fail(self, step: str, detail: str) -> PermanentStripeError:
        return PermanentStripeError(
            f"Stripe {step} for {self.invoice.invoice_id}: {detail}",
            step=step,
            invoice_id=self.invoice.invoice_id,
        )

    def run(self) -> str:
        existing = self.find_existing()
        if existing is None:
            stripe_invoice = self.create_invoice()
            present: dict[int, int] = {}
        elif existing.status != "draft":
            return existing.id  # finalized by an earlier push: nothing left to do
        else:
            stripe_invoice = existing
            present = self.items_already_on(existing.id)
        for line in self.invoice.billable_lines:
            if line.line_no in present:
                if present.pop(line.line_no) != line.amount_minor:
                    raise self.fail(
                        f"create item for line {line.line_no}",
                        f"the draft {stripe_invoice.id} already has line "
                        f"{line.line_no} with another amount; not adding it again",
                    )
                continue
            self.create_item(stripe_invoice.id, line)
        if present:
            raise self.fail(
                "create items",
                f"the draft {stripe_invoice.id} has lines {sorted(present)} that this "
                "invoice does not bill; not finalizing it",
            )
        return self.finalize(stripe_invoice.id)

    def find_existing(self) -> Invoice | None:
        """Our Stripe invoice, found by metadata (works after keys expire)."""
        step = "look up invoice"
        ours = self.invoice.invoice_id

        def search() -> list[Invoice]:
            page = self.client.v1.invoices.list(
                params={"customer": self.invoice.customer_id, "limit": LIST_PAGE_SIZE}
            )
            return [
                found
                for found in page.auto_paging_iter()
                if _metadata(found.metadata).get(METADATA_INVOICE_ID) == ours
            ]

        matches = self.call(step, search)
        live = [found for found in matches if found.status != "void"]
        if len(live) > 1:
            ids = ", ".join(found.id for found in live)
            raise self.fail(step, f"several Stripe invoices carry this id ({ids}); not choosing")
        if not live and matches:
            ids = ", ".join(found.id for found in matches)
            raise self.fail(step, f"its Stripe invoice was voided ({ids}); not recreating it")
        if not live:
            return None
        found = live[0]
        if found.currency != self.invoice.currency:
            raise self.fail(
                step,
                f"Stripe invoice {found.id} is in {found.currency}, ours in "
                f"{self.invoice.currency}",
            )
        return found

    def items_already_on(self, stripe_invoice_id: str) -> dict[int, int]:
        """``line_no -> amount`` of our items already on the draft ``stripe_invoice_id``."""
        ours = self.invoice.invoice_id

        def listed() -> dict[int, int]:
            page = self.client.v1.invoice_items.list(
                params={"invoice": stripe_invoice_id, "limit": LIST_PAGE_SIZE}
            )
            present: dict[int, int] = {}
            for item in page.auto_paging_iter():
                metadata = _metadata(item.metadata)
                line_no = metadata.get(METADATA_LINE_NO, "")
                if metadata.get(METADATA_INVOICE_ID) == ours and line_no.isdigit():
                    present[int(line_no)] = present.get(int(line_no), 0) + item.amount
            return present

        return self.call("list items", listed)

    def create_invoice(self) -> Invoice:
        invoice = self.invoice
        return self.call(
            "create invoice",
            lambda: self.client.v1.invoices.create(
                params={
                    "customer": invoice.customer_id,
                    "currency": invoice.currency,
                    "collection_method": "charge_automatically",
                    "auto_advance": False,
                    "pending_invoice_items_behavior": "exclude",
                    "description": invoice.description,
                    "metadata": {METADATA_INVOICE_ID: invoice.invoice_id},
                },
                options={"idempotency_key": invoice_key(invoice.invoice_id)},
            ),
        )

    def create_item(self, stripe_invoice_id: str, line: SyncLine) -> None:
        invoice = self.invoice
        self.call(
            f"create item for line {line.line_no}",
            lambda: self.client.v1.invoice_items.create(
                params={
                    "customer": invoice.customer_id,
                    "invoice": stripe_invoice_id,
                    "amount": line.amount_minor,
                    "currency": invoice.currency,
                    "description": line.description,
                    "metadata": {
                        METADATA_INVOICE_ID: invoice.invoice_id,
                        METADATA_LINE_NO: str(line.line_no),
                    },
                },
                options={"idempotency_key": line_key(invoice.invoice_id, line.line_no)},
            ),
        )

    def finalize(self, stripe_invoice_id: str) -> str:
        finalized = self.call(
            "finalize invoice",
            lambda: self.client.v1.invoices.finalize_invoice(
                stripe_invoice_id,
                params={"auto_advance": True},
                options={"idempotency_key": finalize_key(self.invoice.invoice_id)},
            ),
        )
        return finalized.id


def _metadata(metadata: Any) -> Mapping[str, str]:
    """A Stripe object's ``metadata`` as a plain mapping (the SDK's objects are no dicts)."""
    if metadata is None:
        return {}
    if isinstance(metadata, Mapping):
        return metadata
    as_dict: dict[str, str] = metadata.to_dict()
    return as_dict

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

An invoice whose lines go onto a subscription (``SyncInvoice.subscription_id``) is one
kind of write: a pending invoice item per line, with ``subscription`` and the same
metadata, keyed ``...:pending:<line_no>``. The customer's items are listed first and
matched on that metadata, pending or already invoiced, so a line is never added twice
however old its key; Stripe's next invoice of the subscription takes them.

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
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

import stripe

from billing_worker.adapters.stripe_client import stripe_client
from billing_worker.adapters.stripe_push import InvoicePush
from billing_worker.service.stripe_sync_requests import (
    METADATA_INVOICE_ID,
    METADATA_LINE_NO,
    PermanentStripeError,
    StripeSyncError,
    SyncInvoice,
    SyncLine,
    TransientStripeError,
    finalize_key,
    invoice_key,
    line_key,
    pending_line_key,
)

if TYPE_CHECKING:
    pass

T = TypeVar("T")


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

    async def push(self, invoice: SyncInvoice) -> str | None:
        """Create, fill and finalize ``invoice`` in Stripe (or finish an earlier attempt),
        returning the Stripe invoice id (``in_...``); or, for an invoice naming a
        subscription, add its lines as pending items on it, returning None.

        Raises ``TransientStripeError`` when a later push may succeed and
        ``PermanentStripeError`` when it cannot.
        """
        return await asyncio.to_thread(self._push_blocking, invoice)

    # --- on the worker thread -----------------------------------------------------------

    def _push_blocking(self, invoice: SyncInvoice) -> str | None:
        with stripe_client(self._api_key, self._api_base, self._timeout) as client:
            push = InvoicePush(client, invoice, self._call)
            if invoice.subscription_id is not None:
                push.add_pending()
                return None
            return push.run()

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


__all__ = [
    "METADATA_INVOICE_ID",
    "METADATA_LINE_NO",
    "PermanentStripeError",
    "StripeInvoiceSync",
    "StripeSyncError",
    "SyncInvoice",
    "SyncLine",
    "TransientStripeError",
    "finalize_key",
    "invoice_key",
    "line_key",
    "pending_line_key",
]

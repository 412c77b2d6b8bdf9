"""Read what Stripe holds for our invoices (GET requests only), with the official SDK.

Per customer, every invoice and every invoice item (``invoices.list`` and
``invoice_items.list`` are strongly consistent, unlike the search API); then the invoices
recorded here that those lists lack (by id: a 404 means Stripe has no such invoice); for
each invoice with money paid, its payments (``invoice_payments.list``; the 2026 API keeps
them there, older versions named one ``charge``/``payment_intent`` on the invoice, read too
when present) and their refunds (``refunds.list`` by payment intent or charge); and the
subscriptions pending items wait on. As in ``stripe_api.py``: one thread, one HTTP client
closed on it, the SDK's retries off; an error ends the read (a partial picture would report
differences that are not there).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import stripe

from billing_worker.adapters.stripe_client import stripe_client
from billing_worker.service.reconcile_model import (
    StripeInvoice,
    StripeItem,
    StripeRefund,
    StripeSubscription,
    StripeView,
)

if TYPE_CHECKING:
    from stripe import StripeClient

METADATA_INVOICE_ID = "billing_invoice_id"
METADATA_LINE_NO = "line_no"
PAGE_SIZE = 100


class StripeReadError(Exception):
    """Reading from Stripe failed; ``detail`` names the request and never the API key."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


@dataclass(frozen=True, slots=True)
class StripeReadRequest:
    """What to read: the customers of our accounts, the Stripe invoices and subscriptions
    our invoices name."""

    customers: tuple[str, ...]
    invoice_ids: tuple[str, ...] = ()
    subscription_ids: tuple[str, ...] = ()


class StripeReconcileReader:
    """Reads Stripe's side of reconciling; never writes."""

    def __init__(self, api_key: str, *, api_base: str | None = None, timeout: float = 20.0) -> None:
        if not api_key:
            raise ValueError("a Stripe API key is required")
        self._api_key = api_key
        self._api_base = api_base
        self._timeout = timeout

    def __repr__(self) -> str:
        return f"StripeReconcileReader(api_base={self._api_base!r}, timeout={self._timeout})"

    async def read(self, request: StripeReadRequest) -> StripeView:
        """Stripe's objects for ``request``; raises ``StripeReadError``."""
        return await asyncio.to_thread(self._read_blocking, request)

    def _read_blocking(self, request: StripeReadRequest) -> StripeView:
        try:
            with stripe_client(self._api_key, self._api_base, self._timeout) as client:
                return _Read(client, request).run()
        except stripe.StripeError as exc:
            message = (exc.user_message or "(no message)").replace(self._api_key, "[redacted]")
            status = f"HTTP {exc.http_status}" if exc.http_status else "no HTTP answer"
            raise StripeReadError(f"{type(exc).__name__} ({status}): {message}") from None


class _Read:
    """One read, on one thread, with one client."""

    def __init__(self, client: StripeClient, request: StripeReadRequest) -> None:
        self.v1 = client.v1
        self.request = request
        self.invoices: dict[str, dict[str, Any]] = {}
        self.items: list[StripeItem] = []
        self.missing_customers: set[str] = set()

    def run(self) -> StripeView:
        for customer in dict.fromkeys(self.request.customers):
            self.read_customer(customer)
        for invoice_id in dict.fromkeys(self.request.invoice_ids):
            if invoice_id not in self.invoices:
                found = _unless_missing(lambda i=invoice_id: self.v1.invoices.retrieve(i))
                if found is not None:
                    self.invoices[invoice_id] = found.to_dict()
        holders = {i.invoice for i in self.items if i.billing_invoice_id is not None}
        wanted = set(self.request.invoice_ids) | holders
        invoices = {
            invoice_id: self.invoice(raw, paid_lookup=self.relevant(raw, wanted))
            for invoice_id, raw in self.invoices.items()
        }
        waiting = {i.subscription for i in self.items if i.invoice is None and i.subscription}
        subscriptions = {}
        for sub_id in sorted(set(self.request.subscription_ids) | waiting):
            found = _unless_missing(lambda s=sub_id: self.v1.subscriptions.retrieve(s))
            if found is not None:
                subscriptions[sub_id] = _subscription(found.to_dict())
        return StripeView(
            invoices=invoices,
            items=tuple(self.items),
            subscriptions=subscriptions,
            missing_customers=frozenset(self.missing_customers),
        )

    def read_customer(self, customer: str) -> None:
        try:
            invoices = list(
                self.v1.invoices.list(
                    params={"customer": customer, "limit": PAGE_SIZE}
                ).auto_paging_iter()
            )
            items = list(
                self.v1.invoice_items.list(
                    params={"customer": customer, "limit": PAGE_SIZE}
                ).auto_paging_iter()
            )
        except stripe.InvalidRequestError as exc:
            if exc.code != "resource_missing":
                raise
            self.missing_customers.add(customer)
            return
        for invoice in invoices:
            self.invoices[invoice.id] = invoice.to_dict()
        self.items.extend(_item(item.to_dict()) for item in items)

    @staticmethod
    def relevant(raw: Mapping[str, Any], wanted: set[str | None]) -> bool:
        """Whether the invoice is ours and has money paid, so its payments matter."""
        ours = raw["id"] in wanted or _metadata(raw).get(METADATA_INVOICE_ID) is not None
        return ours and int(raw.get("amount_paid") or 0) > 0

    def invoice(self, raw: Mapping[str, Any], *, paid_lookup: bool) -> StripeInvoice:
        intents: list[str] = []
        charges: list[str] = []
        if paid_lookup:
            for payment in self.payments(raw):
                intents += _ids([payment.get("payment_intent")])
                charges += _ids([payment.get("charge")])
        intents += _ids([raw.get("payment_intent")])
        charges += _ids([raw.get("charge")])
        refunds: dict[str, StripeRefund] = {}
        pages = [
            *(
                self.v1.refunds.list(params={"payment_intent": pi, "limit": PAGE_SIZE})
                for pi in dict.fromkeys(intents)
            ),
            *(
                self.v1.refunds.list(params={"charge": ch, "limit": PAGE_SIZE})
                for ch in dict.fromkeys(charges)
            ),
        ]
        for page in pages:
            for refund in page.auto_paging_iter():
                refunds[refund.id] = _refund(refund.to_dict())
        return StripeInvoice(
            invoice_id=str(raw["id"]),
            customer=_id(raw.get("customer")) or "",
            status=str(raw.get("status") or "draft"),
            currency=str(raw.get("currency") or ""),
            total=int(raw.get("total") or 0),
            amount_paid=int(raw.get("amount_paid") or 0),
            billing_invoice_id=_metadata(raw).get(METADATA_INVOICE_ID),
            payment_intents=tuple(dict.fromkeys(intents)),
            charges=tuple(dict.fromkeys(charges)),
            refunds=tuple(refunds.values()),
        )

    def payments(self, raw: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
        """The ``payment`` of each of the invoice's payments."""
        page = self.v1.invoice_payments.list(params={"invoice": str(raw["id"]), "limit": PAGE_SIZE})
        for payment in page.auto_paging_iter():
            yield payment.to_dict().get("payment") or {}


def _unless_missing(request: Any) -> Any:
    """``request()``, or None when Stripe answers that the object does not exist."""
    try:
        return request()
    except stripe.InvalidRequestError as exc:
        if exc.code == "resource_missing" or exc.http_status == 404:
            return None
        raise


def _item(raw: Mapping[str, Any]) -> StripeItem:
    metadata = _metadata(raw)
    parent = raw.get("parent") or {}
    details = parent.get("subscription_details") or {}
    subscription = _id(details.get("subscription")) or _id(raw.get("subscription"))
    return StripeItem(
        item_id=str(raw["id"]),
        customer=_id(raw.get("customer")) or "",
        invoice=_id(raw.get("invoice")),
        amount=int(raw.get("amount") or 0),
        currency=str(raw.get("currency") or ""),
        billing_invoice_id=metadata.get(METADATA_INVOICE_ID),
        line_no=metadata.get(METADATA_LINE_NO),
        subscription=subscription,
    )


def _refund(raw: Mapping[str, Any]) -> StripeRefund:
    return StripeRefund(
        refund_id=str(raw["id"]),
        amount=int(raw.get("amount") or 0),
        status=str(raw.get("status") or ""),
        charge=_id(raw.get("charge")),
        payment_intent=_id(raw.get("payment_intent")),
    )


def _subscription(raw: Mapping[str, Any]) -> StripeSubscription:
    """Since the 2025 API the period ends on each subscription item; before, on the
    subscription itself."""
    items = (raw.get("items") or {}).get("data") or []
    ends = [i["current_period_end"] for i in items if i.get("current_period_end")]
    end = max(ends) if ends else raw.get("current_period_end")
    return StripeSubscription(
        subscription_id=str(raw["id"]),
        status=str(raw.get("status") or ""),
        current_period_end=_time(end),
        canceled_at=_time(raw.get("canceled_at")),
    )


def _metadata(raw: Mapping[str, Any]) -> Mapping[str, str]:
    metadata = raw.get("metadata")
    return metadata if isinstance(metadata, Mapping) else {}


def _id(value: Any) -> str | None:
    """An expandable field's id, whether it came as an id or as the object."""
    if isinstance(value, Mapping):
        value = value.get("id")
    return value if isinstance(value, str) and value else None


def _ids(values: Iterable[Any]) -> list[str]:
    return [found for value in values if (found := _id(value)) is not None]


def _time(value: Any) -> datetime | None:
    return datetime.fromtimestamp(value, UTC) if isinstance(value, int) else None

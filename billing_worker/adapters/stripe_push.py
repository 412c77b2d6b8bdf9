"""One push of one invoice to Stripe, on one thread with one client: find what an earlier
attempt made, create only what is missing, finalize (see ``stripe_api`` for why each
write is safe to repeat)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from billing_worker.service.stripe_sync_requests import (
    METADATA_INVOICE_ID,
    METADATA_LINE_NO,
    PermanentStripeError,
    SyncInvoice,
    SyncLine,
    finalize_key,
    invoice_key,
    line_key,
    pending_line_key,
)

if TYPE_CHECKING:
    from stripe import Invoice, StripeClient

T = TypeVar("T")

LIST_PAGE_SIZE = 100


class InvoicePush:
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
            present = self.our_items({"invoice": existing.id})
        self.add_missing(present, f"the draft {stripe_invoice.id}", stripe_invoice.id)
        return self.finalize(stripe_invoice.id)

    def add_pending(self) -> None:
        """Add each billable line as a pending item on the subscription, unless an item of
        this invoice and line is in Stripe already (pending or invoiced, under any key)."""
        present = self.our_items({"customer": self.invoice.customer_id})
        self.add_missing(present, "Stripe", None)

    def add_missing(self, present: dict[int, int], holder: str, onto: str | None) -> None:
        """Create an item for each billable line not in ``present`` (``line_no -> amount``
        already in ``holder``), on the draft ``onto`` or, with None, pending on the
        subscription; refuse a present line with another amount, or one we don't bill."""
        for line in self.invoice.billable_lines:
            if line.line_no in present:
                if present.pop(line.line_no) != line.amount_minor:
                    raise self.fail(
                        f"create item for line {line.line_no}",
                        f"{holder} already has line {line.line_no} with another amount; "
                        "not adding it again",
                    )
                continue
            self.create_item(line, onto)
        if present:
            raise self.fail(
                "create items",
                f"{holder} has lines {sorted(present)} that this invoice does not bill; "
                "not adding or finalizing it",
            )

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

    def our_items(self, where: dict[str, str]) -> dict[int, int]:
        """``line_no -> amount`` of the items ``where`` selects (an ``invoice``, or a
        ``customer``'s) that carry this invoice's id."""
        ours = self.invoice.invoice_id

        def listed() -> dict[int, int]:
            params: Any = {**where, "limit": LIST_PAGE_SIZE}  # the SDK's TypedDict
            page = self.client.v1.invoice_items.list(params=params)
            return _our_lines(page.auto_paging_iter(), ours)

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
                    **({"automatic_tax": {"enabled": True}} if invoice.automatic_tax else {}),
                },
                options={"idempotency_key": invoice_key(invoice.invoice_id)},
            ),
        )

    def create_item(self, line: SyncLine, onto: str | None) -> None:
        """Line ``line`` as an item on the draft ``onto``, or with None pending on the
        subscription (for the usage period), each under its own idempotency key."""
        invoice = self.invoice
        where: dict[str, Any]
        if onto is not None:
            where, key = {"invoice": onto}, line_key(invoice.invoice_id, line.line_no)
        else:
            where = {
                "subscription": str(invoice.subscription_id),
                "period": {
                    "start": int(invoice.period_start.timestamp()),
                    "end": int(invoice.period_end.timestamp()),
                },
            }
            key = pending_line_key(invoice.invoice_id, line.line_no)
        params: Any = {  # the SDK's TypedDict
            "customer": invoice.customer_id,
            **where,
            "amount": line.amount_minor,
            "currency": invoice.currency,
            "description": line.description,
            "metadata": {
                METADATA_INVOICE_ID: invoice.invoice_id,
                METADATA_LINE_NO: str(line.line_no),
            },
        }
        self.call(
            f"create item for line {line.line_no}",
            lambda: self.client.v1.invoice_items.create(
                params=params, options={"idempotency_key": key}
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


def _our_lines(items: Any, invoice_id: str) -> dict[int, int]:
    """``line_no -> amount`` of the items carrying ``invoice_id`` in their metadata."""
    present: dict[int, int] = {}
    for item in items:
        metadata = _metadata(item.metadata)
        line_no = metadata.get(METADATA_LINE_NO, "")
        if metadata.get(METADATA_INVOICE_ID) == invoice_id and line_no.isdigit():
            present[int(line_no)] = present.get(int(line_no), 0) + item.amount
    return present


def _metadata(metadata: Any) -> Mapping[str, str]:
    """A Stripe object's ``metadata`` as a plain mapping (the SDK's objects are no dicts)."""
    if metadata is None:
        return {}
    if isinstance(metadata, Mapping):
        return metadata
    as_dict: dict[str, str] = metadata.to_dict()
    return as_dict

"""Documents for people: an invoice as a PDF."""

from __future__ import annotations

import asyncio
import re
from typing import Annotated

from fastapi import APIRouter, Path
from fastapi.responses import Response

from billing_worker.adapters.invoice_pdf import Seller, render_invoice_pdf
from billing_worker.adapters.postgres.invoice_document import invoice_document
from billing_worker.adapters.postgres.stripe_reads import account_stripe
from billing_worker.api.context import AccountReader, Context, owns
from billing_worker.api.problems import Problem

router = APIRouter(tags=["billing"])

InvoiceId = Annotated[str, Path(min_length=1, max_length=256)]


@router.get(
    "/v1/invoices/{invoice_id}/pdf",
    summary="An invoice as a PDF",
    response_class=Response,
    responses={200: {"content": {"application/pdf": {}}, "description": "The PDF."}},
)
async def get_invoice_pdf(invoice_id: InvoiceId, who: AccountReader, ctx: Context) -> Response:
    """The stored invoice rendered as a PDF (the same bytes for the same invoice), for a
    read key or the portal token of the invoice's account."""
    async with ctx.engine.connect() as conn:
        document = await invoice_document(conn, ctx.book, invoice_id, explain=False)
        if document is None:
            raise Problem(404, f"no invoice {invoice_id!r}")
        owns(who, document["account"])
        customer, _ = await account_stripe(conn, document["account"])
    seller = Seller.from_settings(ctx.settings)
    # rendering is CPU work of some milliseconds: off the event loop
    body = await asyncio.to_thread(render_invoice_pdf, document, seller, customer=customer)
    filename = re.sub(r"[^A-Za-z0-9._-]", "_", invoice_id)
    return Response(
        body,
        media_type="application/pdf",
        headers={"Content-Disposition": f'inline; filename="{filename}.pdf"'},
    )

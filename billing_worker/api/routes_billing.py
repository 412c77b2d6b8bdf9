"""Plans, invoices, reports, the quota check and estimates."""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any

from fastapi import APIRouter, Path, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator

from billing_worker.adapters.postgres.account_store import PostgresAccounts, PostgresUsageReader
from billing_worker.adapters.postgres.invoice_document import invoice_document
from billing_worker.adapters.postgres.reports import period_report
from billing_worker.adapters.pricebook_summary import describe_pricebook
from billing_worker.api.auth import Caller
from billing_worker.api.context import AccountReader as InvoiceReader
from billing_worker.api.context import Admin, ApiContext, Context, Reader, owns
from billing_worker.api.documents import draft_document
from billing_worker.api.problems import Problem
from billing_worker.consumers.quota_check import parse_quota_request
from billing_worker.domain.errors import PermanentError
from billing_worker.domain.periods import calendar_month_of
from billing_worker.service.invoices import InvalidTransition, InvoiceNotFound, move_invoice
from billing_worker.service.previews import estimate
from billing_worker.service.quota_check import answer_request
from schemas.quota_check import QuotaCheckReply, QuotaCheckRequest

router = APIRouter(tags=["billing"])

InvoiceId = Annotated[str, Path(min_length=1, max_length=256)]
Month = Annotated[
    str, Path(pattern=r"^(19|2\d)\d{2}-(0[1-9]|1[0-2])$", description="YYYY-MM (1900-2999)")
]
Quantity = Annotated[Decimal, Field(ge=0, max_digits=38, decimal_places=18, allow_inf_nan=False)]
MOVES = {"finalize": "open", "void": "void", "mark-uncollectible": "uncollectible"}


@router.get("/v1/plans", summary="The active price book's plans")
async def get_plans(who: Reader, ctx: Context) -> dict[str, Any]:
    """Price, currency, interval, and per meter the included quantity, limit and
    enforcement; the prices of the meters too (as ``pricebook check --json``)."""
    described = describe_pricebook(ctx.book)
    return {
        "pricebook_version": ctx.book.version,
        "default_plan": ctx.book.default_plan,
        "plans": described["plans"],
        "prices": described["prices"],
    }


@router.get("/v1/invoices/{invoice_id}", summary="An invoice, as invoice show --json")
async def get_invoice(invoice_id: InvoiceId, who: InvoiceReader, ctx: Context) -> dict[str, Any]:
    """Lines with their tiers and figures, totals, credits applied and short, status."""
    async with ctx.engine.connect() as conn:
        document = await invoice_document(conn, ctx.book, invoice_id, explain=False)
    if document is None:
        raise Problem(404, f"no invoice {invoice_id!r}")
    owns(who, document["account"])
    return document


async def _move(invoice_id: str, action: str, who: Caller, ctx: ApiContext) -> dict[str, Any]:
    """As the CLI's ``invoice finalize|void|mark-uncollectible``: a ledger entry each."""
    try:
        before, after = await move_invoice(
            ctx.unit_of_work,
            ctx.book,
            invoice_id=invoice_id,
            status=MOVES[action],
            cause=f"api:{who.name}",
            now=ctx.settings.clock(),
        )
    except InvoiceNotFound as exc:
        raise Problem(404, exc.detail) from exc
    except InvalidTransition as exc:
        raise Problem(409, exc.detail) from exc
    return {"id": invoice_id, "from": before, "to": after}


@router.post("/v1/invoices/{invoice_id}/finalize", summary="Finalize a draft invoice")
async def finalize(invoice_id: InvoiceId, who: Admin, ctx: Context) -> dict[str, Any]:
    """A draft (BILLING_INVOICE_REVIEW) becomes open: announced and pushed to Stripe."""
    return await _move(invoice_id, "finalize", who, ctx)


@router.post("/v1/invoices/{invoice_id}/void", summary="Void an invoice")
async def void(invoice_id: InvoiceId, who: Admin, ctx: Context) -> dict[str, Any]:
    """As ``invoice void``: the invoice stays, marked void, with a ledger entry."""
    return await _move(invoice_id, "void", who, ctx)


@router.post("/v1/invoices/{invoice_id}/mark-uncollectible", summary="Mark uncollectible")
async def mark_uncollectible(invoice_id: InvoiceId, who: Admin, ctx: Context) -> dict[str, Any]:
    """As ``invoice mark-uncollectible``."""
    return await _move(invoice_id, "mark-uncollectible", who, ctx)


@router.get("/v1/reports/{month}", summary="Revenue and invoices of a month")
async def get_report(month: Month, who: Reader, ctx: Context) -> dict[str, Any]:
    """As ``report --period YYYY-MM --json``."""
    start = datetime.strptime(month, "%Y-%m").replace(tzinfo=UTC)
    async with ctx.engine.connect() as conn:
        return await period_report(conn, calendar_month_of(start))


@router.post(
    "/v1/quota/check",
    summary="May the account use this much more? 429 when not",
    response_model=QuotaCheckReply,
    responses={429: {"description": "Not allowed: the same body, and Retry-After"}},
    # the AMQP request's own model and parser, from the raw body
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": QuotaCheckRequest.model_json_schema()}},
        }
    },
)
async def quota_check(raw: Request, who: Reader, ctx: Context) -> JSONResponse:
    """The AMQP quota check's answer: 200 when allowed; 429 with the same body and
    ``Retry-After`` (seconds until the period ends, when the quota starts over)."""
    now = ctx.settings.clock()
    try:
        request = parse_quota_request(await raw.body())
        if "\x00" in request.account:
            raise Problem(422, "account: NUL characters are not allowed")
        reply: QuotaCheckReply = await answer_request(
            PostgresUsageReader(ctx.engine), ctx.book, request, now
        )
    except PermanentError as exc:
        raise Problem(422, exc.detail, reason=exc.reason) from exc
    body = reply.model_dump(mode="json")
    if reply.allowed:
        return JSONResponse(body)
    wait = max(1, math.ceil((reply.period_end - now).total_seconds()))
    return JSONResponse(body, status_code=429, headers={"Retry-After": str(wait)})


class EstimateRequest(BaseModel):
    """What a period's usage would cost: on an account's plan and period, or on a plan."""

    model_config = ConfigDict(extra="forbid")

    account: Annotated[str, Field(min_length=1, max_length=256)] | None = None
    plan: Annotated[str, Field(min_length=1, max_length=128)] | None = None
    usage: dict[
        Annotated[str, Field(max_length=128)],
        Quantity | dict[Annotated[str, Field(max_length=256)], Quantity],
    ] = Field(
        max_length=256,
        description="Per meter the period's quantity; for a meter priced per dimension, "
        'the quantity per value (e.g. {"inference_tokens": {"gpt-4": "1000"}}).',
    )

    @model_validator(mode="after")
    def _one_of(self) -> EstimateRequest:
        if (self.account is None) == (self.plan is None):
            raise ValueError("give exactly one of account or plan")
        if "\x00" in (self.account or "") + (self.plan or ""):
            raise ValueError("NUL characters are not allowed")
        return self


@router.post("/v1/estimate", summary="The lines and total a usage would cost this period")
async def post_estimate(request: EstimateRequest, who: Reader, ctx: Context) -> dict[str, Any]:
    """With ``account``: its plan and current period; with ``plan``: this calendar month.
    The usage given is the whole period's; nothing is recorded."""
    now = ctx.settings.clock()
    plan, period, account = request.plan, None, "(estimate)"
    if request.account is not None:
        async with ctx.engine.connect() as conn:
            accounts = PostgresAccounts(conn)
            stored = await accounts.get(request.account)
            if stored is None:
                raise Problem(404, f"no account {request.account!r}")
            plan, account = stored.plan, request.account
            period = (await accounts.period_calendar(account)).period_of(now)
    assert plan is not None  # noqa: S101 - the model requires one of them
    try:
        draft = estimate(
            ctx.book, plan=plan, period=period, usage=request.usage, now=now, account=account
        )
    except PermanentError as exc:
        raise Problem(422, exc.detail, reason=exc.reason) from exc
    except ValueError as exc:  # rating refused a figure (beyond a bounded last tier, say)
        raise Problem(422, re.sub(r"\s+", " ", str(exc))) from exc
    return draft_document(draft)

"""``/v1/accounts/{account}``: the account, its usage, credits, ledger, payments and
invoices."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query

from billing_worker.adapters.postgres.account_store import PostgresAccounts
from billing_worker.adapters.postgres.account_summary import account_summary
from billing_worker.adapters.postgres.account_view import grants
from billing_worker.adapters.postgres.api_reads import (
    BadCursor,
    combined,
    decode_cursor,
    encode_cursor,
    invoice_page,
    ledger_page,
    payment_page,
    usage_buckets,
    usage_periods,
)
from billing_worker.api.context import AccountReader, Context
from billing_worker.api.documents import draft_document
from billing_worker.api.problems import Problem
from billing_worker.domain.pricebook import Meter
from billing_worker.service.previews import upcoming_invoice
from schemas.events import format_decimal

router = APIRouter(prefix="/v1/accounts/{account}", tags=["accounts"])

AccountId = Annotated[str, Path(min_length=1, max_length=256, description="The account id.")]
Limit = Annotated[int, Query(ge=1, le=500, description="Items per page.")]
Cursor = Annotated[
    str | None, Query(max_length=2048, description="next_cursor of the previous page.")
]
MAX_BUCKETS = 10_000
ZERO = Decimal(0)
STEPS = {"hour": timedelta(hours=1), "day": timedelta(days=1)}


async def _known(ctx: Context, account: str) -> None:
    async with ctx.engine.connect() as conn:
        if await PostgresAccounts(conn).get(account) is None:
            raise Problem(404, f"no account {account!r}")


@router.get("", summary="The account: plan, period, usage against limits, credits")
async def get_account(account: AccountId, who: AccountReader, ctx: Context) -> dict[str, Any]:
    """As ``billing-worker account show --json``."""
    async with ctx.engine.connect() as conn:
        summary = await account_summary(
            conn, ctx.book, account, now=ctx.settings.clock(), entries=15
        )
    if summary is None:
        raise Problem(404, f"no account {account!r}")
    return summary


@router.get("/usage", summary="Usage per meter over a range, in hour, day or period buckets")
async def get_usage(
    *,
    account: AccountId,
    who: AccountReader,
    ctx: Context,
    start: Annotated[datetime | None, Query(alias="from")] = None,
    end: Annotated[datetime | None, Query(alias="to")] = None,
    meter: Annotated[str | None, Query(max_length=128)] = None,
    granularity: Literal["hour", "day", "period"] = "day",
) -> dict[str, Any]:
    """``used`` per meter over ``[from, to)`` (default: the account's current period) by the
    meter's aggregation, and ``buckets``. Hour and day buckets come from the ledger, clipped
    to the range, every bucket listed; period buckets are the account's periods that
    overlap the range, each with its whole total."""
    now = ctx.settings.clock()
    async with ctx.engine.connect() as conn:
        accounts = PostgresAccounts(conn)
        if await accounts.get(account) is None:
            raise Problem(404, f"no account {account!r}")
        calendar = await accounts.period_calendar(account)
        current = calendar.period_of(now)
        start, end = start or current.start, end or current.end
        if start.tzinfo is None or end.tzinfo is None:
            raise Problem(422, "from and to need a time zone (e.g. 2026-11-01T00:00:00Z)")
        if start >= end:
            raise Problem(422, f"from ({start.isoformat()}) must be before to ({end.isoformat()})")
        meters = _meters(ctx, meter)
        if granularity == "period":
            periods = await usage_periods(conn, account, meters, start=start, end=end)
            return _document(account, start, end, granularity, [
                (m.name, combined(m.aggregation, [q for _, _, q in periods.get(m.name, [])]),
                 periods.get(m.name, []))
                for m in meters
            ])  # fmt: skip
        step = STEPS[granularity]
        if (end - start) / step > MAX_BUCKETS:
            raise Problem(422, f"at most {MAX_BUCKETS} {granularity} buckets: narrow the range")
        used, buckets = await usage_buckets(
            conn,
            account,
            meters,
            start=start,
            end=end,
            floor=calendar.period_of(start).start,
            unit=granularity,
        )
    series = []
    for m in meters:
        found = buckets.get(m.name, {})
        first = start.replace(minute=0, second=0, microsecond=0)
        if granularity == "day":
            first = first.replace(hour=0)
        rows, at = [], first
        while at < end:
            rows.append((max(at, start), min(at + step, end), found.get(at, ZERO)))
            at += step
        series.append((m.name, used.get(m.name, ZERO), rows))
    return _document(account, start, end, granularity, series)


def _meters(ctx: Context, name: str | None) -> list[Meter]:
    if name is None:
        return list(ctx.book.meters.values())
    if name not in ctx.book.meters:
        known = ", ".join(sorted(ctx.book.meters))
        raise Problem(422, f"no meter {name!r} in the price book (known: {known})")
    return [ctx.book.meters[name]]


def _document(
    account: str, start: datetime, end: datetime, granularity: str, series: list[Any]
) -> dict[str, Any]:
    return {
        "account": account,
        "from": start.isoformat(),
        "to": end.isoformat(),
        "granularity": granularity,
        "meters": [
            {
                "meter": name,
                "used": format_decimal(used),
                "buckets": [
                    {"start": s.isoformat(), "end": e.isoformat(), "quantity": format_decimal(q)}
                    for s, e, q in rows
                ],
            }
            for name, used, rows in series
        ],
    }


@router.get("/credits", summary="Credit grants with what is left, and the latest entries")
async def get_credits(account: AccountId, who: AccountReader, ctx: Context) -> dict[str, Any]:
    """Every grant (live ones first, in burn order) and the balance usable now."""
    async with ctx.engine.connect() as conn:
        summary = await account_summary(
            conn, ctx.book, account, now=ctx.settings.clock(), entries=50
        )
        if summary is None:
            raise Problem(404, f"no account {account!r}")
        rows = await grants(conn, account)
    return {
        "account": account,
        "balance": summary["credit_balance"],
        "grants": summary["grants"],
        "entries": [e for e in summary["recent_entries"] if e["ledger"] == "credits"],
        "expiring": [
            {"grant_id": g.grant_id, "remaining": format_decimal(g.remaining),
             "expires_at": g.expires_at.isoformat()}
            for g in rows if g.expires_at is not None and g.remaining > 0
        ],
    }  # fmt: skip


@router.get("/ledger", summary="Ledger entries, newest first, a page at a time")
async def get_ledger(
    account: AccountId, who: AccountReader, ctx: Context, cursor: Cursor = None, limit: Limit = 50
) -> dict[str, Any]:
    """The usage, credit and account ledgers merged newest first; ``next_cursor`` fetches
    the next page (null on the last)."""
    after = _ledger_cursor(cursor) if cursor else None
    await _known(ctx, account)
    async with ctx.engine.connect() as conn:
        entries, following = await ledger_page(conn, account, cursor=after, limit=limit)
    return {
        "entries": [
            {**e, "recorded_at": e["recorded_at"].isoformat(),
             "effective_at": e["effective_at"].isoformat()}
            for e in entries
        ],
        "next_cursor": encode_cursor(following) if following else None,
    }  # fmt: skip


def _ledger_cursor(cursor: str) -> dict[str, int]:
    try:
        after = decode_cursor(cursor)
    except BadCursor as exc:
        raise Problem(422, str(exc)) from exc
    if not isinstance(after, dict) or not all(
        key in ("usage", "credits", "account") and type(value) is int
        for key, value in after.items()
    ):
        raise Problem(422, "cursor is not one this API handed out")
    return after


@router.get("/invoices", summary="The account's invoices, newest first")
async def get_invoices(
    account: AccountId, who: AccountReader, ctx: Context, cursor: Cursor = None, limit: Limit = 50
) -> dict[str, Any]:
    """Each with its id, period, status and totals; ``next_cursor`` for the next page."""
    before = None
    if cursor:
        try:
            before = datetime.fromisoformat(str(decode_cursor(cursor)))
        except (BadCursor, ValueError) as exc:
            raise Problem(422, "cursor is not one this API handed out") from exc
        if before.tzinfo is None:
            raise Problem(422, "cursor is not one this API handed out")
    await _known(ctx, account)
    async with ctx.engine.connect() as conn:
        rows, following = await invoice_page(conn, account, before=before, limit=limit)
    return {
        "invoices": [
            {
                "id": r["invoice_id"],
                "period": {"start": r["period_start"].isoformat(),
                           "end": r["period_end"].isoformat()},
                "status": r["status"],
                "plan": r["plan"],
                "currency": r["currency"],
                "subtotal": format_decimal(r["subtotal"]),
                "credits_applied": format_decimal(r["credits_applied"]),
                "credits_shortfall": format_decimal(r["credits_shortfall"]),
                "total": format_decimal(r["total"]),
                "closed_at": r["closed_at"].isoformat(),
            }
            for r in rows
        ],
        "next_cursor": encode_cursor(following.isoformat()) if following else None,
    }  # fmt: skip


@router.get("/payments", summary="Payments and refunds Stripe reported, newest first")
async def get_payments(
    account: AccountId, who: AccountReader, ctx: Context, cursor: Cursor = None, limit: Limit = 50
) -> dict[str, Any]:
    """The payment ledger: each payment (+) or refund (-) with its Stripe object and
    details (what it paid for, its payment intent, credits a refund took back);
    ``next_cursor`` for the next page."""
    before = None
    if cursor:
        try:
            before = decode_cursor(cursor)
        except BadCursor as exc:
            raise Problem(422, str(exc)) from exc
        if type(before) is not int or before < 1:
            raise Problem(422, "cursor is not one this API handed out")
    await _known(ctx, account)
    async with ctx.engine.connect() as conn:
        payments, following = await payment_page(conn, account, before=before, limit=limit)
    return {
        "account": account,
        "payments": payments,
        "next_cursor": encode_cursor(following) if following else None,
    }


@router.get("/invoices/upcoming", summary="The open period's invoice as it would close now")
async def get_upcoming(account: AccountId, who: AccountReader, ctx: Context) -> dict[str, Any]:
    """Built by the close's own code from what is recorded; nothing is stored."""
    draft = await upcoming_invoice(
        ctx.unit_of_work, ctx.book, account=account, now=ctx.settings.clock()
    )
    if draft is None:
        raise Problem(404, f"no account {account!r}")
    return draft_document(draft)

"""The CLI's writes over HTTP: plan changes, credit grants, and portal tokens."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any

from fastapi import APIRouter, Path
from pydantic import BaseModel, ConfigDict, Field

from billing_worker.api.auth import portal_token
from billing_worker.api.context import Context, Writer
from billing_worker.api.problems import Problem
from billing_worker.domain.errors import PermanentError
from billing_worker.domain.pricebook import CreditSource
from billing_worker.service.accounts import change_plan, grant_credits
from schemas.events import format_decimal

router = APIRouter(prefix="/v1/accounts/{account}", tags=["changes"])

AccountId = Annotated[str, Path(min_length=1, max_length=256)]
PORTAL_TOKEN_SECONDS = 3600
MAX_PORTAL_TOKEN_SECONDS = 86_400


class PlanChange(BaseModel):
    """Move the account to ``plan`` from now on (as ``account set-plan``)."""

    model_config = ConfigDict(extra="forbid")

    plan: Annotated[str, Field(min_length=1, max_length=128)]
    status: Annotated[str, Field(min_length=1, max_length=32)] = "active"


@router.put("/plan", summary="Move the account to a plan from now on")
async def put_plan(
    account: AccountId, body: PlanChange, who: Writer, ctx: Context
) -> dict[str, Any]:
    """A ``plan_changed`` ledger entry and ``subscription.changed``, as from the CLI; the
    new limits apply to the rest of the period. Setting the plan it is on is a no-op."""
    now = ctx.settings.clock()
    try:
        change = await change_plan(
            ctx.unit_of_work,
            ctx.book,
            account=account,
            plan=body.plan,
            status=body.status,
            cause=f"api:{who.name}",
            change_id=f"api:{uuid.uuid4()}",
            now=now,
        )
    except PermanentError as exc:
        raise Problem(422, exc.detail, reason=exc.reason) from exc
    return {
        "account": change.account,
        "plan": change.plan,
        "status": change.status,
        "previous_plan": change.previous_plan,
        "changed": change.changed,
        "effective_at": now.isoformat(),
        "quota_events": change.quota_events,
    }


class CreditGrant(BaseModel):
    """Promotional credits (as ``credits grant``)."""

    model_config = ConfigDict(extra="forbid")

    amount: Annotated[Decimal, Field(gt=0, max_digits=38, decimal_places=18, allow_inf_nan=False)]
    expires_at: datetime | None = None
    note: Annotated[str, Field(max_length=1000)] = ""
    key: Annotated[str, Field(min_length=1, max_length=256)] | None = Field(
        default=None, description="Idempotency key: the same key grants once."
    )
    priority: Annotated[int, Field(ge=0, le=1000)] | None = None


@router.post("/credits", status_code=201, summary="Grant promotional credits")
async def post_credits(
    account: AccountId, body: CreditGrant, who: Writer, ctx: Context
) -> dict[str, Any]:
    """A grant and its ledger entry; with ``key``, a retry grants nothing more (``granted``
    false)."""
    if body.expires_at is not None and body.expires_at.tzinfo is None:
        raise Problem(422, "expires_at needs a time zone (e.g. 2027-01-01T00:00:00Z)")
    try:
        grant_id = await grant_credits(
            ctx.unit_of_work,
            ctx.book,
            account=account,
            amount=body.amount,
            source=CreditSource.PROMOTIONAL,
            key=body.key or f"api:{uuid.uuid4()}",
            note=body.note,
            now=ctx.settings.clock(),
            expires_at=body.expires_at,
            priority=body.priority,
        )
    except PermanentError as exc:
        raise Problem(422, exc.detail, reason=exc.reason) from exc
    return {
        "account": account,
        "granted": grant_id is not None,
        "grant_id": grant_id,
        "amount": format_decimal(body.amount),
    }


class PortalTokenRequest(BaseModel):
    """How long the token should read the account."""

    model_config = ConfigDict(extra="forbid")

    ttl_seconds: Annotated[int, Field(ge=60, le=MAX_PORTAL_TOKEN_SECONDS)] = PORTAL_TOKEN_SECONDS


@router.post("/portal-tokens", status_code=201, summary="A token that reads this account only")
async def post_portal_token(
    account: AccountId, who: Writer, ctx: Context, body: PortalTokenRequest | None = None
) -> dict[str, Any]:
    """For a product backend to hand its logged-in customer: it reads this account's GET
    endpoints until ``expires_at`` (default an hour), and nothing else."""
    secret = ctx.settings.api_token_secret
    if secret is None:
        raise Problem(503, "portal tokens are off: set BILLING_API_TOKEN_SECRET")
    ttl = (body or PortalTokenRequest()).ttl_seconds
    expires_at = (ctx.settings.clock() + timedelta(seconds=ttl)).replace(microsecond=0)
    return {
        "token": portal_token(secret.get_secret_value(), account, expires_at),
        "expires_at": expires_at.isoformat(),
    }

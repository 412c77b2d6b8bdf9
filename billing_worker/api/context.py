"""What every route needs (settings, price book, database, broker, key check) and the
authentication dependencies that gate each route."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Header, Request
from sqlalchemy.ext.asyncio import AsyncEngine

from billing_worker.adapters.postgres.unit_of_work import PostgresUnitOfWork
from billing_worker.api.auth import PORTAL_PREFIX, Caller, KeyCheck, bearer, portal_caller
from billing_worker.api.problems import Problem
from billing_worker.client.publisher import UsagePublisher
from billing_worker.config import Settings
from billing_worker.domain.pricebook import PriceBook


@dataclass
class ApiContext:
    """One API process's resources, made at start-up and closed at shutdown."""

    settings: Settings
    book: PriceBook
    engine: AsyncEngine
    keys: KeyCheck
    publisher: UsagePublisher | None = None
    notes: dict[str, str] = field(default_factory=dict)

    def unit_of_work(self) -> PostgresUnitOfWork:
        """A transaction on the API's pool."""
        return PostgresUnitOfWork(self.engine)


def context(request: Request) -> ApiContext:
    """The process's context."""
    ctx: ApiContext = request.app.state.ctx
    return ctx


Context = Annotated[ApiContext, Depends(context)]


def caller(need: str, *, portal: bool = False) -> Callable[..., Awaitable[Caller]]:
    """A dependency admitting keys whose scope covers ``need``, and with ``portal`` the
    portal token of the account the path names (any other account: 404)."""

    async def admit(
        request: Request,
        ctx: Context,
        authorization: Annotated[str | None, Header()] = None,
    ) -> Caller:
        credential = bearer(authorization)
        if credential.startswith(PORTAL_PREFIX):
            secret = ctx.settings.api_token_secret
            who = portal_caller(
                secret.get_secret_value() if secret else None, credential, ctx.settings.clock()
            )
            if not portal:
                raise Problem(403, "a portal token reads its own account's GET endpoints only")
            named = request.path_params.get("account")
            if named is not None and named != who.account:
                raise Problem(404, f"no account {named!r}")
            return who
        who_key = await ctx.keys.caller(credential)
        if who_key is None:
            raise Problem(401, "unknown or revoked API key", headers={"WWW-Authenticate": "Bearer"})
        if not who_key.may(need):
            raise Problem(403, f"key {who_key.name!r} has scope {who_key.scope}; this needs {need}")
        return who_key

    return admit


Reader = Annotated[Caller, Depends(caller("read"))]
AccountReader = Annotated[Caller, Depends(caller("read", portal=True))]
Ingester = Annotated[Caller, Depends(caller("ingest"))]
Writer = Annotated[Caller, Depends(caller("write"))]
Admin = Annotated[Caller, Depends(caller("admin"))]


def owns(who: Caller, account: str) -> None:
    """A portal token sees its own account's things only: another's is not found."""
    if who.account is not None and who.account != account:
        raise Problem(404, "not found")

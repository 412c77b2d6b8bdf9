"""The customer page (``GET /portal``, its script and styles) and ``GET /v1/portal/me``."""

from __future__ import annotations

import base64
import binascii
import re
from datetime import UTC, datetime
from functools import cache
from importlib import resources
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Header, Request, Response
from pydantic import ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from billing_worker.adapters.postgres.account_store import PostgresAccounts
from billing_worker.api.auth import PORTAL_PREFIX, Caller, portal_caller
from billing_worker.api.context import Context, caller
from billing_worker.api.problems import Problem
from billing_worker.config import ENV_PREFIX, ConfigError

router = APIRouter(tags=["portal"])

STATIC = {
    "portal.js": "text/javascript; charset=utf-8",
    "portal.css": "text/css; charset=utf-8",
}
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# A source of frame-ancestors: 'self', 'none', or a scheme-and-host origin (wildcard
# subdomain allowed); nothing that could end the directive or start another.
FRAME_SOURCE = re.compile(r"'self'|'none'|https?://(\*\.)?[A-Za-z0-9.-]+(:\d{1,5})?")


class PortalSettings(BaseSettings):
    """The page's own knob, read from ``BILLING_PORTAL_*`` beside the worker's settings."""

    model_config = SettingsConfigDict(
        env_prefix=f"{ENV_PREFIX}PORTAL_", extra="ignore", frozen=True
    )

    frame_ancestors: str = "'none'"
    """Who may show the page in a frame: the CSP ``frame-ancestors`` sources, space
    separated (e.g. ``https://app.example.com``); ``'none'`` (the default) forbids it."""

    @field_validator("frame_ancestors")
    @classmethod
    def _sources(cls, value: str) -> str:
        sources = value.split()
        if not sources:
            return "'none'"
        for source in sources:
            if not FRAME_SOURCE.fullmatch(source):
                raise ValueError(f"not a frame-ancestors source: {source!r}")
        if "'none'" in sources and len(sources) > 1:
            raise ValueError("'none' can't be combined with other sources")
        return " ".join(sources)


def load_portal_settings() -> PortalSettings:
    """Read ``BILLING_PORTAL_*`` (at start); ``ConfigError`` naming the variable if wrong."""
    try:
        return PortalSettings()
    except ValidationError as exc:
        problem = exc.errors(include_url=False)[0]["msg"].removeprefix("Value error, ")
        raise ConfigError(f"{ENV_PREFIX}PORTAL_FRAME_ANCESTORS: {problem}") from exc


def portal_settings(request: Request) -> PortalSettings:
    """The page settings the app was made with."""
    settings: PortalSettings = request.app.state.portal_settings
    return settings


def page_policy(settings: PortalSettings) -> dict[str, str]:
    """The headers every file of the page is served with: scripts, styles and API calls
    from this origin only, no inline code, no plugins, no referrer."""
    csp = "; ".join(
        (
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
            "img-src 'self' data:",
            "connect-src 'self'",
            "base-uri 'none'",
            "form-action 'none'",
            f"frame-ancestors {settings.frame_ancestors}",
        )
    )
    return {
        "Content-Security-Policy": csp,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-cache",
    }


@cache
def portal_file(name: str) -> bytes:
    """A file of the page, as shipped in the package."""
    return (resources.files("billing_worker.api") / "portal" / name).read_bytes()


Policy = Annotated[PortalSettings, Depends(portal_settings)]


@router.get("/portal", include_in_schema=False)
async def get_portal(settings: Policy) -> Response:
    """The page: a shell its script fills from the API with the token in the fragment."""
    return Response(
        portal_file("index.html"),
        media_type="text/html; charset=utf-8",
        headers=page_policy(settings),
    )


@router.get("/portal/{name}", include_in_schema=False)
async def get_portal_asset(name: str, settings: Policy) -> Response:
    """The page's script and styles."""
    if name not in STATIC:
        raise Problem(404, f"no portal file {name!r}")
    return Response(portal_file(name), media_type=STATIC[name], headers=page_policy(settings))


_admit = caller("read", portal=True)


def token_problem(secret: str | None, token: str, now: datetime) -> str:
    """Why a portal token was refused, for programs: ``token_expired`` when it is genuine
    but past its time, else ``token_invalid`` (``portal_tokens_off`` without a secret)."""
    if secret is None:
        return "portal_tokens_off"
    try:
        portal_caller(secret, token, EPOCH)  # signature and shape, whatever the time
    except Problem:
        return "token_invalid"
    try:
        portal_caller(secret, token, now)
    except Problem:
        return "token_expired"
    return "token_invalid"


async def token_holder(
    request: Request, ctx: Context, authorization: Annotated[str | None, Header()] = None
) -> Caller:
    """As every account read admits callers, with a ``reason`` on a refused portal token
    (so the page can tell an expired link from a wrong one)."""
    try:
        return await _admit(request, ctx, authorization)
    except Problem as exc:
        token = (authorization or "").partition(" ")[2].strip()
        if exc.status == 401 and token.startswith(PORTAL_PREFIX):
            secret = ctx.settings.api_token_secret
            exc.extra.setdefault(
                "reason",
                token_problem(
                    secret.get_secret_value() if secret else None, token, ctx.settings.clock()
                ),
            )
        raise


def _expiry(token: str) -> datetime:
    """The expiry a (verified) portal token carries."""
    payload = token.removeprefix(PORTAL_PREFIX).partition(".")[0]
    try:
        claims = orjson.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return datetime.fromtimestamp(int(claims["exp"]), UTC)
    except (binascii.Error, orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        raise Problem(401, "portal token is not valid (unreadable)") from None


@router.get("/v1/portal/me", summary="The account a portal token reads, and until when")
async def get_portal_me(
    who: Annotated[Caller, Depends(token_holder)],
    ctx: Context,
    authorization: Annotated[str | None, Header()] = None,
) -> dict[str, Any]:
    """For the customer page, which holds only the token: ``{"account", "expires_at",
    "now"}`` (``now`` the API's clock). A refused token's 401 carries ``reason``
    (``token_expired``, ``token_invalid``); an API key has no account (403)."""
    if who.account is None:
        raise Problem(403, "GET /v1/portal/me answers portal tokens; an API key has no account")
    async with ctx.engine.connect() as conn:
        if await PostgresAccounts(conn).get(who.account) is None:
            raise Problem(404, f"no account {who.account!r}")
    token = (authorization or "").partition(" ")[2].strip()
    return {
        "account": who.account,
        "expires_at": _expiry(token).isoformat(),
        "now": ctx.settings.clock().replace(microsecond=0).isoformat(),
    }

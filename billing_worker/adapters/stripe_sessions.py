"""Make Stripe Checkout and customer-portal sessions with the official SDK, each call with
an idempotency key, Stripe's refusals told apart from its outages."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import stripe

from billing_worker.adapters.stripe_client import stripe_client

KEY_PREFIX = "billing-worker"


class StripeSessionError(Exception):
    """Stripe did not make the session. ``refused``: Stripe said no to the request (an
    unknown price or customer); otherwise it could not be reached or failed."""

    def __init__(self, detail: str, *, refused: bool) -> None:
        super().__init__(detail)
        self.detail, self.refused = detail, refused


@dataclass(frozen=True, slots=True)
class Session:
    """A session Stripe made: its id and the URL to send the customer to."""

    session_id: str
    url: str


class StripeSessions:
    """Checkout and portal sessions on one Stripe account."""

    def __init__(self, api_key: str, *, api_base: str | None = None, timeout: float = 20.0) -> None:
        self._api_key, self._api_base, self._timeout = api_key, api_base, timeout

    async def checkout(self, params: dict[str, Any], *, key: str) -> Session:
        """A Checkout Session with ``params``; ``key`` makes a retried request the same one."""
        return await asyncio.to_thread(self._create, "checkout", params, key)

    async def portal(self, customer: str, return_url: str, *, key: str) -> Session:
        """A customer-portal session for ``customer``."""
        params = {"customer": customer, "return_url": return_url}
        return await asyncio.to_thread(self._create, "portal", params, key)

    def _create(self, kind: str, params: Any, key: str) -> Session:
        # params: plain dicts built in service/stripe_sessions.py (the SDK's TypedDicts)
        options: Any = {"idempotency_key": f"{KEY_PREFIX}:{kind}:{key}"}
        try:
            with stripe_client(self._api_key, self._api_base, self._timeout) as client:
                if kind == "checkout":
                    made: Any = client.v1.checkout.sessions.create(params=params, options=options)
                else:
                    made = client.v1.billing_portal.sessions.create(params=params, options=options)
        except stripe.StripeError as exc:
            message = (exc.user_message or "(no message)").replace(self._api_key, "[redacted]")
            refused = isinstance(exc, stripe.InvalidRequestError | stripe.CardError)
            status = f"HTTP {exc.http_status}" if exc.http_status else "no HTTP answer"
            raise StripeSessionError(
                f"Stripe {kind} session: {type(exc).__name__} ({status}): {message}",
                refused=refused,
            ) from None
        return Session(str(made.id), str(made.url))

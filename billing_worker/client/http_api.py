"""A small typed client of billing-worker's HTTP API (httpx), for product backends.

    async with BillingApi("http://billing:8000", key="bwk_...") as api:
        reply = await api.quota_check("acct_42", "tokens", 2000)
        if not reply.allowed: ...

Every method returns the API's JSON document (or, for the quota check, the contract's
:class:`~schemas.quota_check.QuotaCheckReply`); an error answer raises :class:`ApiError`
carrying its problem document. Imports only httpx and :mod:`schemas`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from types import TracebackType
from typing import Any, Self

import httpx

from schemas.quota_check import QuotaCheckReply


class ApiError(Exception):
    """The API answered with an error: ``status`` and its problem document."""

    def __init__(self, status: int, problem: Mapping[str, Any]) -> None:
        super().__init__(f"{status}: {problem.get('detail', problem)}")
        self.status = status
        self.problem = dict(problem)


class BillingApi:
    """One base URL and one credential (an API key or a portal token)."""

    def __init__(
        self,
        base_url: str,
        *,
        key: str,
        timeout: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._client = httpx.AsyncClient(
            base_url=base_url,
            headers={"Authorization": f"Bearer {key}"},
            timeout=timeout,
            transport=transport,
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the connections."""
        await self._client.aclose()

    async def _call(self, method: str, path: str, **kw: Any) -> Any:
        response = await self._client.request(method, path, **kw)
        if response.status_code >= 400:
            try:
                problem = response.json()
            except ValueError:
                problem = {"detail": response.text}
            raise ApiError(response.status_code, problem)
        return response.json()

    async def account(self, account: str) -> dict[str, Any]:
        """Plan, period, usage against limits, credits (``GET /v1/accounts/{a}``)."""
        result: dict[str, Any] = await self._call("GET", f"/v1/accounts/{account}")
        return result

    async def usage(
        self,
        account: str,
        *,
        start: datetime | None = None,
        end: datetime | None = None,
        meter: str | None = None,
        granularity: str = "day",
    ) -> dict[str, Any]:
        """Usage per meter with its buckets (``GET .../usage``)."""
        params: dict[str, str] = {"granularity": granularity}
        if start is not None:
            params["from"] = start.isoformat()
        if end is not None:
            params["to"] = end.isoformat()
        if meter is not None:
            params["meter"] = meter
        result: dict[str, Any] = await self._call(
            "GET", f"/v1/accounts/{account}/usage", params=params
        )
        return result

    async def invoices(self, account: str, *, page: int = 50) -> AsyncIterator[dict[str, Any]]:
        """Every invoice of the account, newest first, fetched a page at a time."""
        cursor: str | None = None
        while True:
            params: dict[str, Any] = {"limit": page, **({"cursor": cursor} if cursor else {})}
            body = await self._call("GET", f"/v1/accounts/{account}/invoices", params=params)
            for invoice in body["invoices"]:
                yield invoice
            cursor = body["next_cursor"]
            if cursor is None:
                return

    async def payments(self, account: str, *, page: int = 50) -> AsyncIterator[dict[str, Any]]:
        """Every payment and refund of the account, newest first, a page at a time."""
        cursor: str | None = None
        while True:
            params: dict[str, Any] = {"limit": page, **({"cursor": cursor} if cursor else {})}
            body = await self._call("GET", f"/v1/accounts/{account}/payments", params=params)
            for payment in body["payments"]:
                yield payment
            cursor = body["next_cursor"]
            if cursor is None:
                return

    async def invoice(self, invoice_id: str) -> dict[str, Any]:
        """One invoice, as ``invoice show --json``."""
        result: dict[str, Any] = await self._call("GET", f"/v1/invoices/{invoice_id}")
        return result

    async def upcoming_invoice(self, account: str) -> dict[str, Any]:
        """The open period's invoice as it would close now."""
        result: dict[str, Any] = await self._call(
            "GET", f"/v1/accounts/{account}/invoices/upcoming"
        )
        return result

    async def quota_check(
        self, account: str, meter: str, quantity: Decimal | int | str = 0
    ) -> QuotaCheckReply:
        """May ``account`` use ``quantity`` more of ``meter``? A refusal is an answer
        (``allowed`` false), not an error."""
        response = await self._client.post(
            "/v1/quota/check",
            json={"account": account, "meter": meter, "quantity": str(quantity)},
        )
        if response.status_code not in (200, 429):
            raise ApiError(response.status_code, response.json())
        return QuotaCheckReply.model_validate_json(response.content)

    async def estimate(
        self,
        usage: Mapping[str, Decimal | int | str | Mapping[str, Decimal | int | str]],
        *,
        plan: str | None = None,
        account: str | None = None,
    ) -> dict[str, Any]:
        """What ``usage`` would cost this period, on ``plan`` or ``account``'s plan."""
        body = {
            "usage": {
                meter: (
                    {value: str(q) for value, q in figure.items()}
                    if isinstance(figure, Mapping)
                    else str(figure)
                )
                for meter, figure in usage.items()
            },
            **({"plan": plan} if plan is not None else {}),
            **({"account": account} if account is not None else {}),
        }
        result: dict[str, Any] = await self._call("POST", "/v1/estimate", json=body)
        return result

    async def send_events(self, events: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Usage CloudEvents through ``POST /v1/events``; one result per event, in order.
        Raises :class:`ApiError` (503 carries ``results``) when the broker did not take
        them all: send the same events again, they are counted once."""
        body = await self._call("POST", "/v1/events", json=list(events))
        results: list[dict[str, Any]] = body["results"]
        return results

    async def event(self, source: str, event_id: str) -> dict[str, Any]:
        """What became of one event: ``recorded`` or ``rejected`` (404 if neither)."""
        result: dict[str, Any] = await self._call("GET", f"/v1/events/{source}/{event_id}")
        return result

    async def set_plan(self, account: str, plan: str) -> dict[str, Any]:
        """Move the account to ``plan`` from now on."""
        result: dict[str, Any] = await self._call(
            "PUT", f"/v1/accounts/{account}/plan", json={"plan": plan}
        )
        return result

    async def grant_credits(
        self, account: str, amount: Decimal | int | str, *, key: str | None = None, note: str = ""
    ) -> dict[str, Any]:
        """Promotional credits; ``key`` makes a retry grant once."""
        body = {"amount": str(amount), "note": note, **({"key": key} if key else {})}
        result: dict[str, Any] = await self._call(
            "POST", f"/v1/accounts/{account}/credits", json=body
        )
        return result

    async def portal_token(self, account: str, *, ttl_seconds: int = 3600) -> dict[str, Any]:
        """A token for ``account``'s customer: it reads that account only, until it expires."""
        result: dict[str, Any] = await self._call(
            "POST", f"/v1/accounts/{account}/portal-tokens", json={"ttl_seconds": ttl_seconds}
        )
        return result

    async def checkout_session(
        self,
        account: str,
        *,
        success_url: str,
        cancel_url: str,
        plan: str | None = None,
        price_id: str | None = None,
        quantity: int = 1,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        """A Stripe Checkout Session selling ``plan`` or ``price_id`` to ``account``:
        ``{"id", "url", "mode"}``; send the customer to ``url``."""
        body: dict[str, Any] = {"success_url": success_url, "cancel_url": cancel_url}
        body |= {"plan": plan} if plan is not None else {"price_id": price_id}
        if quantity != 1:
            body["quantity"] = quantity
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        result: dict[str, Any] = await self._call(
            "POST", f"/v1/accounts/{account}/checkout-sessions", json=body, headers=headers
        )
        return result

    async def portal_session(self, account: str, *, return_url: str) -> dict[str, Any]:
        """Stripe's customer portal for ``account``'s customer: ``{"url"}``."""
        result: dict[str, Any] = await self._call(
            "POST", f"/v1/accounts/{account}/portal-sessions", json={"return_url": return_url}
        )
        return result

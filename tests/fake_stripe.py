"""A small threaded fake of the Stripe API, enough for the official SDK to push invoices
and to read them back for reconciling.

Routes: ``POST /v1/invoices``, ``GET /v1/invoices`` (``customer`` filter, pagination),
``GET /v1/invoices/{id}``, ``POST /v1/invoiceitems`` (on a draft ``invoice``, or pending on
a ``subscription`` when no invoice is given), ``GET /v1/invoiceitems``
(``invoice``/``customer``/``pending`` filters, pagination), ``POST
/v1/invoices/{id}/finalize``, ``GET /v1/invoice_payments`` (``invoice`` filter), ``GET
/v1/refunds`` (``payment_intent``/``charge`` filters), ``GET /v1/subscriptions/{id}``, and
``POST /v1/checkout/sessions`` / ``POST /v1/billing_portal/sessions`` (made in
``tests/fake_stripe_sessions.py``; Checkout sells only the ids in ``prices``).
Bodies are form-encoded as the SDK sends them (``metadata[billing_invoice_id]=...``);
answers are JSON shaped like Stripe's objects of the 2026 API (an item's subscription under
``parent.subscription_details``, and also at the top as before 2025; an invoice's payments
as ``invoice_payment`` objects; a subscription's period on its items) and errors
(``{"error": {"type", "code", "message", "param"}}``); an unknown id is a 404
``resource_missing``.

``Idempotency-Key`` is honoured as Stripe documents it for API v1:
  * the status and body of the first request with a key are saved once the endpoint has
    begun executing, *including a 500*, and replayed for the same key (with an
    ``Idempotent-Replayed: true`` header);
  * the same key with another route or other parameters is a 400 ``idempotency_error``;
  * the same key while the first request is still executing is a 409 (not saved);
  * requests refused before executing (authentication, validation such as an unknown
    customer, injected "before" faults) save nothing.
``forget_idempotency_keys()`` plays the 24 hours after which Stripe prunes keys.

Knobs: ``fail(route, ...)`` fails the next requests of a route with a status or a dropped
connection, before performing them or after (the work is done but the answer is lost);
``hold(route)`` parks the next request of a route, after its key is registered, until
released; unknown customers are a 400 ``resource_missing``; a wrong API key is a 401 (its
message shows the key masked like Stripe does, or whole with ``echo_api_key_in_errors``).
Every request is recorded (method, path, route, idempotency key, parsed params, answer),
and ``open_connections`` counts the client connections still open (keep-alive).

What happens in Stripe outside the code under test: ``add_subscription`` and
``cancel_subscription`` (or a subscription registered in ``subscriptions``);
``invoice_subscription`` (a renewal: an invoice of the fee that takes the subscription's
pending items); ``pay_invoice`` (a payment intent and its charge, attached as the invoice's
payment), ``refund_invoice``, ``void_invoice``, ``mark_uncollectible``; ``seed_invoice``,
``seed_item`` and ``seed_pending_item`` (objects made by hand); ``set_item_amount`` and
``delete_item`` (an item edited or removed).
"""

from __future__ import annotations

import itertools
import json
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Literal
from urllib.parse import parse_qsl, urlsplit

from tests.clock import unix_now
from tests.fake_stripe_sessions import create_checkout_session, create_portal_session

DEFAULT_API_KEY = "sk_test_fake_0123456789abcdef"

ROUTES: tuple[tuple[str, str, re.Pattern[str]], ...] = (
    ("POST", "POST /v1/invoices", re.compile(r"^/v1/invoices$")),
    ("GET", "GET /v1/invoices", re.compile(r"^/v1/invoices$")),
    ("POST", "POST /v1/invoiceitems", re.compile(r"^/v1/invoiceitems$")),
    ("GET", "GET /v1/invoiceitems", re.compile(r"^/v1/invoiceitems$")),
    ("POST", "POST /v1/invoices/{id}/finalize", re.compile(r"^/v1/invoices/([^/]+)/finalize$")),
    ("GET", "GET /v1/invoices/{id}", re.compile(r"^/v1/invoices/([^/]+)$")),
    ("GET", "GET /v1/invoice_payments", re.compile(r"^/v1/invoice_payments$")),
    ("GET", "GET /v1/refunds", re.compile(r"^/v1/refunds$")),
    ("GET", "GET /v1/subscriptions/{id}", re.compile(r"^/v1/subscriptions/([^/]+)$")),
    ("POST", "POST /v1/checkout/sessions", re.compile(r"^/v1/checkout/sessions$")),
    ("POST", "POST /v1/billing_portal/sessions", re.compile(r"^/v1/billing_portal/sessions$")),
)


@dataclass
class RecordedRequest:
    """One request as the fake saw it, and what it answered (``None``: dropped)."""

    method: str
    path: str
    route: str
    idempotency_key: str | None
    params: dict[str, Any]
    status: int | None = None
    replayed: bool = False


@dataclass
class _Fault:
    route: str
    skip: int
    remaining: int
    when: Literal["before", "after"]
    status: int | None  # None: drop the connection


@dataclass
class _Saved:
    route: str
    form: tuple[tuple[str, str], ...]
    status: int
    body: dict[str, Any]


@dataclass(frozen=True)
class _Call:
    route: str
    match: re.Match[str] | None
    headers: Mapping[str, str]
    form: tuple[tuple[str, str], ...]
    key: str | None

    @property
    def sorted_form(self) -> tuple[tuple[str, str], ...]:
        return tuple(sorted(self.form))


@dataclass
class _Answer:
    status: int | None  # None: drop the connection
    body: dict[str, Any] = field(default_factory=dict)
    replayed: bool = False


class FakeStripe:
    """Start with ``with FakeStripe(customers={"cus_1"}) as fake:``; point the SDK at
    ``fake.base_url`` with ``fake.api_key``."""

    def __init__(
        self, *, api_key: str = DEFAULT_API_KEY, customers: frozenset[str] | set[str] = frozenset()
    ) -> None:
        self.api_key = api_key
        self.customers: set[str] = set(customers)
        self.subscriptions: dict[str, str] = {}
        """Subscription id -> its customer: what pending invoice items may be put on."""
        self.prices: set[str] = set()
        """Price ids Checkout Sessions may sell."""
        self.checkout_sessions: list[dict[str, Any]] = []
        """Every Checkout Session made, oldest first."""
        self.echo_api_key_in_errors = False
        self.requests: list[RecordedRequest] = []
        self._invoices: dict[str, dict[str, Any]] = {}
        self._items: dict[str, dict[str, Any]] = {}
        self._subscriptions: dict[str, dict[str, Any]] = {}
        self._payments: dict[str, dict[str, Any]] = {}
        self._refunds: dict[str, dict[str, Any]] = {}
        self._saved: dict[str, _Saved] = {}
        self._in_flight: set[str] = set()
        self._faults: list[_Fault] = []
        self._holds: dict[str, threading.Event] = {}
        self._lock = threading.RLock()
        self._ids = itertools.count(1)
        self._request_ids = itertools.count(1)
        self._connections = 0
        self._clock = itertools.count(unix_now())
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle ----------------------------------------------------------------------

    def __enter__(self) -> FakeStripe:
        fake = self

        class Handler(_Handler):
            owner = fake

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.02}, name="fake-stripe"
        )
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with self._lock:
            holds = list(self._holds.values())
        for event in holds:
            event.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._server = self._thread = None

    @property
    def base_url(self) -> str:
        if self._server is None:
            raise RuntimeError("FakeStripe is not started")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    # --- knobs --------------------------------------------------------------------------

    def fail(
        self,
        route: str,
        *,
        times: int = 1,
        skip: int = 0,
        when: Literal["before", "after"] = "before",
        status: int | None = 500,
    ) -> None:
        """Fail the next ``times`` requests of ``route`` with ``status`` (``None``: drop the
        connection), ``before`` performing them or ``after`` (done, answer lost; a 500
        after executing is saved under the key, as Stripe does). The first ``skip``
        requests of the route that reach that point pass untouched."""
        _check_route(route)
        with self._lock:
            self._faults.append(_Fault(route, skip, times, when, status))

    def hold(self, route: str) -> threading.Event:
        """Park the next request of ``route`` (once its key is in flight) until the
        returned event is set."""
        _check_route(route)
        event = threading.Event()
        with self._lock:
            self._holds[route] = event
        return event

    def forget_idempotency_keys(self) -> None:
        """What Stripe does to keys at least 24 hours old."""
        with self._lock:
            self._saved.clear()

    def seed_invoice(
        self, customer: str, *, metadata: Mapping[str, str] | None = None, status: str = "draft"
    ) -> str:
        """An invoice made outside the code under test (by hand, by an older version)."""
        with self._lock:
            invoice = self._new_invoice(
                {"customer": customer, "currency": "usd", "metadata": dict(metadata or {})}
            )
            invoice["status"] = status
            return str(invoice["id"])

    def seed_item(
        self, invoice_id: str, amount: int, *, metadata: Mapping[str, str] | None = None
    ) -> str:
        """An invoice item put on ``invoice_id`` outside the code under test."""
        with self._lock:
            invoice = self._invoices[invoice_id]
            item = self._new_item(
                {
                    "customer": invoice["customer"],
                    "invoice": invoice_id,
                    "amount": str(amount),
                    "currency": invoice["currency"],
                    "metadata": dict(metadata or {}),
                }
            )
            return str(item["id"])

    def invoice_subscription(self, subscription: str, *, fee: int = 0) -> str:
        """What Stripe does at a subscription's renewal: an invoice of the subscription's
        ``fee`` plus every item pending on it, finalized; returns the invoice id."""
        with self._lock:
            customer = self.subscriptions[subscription]
            invoice = self._new_invoice({"customer": customer, "currency": "usd"})
            invoice["subscription"] = subscription
            invoice["billing_reason"] = "subscription_cycle"
            invoice["subscription_fee"] = fee
            for item in self._items.values():
                if item["invoice"] is None and item.get("subscription") == subscription:
                    item["invoice"] = invoice["id"]
            invoice["status"] = "open" if self._total(invoice["id"]) + fee > 0 else "paid"
            invoice["status_transitions"]["finalized_at"] = next(self._clock)
            return str(invoice["id"])

    def seed_pending_item(
        self,
        customer: str,
        amount: int,
        *,
        subscription: str | None = None,
        metadata: Mapping[str, str] | None = None,
        currency: str = "usd",
    ) -> str:
        """A pending invoice item (on ``subscription``, or the customer's) made outside the
        code under test."""
        with self._lock:
            item = self._new_item(
                {
                    "customer": customer,
                    "amount": str(amount),
                    "currency": currency,
                    "subscription": subscription,
                    "metadata": dict(metadata or {}),
                }
            )
            return str(item["id"])

    def set_item_amount(self, item_id: str, amount: int) -> None:
        """Someone edited the item's amount (in Stripe, while its invoice was a draft)."""
        with self._lock:
            self._items[item_id]["amount"] = amount

    def delete_item(self, item_id: str) -> None:
        """Someone deleted the item (pending, or on a draft)."""
        with self._lock:
            del self._items[item_id]

    def add_subscription(
        self,
        subscription_id: str,
        customer: str,
        *,
        current_period_end: int,
        status: str = "active",
    ) -> None:
        """A subscription of ``customer`` whose current period ends at ``current_period_end``
        (Unix seconds)."""
        with self._lock:
            self.subscriptions[subscription_id] = customer
            self._subscriptions[subscription_id] = {
                "id": subscription_id,
                "object": "subscription",
                "customer": customer,
                "status": status,
                "canceled_at": None,
                "ended_at": None,
                "created": next(self._clock),
                "items": {
                    "object": "list",
                    "data": [
                        {
                            "id": f"si_{subscription_id}",
                            "object": "subscription_item",
                            "subscription": subscription_id,
                            "current_period_start": current_period_end - 30 * 86_400,
                            "current_period_end": current_period_end,
                        }
                    ],
                    "has_more": False,
                    "url": f"/v1/subscription_items?subscription={subscription_id}",
                },
            }

    def cancel_subscription(self, subscription_id: str) -> None:
        """Canceled at once, without invoicing what is pending (Stripe's default)."""
        with self._lock:
            subscription = self._subscriptions[subscription_id]
            subscription["status"] = "canceled"
            subscription["canceled_at"] = subscription["ended_at"] = next(self._clock)

    def pay_invoice(self, invoice_id: str) -> tuple[str, str]:
        """The customer pays the finalized invoice: a payment intent and its charge, attached
        as the invoice's payment. Returns ``(payment_intent, charge)``."""
        with self._lock:
            invoice = self._invoices[invoice_id]
            if invoice["status"] not in ("open", "uncollectible"):
                raise ValueError(f"{invoice_id} is {invoice['status']}, not payable")
            amount = self._total(invoice_id)
            number = next(self._ids)
            intent, charge = f"pi_fake{number:06d}", f"ch_fake{number:06d}"
            invoice["status"] = "paid"
            invoice["amount_paid"] = amount
            invoice["status_transitions"]["paid_at"] = next(self._clock)
            payment_id = f"inpay_fake{number:06d}"
            self._payments[payment_id] = {
                "id": payment_id,
                "object": "invoice_payment",
                "invoice": invoice_id,
                "amount_paid": amount,
                "amount_requested": amount,
                "currency": invoice["currency"],
                "is_default": True,
                "livemode": False,
                "status": "paid",
                "created": next(self._clock),
                "payment": {"type": "payment_intent", "payment_intent": intent},
                "status_transitions": {"paid_at": invoice["status_transitions"]["paid_at"]},
                "_charge": charge,
            }
            return intent, charge

    def refund_invoice(self, invoice_id: str, amount: int, *, status: str = "succeeded") -> str:
        """A refund of ``amount`` of the invoice's payment, made in the Dashboard."""
        with self._lock:
            (payment,) = [p for p in self._payments.values() if p["invoice"] == invoice_id]
            refund_id = f"re_fake{next(self._ids):06d}"
            self._refunds[refund_id] = {
                "id": refund_id,
                "object": "refund",
                "amount": amount,
                "currency": payment["currency"],
                "charge": payment["_charge"],
                "payment_intent": payment["payment"]["payment_intent"],
                "status": status,
                "created": next(self._clock),
                "metadata": {},
            }
            return refund_id

    def void_invoice(self, invoice_id: str) -> None:
        """Someone voided the finalized invoice in Stripe."""
        with self._lock:
            self._invoices[invoice_id]["status"] = "void"

    def mark_uncollectible(self, invoice_id: str) -> None:
        """Someone marked the finalized invoice uncollectible in Stripe."""
        with self._lock:
            self._invoices[invoice_id]["status"] = "uncollectible"

    # --- state for assertions -----------------------------------------------------------

    @property
    def invoices(self) -> list[dict[str, Any]]:
        """Every invoice, oldest first, as Stripe would show it now."""
        with self._lock:
            return [self._invoice_view(inv) for inv in self._invoices.values()]

    @property
    def invoice_items(self) -> list[dict[str, Any]]:
        """Every invoice item, oldest first."""
        with self._lock:
            return [json.loads(json.dumps(item)) for item in self._items.values()]

    @property
    def open_connections(self) -> int:
        """Client connections the fake still holds open (it speaks HTTP/1.1 keep-alive)."""
        with self._lock:
            return self._connections

    def requests_to(self, route: str) -> list[RecordedRequest]:
        _check_route(route)
        with self._lock:
            return [r for r in self.requests if r.route == route]

    # --- serving (handler threads) ------------------------------------------------------

    def _serve(self, method: str, raw_path: str, headers: Mapping[str, str], body: str) -> _Answer:
        split = urlsplit(raw_path)
        form = tuple(parse_qsl(body if method == "POST" else split.query, keep_blank_values=True))
        route, match = _route_of(method, split.path)
        key = headers.get("idempotency-key") if method == "POST" else None
        record = RecordedRequest(method, split.path, route, key, _nested(form))
        with self._lock:
            self.requests.append(record)
        answer = self._answer(_Call(route, match, headers, form, key or None))
        record.status, record.replayed = answer.status, answer.replayed
        return answer

    def _answer(self, call: _Call) -> _Answer:
        if call.match is None:
            return _error(404, "invalid_request_error", f"Unrecognized request URL ({call.route}).")
        refused = self._authenticate(call.headers.get("authorization", ""))
        if refused is None:
            fault = self._take_fault(call.route, "before")
            refused = _fault_answer(fault) if fault is not None else None
        if refused is None:
            refused = self._check_key(call)
        if refused is not None:
            return refused
        try:
            return self._execute(call, call.match)
        finally:
            if call.key is not None:
                with self._lock:
                    self._in_flight.discard(call.key)

    def _check_key(self, call: _Call) -> _Answer | None:
        """A replay or a refusal for a known key; else the key is now in flight."""
        if call.key is None:
            return None
        with self._lock:
            saved = self._saved.get(call.key)
            if saved is not None and (saved.route, saved.form) != (call.route, call.sorted_form):
                return _error(
                    400,
                    "idempotency_error",
                    "Keys for idempotent requests can only be used with the same parameters "
                    f"they were first used with. Try using a key other than '{call.key}' if "
                    "you meant to execute a different request.",
                )
            if saved is not None:
                return _Answer(saved.status, saved.body, replayed=True)
            if call.key in self._in_flight:
                return _error(
                    409,
                    "idempotency_error",
                    "There is currently another in-progress request using this idempotency "
                    "key. Try again later.",
                    code="idempotency_key_in_use",
                )
            self._in_flight.add(call.key)
        return None

    def _execute(self, call: _Call, match: re.Match[str]) -> _Answer:
        with self._lock:
            hold = self._holds.pop(call.route, None)
        if hold is not None:
            hold.wait(timeout=30)
        with self._lock:
            status, payload, executed = self._perform(call.route, match, _nested(call.form))
            fault = self._take_fault(call.route, "after") if executed else None
            if fault is not None and fault.status is not None:
                status, payload = fault.status, _fault_body(fault)
            if call.key is not None and executed:
                self._saved[call.key] = _Saved(call.route, call.sorted_form, status, payload)
        if fault is not None and fault.status is None:
            return _Answer(None)  # done, and the answer is lost
        return _Answer(status, payload)

    def _authenticate(self, authorization: str) -> _Answer | None:
        given = authorization.removeprefix("Bearer ").strip()
        if given == self.api_key:
            return None
        shown = given if self.echo_api_key_in_errors else _masked(given)
        return _error(401, "invalid_request_error", f"Invalid API Key provided: {shown}")

    def _take_fault(self, route: str, when: str) -> _Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.route == route and fault.when == when and fault.remaining > 0:
                    if fault.skip > 0:
                        fault.skip -= 1
                        return None
                    fault.remaining -= 1
                    return fault
        return None

    # --- the API (called with the lock held) --------------------------------------------

    def _perform(
        self, route: str, match: re.Match[str], params: dict[str, Any]
    ) -> tuple[int, dict[str, Any], bool]:
        """``(status, body, executed)``: ``executed`` False for a validation refusal."""
        if route == "POST /v1/invoices" or route.endswith("/sessions"):
            return self._create_top_level(route, params)
        customer = params.get("customer")
        if route.startswith("GET") and customer is not None and customer not in self.customers:
            return _refusal("resource_missing", f"No such customer: '{customer}'", param="customer")
        if route == "POST /v1/invoiceitems":
            return self._create_item(params)
        if route == "POST /v1/invoices/{id}/finalize":
            return self._finalize(match.group(1), params)
        if route.endswith("{id}"):
            return self._retrieve(route, match.group(1))
        return 200, _page(route.removeprefix("GET "), self._listed(route, params), params), True

    def _create_top_level(
        self, route: str, params: dict[str, Any]
    ) -> tuple[int, dict[str, Any], bool]:
        """An invoice, a Checkout Session or a portal session."""
        if route == "POST /v1/invoices":
            return self._create_invoice(params)
        if route == "POST /v1/billing_portal/sessions":
            return create_portal_session(
                params, customers=self.customers, created=next(self._clock)
            )
        answer = create_checkout_session(
            params, prices=self.prices, customers=self.customers, created=next(self._clock)
        )
        if answer[2]:
            self.checkout_sessions.append(answer[1])
        return answer

    def _listed(self, route: str, params: Mapping[str, Any]) -> list[dict[str, Any]]:
        """What a list route finds, before paging, for its filters."""
        if route == "GET /v1/invoices":
            return [
                self._invoice_view(inv)
                for inv in self._invoices.values()
                if params.get("customer") in (None, inv["customer"])
            ]
        if route == "GET /v1/invoiceitems":
            pending = {"true": True, "false": False}.get(str(params.get("pending")))
            return [
                _item_view(item)
                for item in self._items.values()
                if params.get("invoice") in (None, item["invoice"])
                and params.get("customer") in (None, item["customer"])
                and pending in (None, item["invoice"] is None)
            ]
        if route == "GET /v1/invoice_payments":
            return [
                {k: v for k, v in payment.items() if not k.startswith("_")}
                for payment in self._payments.values()
                if params.get("invoice") in (None, payment["invoice"])
            ]
        return [  # GET /v1/refunds
            dict(refund)
            for refund in self._refunds.values()
            if params.get("payment_intent") in (None, refund["payment_intent"])
            and params.get("charge") in (None, refund["charge"])
        ]

    def _retrieve(self, route: str, object_id: str) -> tuple[int, dict[str, Any], bool]:
        """An invoice or a subscription by id."""
        if route == "GET /v1/invoices/{id}":
            invoice = self._invoices.get(object_id)
            if invoice is None:
                return _missing("invoice", object_id)
            return 200, self._invoice_view(invoice), True
        subscription = self._subscriptions.get(object_id)
        if subscription is None and object_id in self.subscriptions:
            subscription = {  # registered without a period: an active subscription
                "id": object_id,
                "object": "subscription",
                "customer": self.subscriptions[object_id],
                "status": "active",
                "canceled_at": None,
                "items": {"object": "list", "data": [], "has_more": False},
            }
        if subscription is None:
            return _missing("subscription", object_id)
        return 200, json.loads(json.dumps(subscription)), True

    def _create_invoice(self, params: dict[str, Any]) -> tuple[int, dict[str, Any], bool]:
        customer = params.get("customer")
        if customer not in self.customers:
            return _refusal("resource_missing", f"No such customer: '{customer}'", param="customer")
        if not re.fullmatch(r"[a-z]{3}", str(params.get("currency", ""))):
            return _refusal("parameter_invalid_string", "Invalid currency", param="currency")
        invoice = self._new_invoice(params)
        return 200, self._invoice_view(invoice), True

    def _create_item(self, params: dict[str, Any]) -> tuple[int, dict[str, Any], bool]:
        if "invoice" not in params:
            return self._create_pending_item(params)
        customer = params.get("customer")
        invoice = self._invoices.get(str(params.get("invoice"))) or {}
        checks = (
            (
                customer in self.customers,
                "resource_missing",
                f"No such customer: '{customer}'",
                "customer",
            ),
            (
                bool(invoice),
                "resource_missing",
                f"No such invoice: '{params.get('invoice')}'",
                "invoice",
            ),
            (
                invoice.get("status") == "draft",
                "invoice_not_editable",
                f"You can only add invoice items to draft invoices; {invoice.get('id')} is "
                f"{invoice.get('status')}.",
                "invoice",
            ),
            (
                invoice.get("customer") == customer,
                "invoice_customer_mismatch",
                "Customer mismatch",
                "customer",
            ),
            (
                params.get("currency") == invoice.get("currency"),
                "currency_mismatch",
                "Currency mismatch",
                "currency",
            ),
            (
                re.fullmatch(r"-?\d+", str(params.get("amount", ""))) is not None,
                "parameter_invalid_integer",
                "amount must be an integer",
                "amount",
            ),
        )
        for passed, code, message, param in checks:
            if not passed:
                return _refusal(code, message, param=param)
        return 200, dict(self._new_item(params)), True

    def _create_pending_item(self, params: dict[str, Any]) -> tuple[int, dict[str, Any], bool]:
        """An item on no invoice yet: the customer's (or its ``subscription``'s) next one."""
        customer = params.get("customer")
        subscription = params.get("subscription")
        if customer not in self.customers:
            return _refusal("resource_missing", f"No such customer: '{customer}'", param="customer")
        if subscription is not None and self.subscriptions.get(str(subscription)) != customer:
            return _refusal(
                "resource_missing", f"No such subscription: '{subscription}'", param="subscription"
            )
        if re.fullmatch(r"-?\d+", str(params.get("amount", ""))) is None:
            return _refusal(
                "parameter_invalid_integer", "amount must be an integer", param="amount"
            )
        return 200, dict(self._new_item(params)), True

    def _finalize(
        self, invoice_id: str, params: dict[str, Any]
    ) -> tuple[int, dict[str, Any], bool]:
        invoice = self._invoices.get(invoice_id)
        if invoice is None:
            return _refusal(
                "resource_missing", f"No such invoice: '{invoice_id}'", param="id", status=404
            )
        if invoice["status"] != "draft":
            return _refusal(
                "invoice_unexpected_state",
                f"This invoice is already finalized ({invoice['status']}).",
            )
        total = self._total(invoice_id)
        invoice["status"] = "open" if total > 0 else "paid"
        invoice["auto_advance"] = params.get("auto_advance", "true") == "true"
        invoice["status_transitions"]["finalized_at"] = next(self._clock)
        return 200, self._invoice_view(invoice), True

    def _new_invoice(self, params: dict[str, Any]) -> dict[str, Any]:
        invoice_id = f"in_fake{next(self._ids):06d}"
        invoice = {
            "id": invoice_id,
            "object": "invoice",
            "customer": params.get("customer"),
            "currency": params.get("currency"),
            "status": "draft",
            "collection_method": params.get("collection_method", "charge_automatically"),
            "auto_advance": params.get("auto_advance", "false") == "true",
            "description": params.get("description"),
            "metadata": dict(params.get("metadata") or {}),
            "pending_invoice_items_behavior": params.get("pending_invoice_items_behavior"),
            "created": next(self._clock),
            "livemode": False,
            "status_transitions": {"finalized_at": None},
        }
        self._invoices[invoice_id] = invoice
        return invoice

    def _new_item(self, params: dict[str, Any]) -> dict[str, Any]:
        item_id = f"ii_fake{next(self._ids):06d}"
        item = {
            "id": item_id,
            "object": "invoiceitem",
            "customer": params.get("customer"),
            "invoice": params.get("invoice"),
            "amount": int(params["amount"]),
            "currency": params.get("currency"),
            "description": params.get("description"),
            "metadata": dict(params.get("metadata") or {}),
            "subscription": params.get("subscription"),
            "period": {
                "start": int(params.get("period", {}).get("start", 0)) or None,
                "end": int(params.get("period", {}).get("end", 0)) or None,
            },
            "date": next(self._clock),
            "livemode": False,
        }
        self._items[item_id] = item
        return item

    def _total(self, invoice_id: str) -> int:
        return sum(i["amount"] for i in self._items.values() if i["invoice"] == invoice_id)

    def _invoice_view(self, invoice: dict[str, Any]) -> dict[str, Any]:
        lines = [
            {
                "id": f"il_{item['id']}",
                "object": "line_item",
                "amount": item["amount"],
                "currency": item["currency"],
                "description": item["description"],
                "invoice": invoice["id"],
                "metadata": dict(item["metadata"]),
                "parent": {
                    "type": "invoice_item_details",
                    "invoice_item_details": {"invoice_item": item["id"]},
                },
            }
            for item in self._items.values()
            if item["invoice"] == invoice["id"]
        ]
        total = sum(line["amount"] for line in lines)
        view: dict[str, Any] = json.loads(json.dumps(invoice))
        view.pop("pending_invoice_items_behavior", None)
        view.update(
            subtotal=total,
            total=total,
            amount_due=max(total, 0) if invoice["status"] != "paid" else 0,
            amount_paid=max(total, 0) if invoice["status"] == "paid" else 0,
            lines={
                "object": "list",
                "data": lines[:10],
                "has_more": len(lines) > 10,
                "total_count": len(lines),
                "url": f"/v1/invoices/{invoice['id']}/lines",
            },
        )
        return view


class _Handler(BaseHTTPRequestHandler):
    owner: FakeStripe
    # Keep-alive, like Stripe: a client that forgets to close its session leaves a socket
    # open, which the tests (warnings are errors) then catch as a ResourceWarning.
    protocol_version = "HTTP/1.1"

    def handle(self) -> None:
        with self.owner._lock:
            self.owner._connections += 1
        try:
            super().handle()
        finally:
            with self.owner._lock:
                self.owner._connections -= 1

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def _handle(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode("utf-8") if length else ""
        headers = {k.lower(): v for k, v in self.headers.items()}
        answer = self.owner._serve(method, self.path, headers, body)
        if answer.status is None:
            self.close_connection = True  # say nothing: the client sees the line drop
            return
        data = json.dumps(answer.body).encode("utf-8")
        self.send_response(answer.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Request-Id", f"req_fake{next(self.owner._request_ids):06d}")
        if answer.replayed:
            self.send_header("Idempotent-Replayed", "true")
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
        """Quiet: the recorded requests are the log."""


def _check_route(route: str) -> None:
    if route not in {name for _, name, _ in ROUTES}:
        raise ValueError(f"unknown route {route!r}; one of {[name for _, name, _ in ROUTES]}")


def _route_of(method: str, path: str) -> tuple[str, re.Match[str] | None]:
    for verb, name, pattern in ROUTES:
        match = pattern.match(path)
        if verb == method and match is not None:
            return name, match
    return f"{method} {path}", None


def _nested(form: tuple[tuple[str, str], ...]) -> dict[str, Any]:
    """``metadata[line_no]=3`` → ``{"metadata": {"line_no": "3"}}`` (values stay strings)."""
    nested: dict[str, Any] = {}
    for key, value in form:
        parts = re.findall(r"[^\[\]]+", key) or [key]
        target = nested
        for part in parts[:-1]:
            target = target.setdefault(part, {})
        target[parts[-1]] = value
    return nested


def _page(url: str, found: list[dict[str, Any]], params: Mapping[str, Any]) -> dict[str, Any]:
    """Stripe's list envelope: newest first, ``limit``, ``starting_after``."""
    newest_first = sorted(found, key=lambda o: (o.get("created") or o.get("date"), o["id"]))[::-1]
    after = params.get("starting_after")
    if after is not None:
        ids = [o["id"] for o in newest_first]
        newest_first = newest_first[ids.index(after) + 1 :] if after in ids else []
    limit = int(params.get("limit", 10))
    return {
        "object": "list",
        "url": url,
        "has_more": len(newest_first) > limit,
        "data": newest_first[:limit],
    }


def _item_view(item: Mapping[str, Any]) -> dict[str, Any]:
    """An invoice item as the 2026 API shows it: its subscription under ``parent``."""
    view: dict[str, Any] = json.loads(json.dumps(item))
    subscription = item.get("subscription")
    view["parent"] = (
        {
            "type": "subscription_details",
            "subscription_details": {"subscription": subscription, "subscription_item": None},
        }
        if subscription
        else None
    )
    return view


def _missing(kind: str, object_id: str) -> tuple[int, dict[str, Any], bool]:
    return _refusal("resource_missing", f"No such {kind}: '{object_id}'", param="id", status=404)


def _masked(key: str) -> str:
    """Stripe's way: the prefix and the last four characters."""
    if len(key) <= 12:
        return "*" * len(key)
    prefix = key[: key.index("_", 3) + 1] if key.count("_") >= 2 else ""
    return prefix + "*" * (len(key) - len(prefix) - 4) + key[-4:]


def _error(
    status: int, kind: str, message: str, *, code: str | None = None, param: str | None = None
) -> _Answer:
    error: dict[str, Any] = {"type": kind, "message": message}
    if code is not None:
        error["code"] = code
    if param is not None:
        error["param"] = param
    return _Answer(status, {"error": error})


def _refusal(
    code: str, message: str, *, param: str | None = None, status: int = 400
) -> tuple[int, dict[str, Any], bool]:
    answer = _error(status, "invalid_request_error", message, code=code, param=param)
    return answer.status or status, answer.body, False


def _fault_body(fault: _Fault) -> dict[str, Any]:
    if fault.status == 429:
        return {
            "error": {
                "type": "invalid_request_error",
                "code": "rate_limit",
                "message": "Too many requests hit the API too quickly.",
            }
        }
    return {"error": {"type": "api_error", "message": "An unknown error occurred (injected)."}}


def _fault_answer(fault: _Fault) -> _Answer:
    if fault.status is None:
        return _Answer(None)
    return _Answer(fault.status, _fault_body(fault))

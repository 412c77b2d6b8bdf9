"""The Stripe webhook payload builders of tests/stripe_payloads.py against the real Stripe SDK."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import pytest
import stripe

from tests.clock import unix_now
from tests.stripe_payloads import (
    API_VERSION,
    WEBHOOK_SECRET,
    charge,
    checkout_session,
    customer,
    encode,
    event,
    invoice,
    payment_intent,
    sign,
    subscription,
)

CREATED = 1_722_470_400
"""2024-08-01T00:00:00Z: the ``created`` of every event here."""

PERIOD_START = 1_719_792_000
"""2024-07-01T00:00:00Z."""

PERIOD_END = 1_722_470_400
"""2024-08-01T00:00:00Z."""


def _subscription(**overrides: Any) -> dict[str, Any]:
    """An active monthly subscription of account acct_42."""
    fields: dict[str, Any] = {
        "customer": "cus_Q1",
        "price_id": "price_pro_monthly",
        "status": "active",
        "current_period_start": PERIOD_START,
        "current_period_end": PERIOD_END,
        "account_id": "acct_42",
    }
    return subscription("sub_1Pq", **(fields | overrides))


EVENTS: dict[str, Callable[[], dict[str, Any]]] = {
    "customer.created": lambda: event(
        "customer.created", customer("cus_Q1", account_id="acct_42"), created=CREATED
    ),
    "customer.updated": lambda: event(
        "customer.updated",
        customer("cus_Q1", email="new@example.com"),
        created=CREATED,
        previous_attributes={"email": "jenny.rosen@example.com"},
    ),
    "customer.subscription.created": lambda: event(
        "customer.subscription.created",
        _subscription(status="trialing", trial_end=PERIOD_END),
        created=CREATED,
    ),
    "customer.subscription.updated": lambda: event(
        "customer.subscription.updated",
        _subscription(cancel_at_period_end=True),
        created=CREATED,
        previous_attributes={"cancel_at_period_end": False, "cancel_at": None},
    ),
    "customer.subscription.updated (basil)": lambda: event(
        "customer.subscription.updated",
        _subscription(period_on_items_only=True),
        created=CREATED,
        previous_attributes={"status": "past_due"},
        api_version="2025-03-31.basil",
    ),
    "customer.subscription.deleted": lambda: event(
        "customer.subscription.deleted", _subscription(status="canceled"), created=CREATED
    ),
    "checkout.session.completed (payment)": lambda: event(
        "checkout.session.completed",
        checkout_session(
            "cs_test_a1",
            mode="payment",
            customer="cus_Q1",
            client_reference_id="acct_42",
            account_id="acct_42",
            price_id="price_credits_1000",
            quantity=3,
            amount_total=3000,
            payment_intent="pi_3Pq",
        ),
        created=CREATED,
    ),
    "checkout.session.completed (subscription)": lambda: event(
        "checkout.session.completed",
        checkout_session(
            "cs_test_b2",
            mode="subscription",
            customer="cus_Q1",
            account_id="acct_42",
            price_id="price_pro_monthly",
            amount_total=990,
            subscription="sub_1Pq",
        ),
        created=CREATED,
    ),
    "invoice.paid": lambda: event(
        "invoice.paid",
        invoice(
            "in_1Pq",
            customer="cus_Q1",
            status="paid",
            amount_due=990,
            amount_paid=990,
            billing_invoice_id="inv_7",
            subscription="sub_1Pq",
        ),
        created=CREATED,
    ),
    "invoice.payment_failed": lambda: event(
        "invoice.payment_failed",
        invoice(
            "in_2Pq",
            customer="cus_Q1",
            status="open",
            amount_due=990,
            amount_paid=0,
            subscription="sub_1Pq",
            attempt_count=2,
        ),
        created=CREATED,
    ),
    "payment_intent.succeeded": lambda: event(
        "payment_intent.succeeded",
        payment_intent("pi_3Pq", customer="cus_Q1", amount=3000, status="succeeded"),
        created=CREATED,
    ),
    "payment_intent.payment_failed": lambda: event(
        "payment_intent.payment_failed",
        payment_intent(
            "pi_4Pq",
            customer="cus_Q1",
            amount=3000,
            status="requires_payment_method",
            last_payment_error="Your card was declined.",
        ),
        created=CREATED,
    ),
    "charge.refunded": lambda: event(
        "charge.refunded",
        charge("ch_3Pq", customer="cus_Q1", amount=3000, amount_refunded=3000),
        created=CREATED,
    ),
}
"""One event of every kind the builders make, named by type (and variant)."""


def verified(body: bytes, header: str, secret: str = WEBHOOK_SECRET) -> stripe.Event:
    """What the SDK makes of a delivery: verified signature, then a constructed Event.

    No tolerance: the SDK would age the signature by the system's date, and the worker ages
    it by its own clock (``tests/unit/test_stripe_consumer.py``)."""
    parsed: stripe.Event = stripe.Webhook.construct_event(body, header, secret, tolerance=None)
    return parsed


class TestSdkAcceptsBuiltEvents:
    @pytest.mark.parametrize("name", sorted(EVENTS))
    def test_signed_event_is_verified_and_parsed(self, name: str) -> None:
        """Every builder's event, encoded and signed by these helpers, passes the SDK's
        signature check and parses to an Event with the same id, type, api_version and
        data.object id."""
        built = EVENTS[name]()
        body = encode(built)
        parsed = verified(body, sign(body, WEBHOOK_SECRET))
        assert parsed.id == built["id"]
        assert parsed.type == built["type"]
        assert parsed.api_version == built["api_version"]
        assert parsed.data.object["id"] == built["data"]["object"]["id"]
        assert parsed.data.object["object"] == built["data"]["object"]["object"]

    @pytest.mark.parametrize("name", sorted(EVENTS))
    def test_encoding_is_lossless(self, name: str) -> None:
        """encode() writes plain JSON that reads back to exactly the built dict, compact or
        pretty-printed."""
        built = EVENTS[name]()
        assert json.loads(encode(built)) == built
        assert json.loads(encode(built, indent=2)) == built

    def test_pretty_printed_body_verifies_too(self) -> None:
        """The signature covers the exact bytes, whatever their layout: Stripe's real,
        indented deliveries verify, so handlers must verify the raw body, not re-encoded
        JSON."""
        body = encode(EVENTS["invoice.paid"](), indent=2)
        assert body.startswith(b'{\n  "id": "evt_')
        assert verified(body, sign(body, WEBHOOK_SECRET)).type == "invoice.paid"
        with pytest.raises(stripe.SignatureVerificationError):
            verified(encode(json.loads(body)), sign(body, WEBHOOK_SECRET))

    def test_compact_encoding(self) -> None:
        """encode() is compact by default (no spaces after separators) and UTF-8, not
        escaped."""
        built = event("customer.created", customer("cus_Q1", email="zoë@example.com"), created=1)
        body = encode(built)
        assert b", " not in body
        assert b'":' in body
        assert b'": ' not in body
        assert "zoë@example.com".encode() in body


class TestSignatureRejections:
    def test_tampered_body_refused(self) -> None:
        """Changing one byte of a signed body (an amount) makes the SDK refuse it."""
        body = encode(EVENTS["invoice.paid"]())
        header = sign(body, WEBHOOK_SECRET)
        tampered = body.replace(b'"amount_paid":990', b'"amount_paid":999')
        assert tampered != body
        with pytest.raises(stripe.SignatureVerificationError):
            verified(tampered, header)

    def test_wrong_secret_refused(self) -> None:
        """A body signed with another endpoint's secret is refused."""
        body = encode(EVENTS["charge.refunded"]())
        with pytest.raises(stripe.SignatureVerificationError):
            verified(body, sign(body, "whsec_other"))

    def test_signed_timestamp_is_part_of_the_signature(self) -> None:
        """sign() signs the given timestamp with the body: the header verifies as made, and
        moving its ``t`` by one second breaks it."""
        body = encode(EVENTS["customer.created"]())
        header = sign(body, WEBHOOK_SECRET, timestamp=1_800_000_000)
        assert header.startswith("t=1800000000,")
        assert verified(body, header)
        with pytest.raises(stripe.SignatureVerificationError):
            verified(body, header.replace("t=1800000000", "t=1800000001"))


class TestSignHelper:
    @pytest.mark.parametrize(
        "payload", [b"", b"{}", b'{"a":"zo\xc3\xab"}', b'{\n  "id": "evt_1"\n}']
    )
    def test_matches_sdk_header(self, payload: bytes) -> None:
        """sign() gives exactly the header the SDK's own generate_signature_header gives,
        for empty, compact, non-ASCII and indented bodies."""
        for timestamp in (0, 1_722_470_400):
            expected = stripe.WebhookSignature.generate_signature_header(
                payload.decode(), WEBHOOK_SECRET, timestamp=timestamp
            )
            assert sign(payload, WEBHOOK_SECRET, timestamp=timestamp) == expected

    def test_header_format(self) -> None:
        """The header is t=<unix seconds>,v1=<64 hex digits>; without a timestamp, now."""
        before = unix_now()
        header = sign(b"{}", WEBHOOK_SECRET)
        match = re.fullmatch(r"t=(\d+),v1=([0-9a-f]{64})", header)
        assert match is not None
        assert before <= int(match[1]) <= unix_now()

    def test_pinned_value(self) -> None:
        """The HMAC is over "<ts>.<body>" keyed with the secret: a fixed known answer."""
        assert sign(b"{}", "whsec_x", timestamp=1) == (
            "t=1,v1=" + "36ee2f7498f0c1777d1312b2a7361947fe5ad31223be30d0c62421f4ca753401"
        )


class TestEnvelope:
    def test_event_envelope_shape(self) -> None:
        """An event has Stripe's envelope: evt_ id, object event, the API version, created,
        livemode false, one pending webhook, a request with a req_ id and null idempotency
        key, and data.object a copy of the object."""
        obj = customer("cus_Q1")
        built = event("customer.created", obj, created=CREATED)
        assert list(built) == [
            "id",
            "object",
            "api_version",
            "created",
            "data",
            "livemode",
            "pending_webhooks",
            "request",
            "type",
        ]
        assert built["id"].startswith("evt_")
        assert built["object"] == "event"
        assert built["api_version"] == API_VERSION == "2024-06-20"
        assert built["created"] == CREATED
        assert (built["livemode"], built["pending_webhooks"]) == (False, 1)
        assert built["request"]["id"].startswith("req_")
        assert built["request"]["idempotency_key"] is None
        assert built["data"] == {"object": obj}
        assert built["data"]["object"] is not obj

    def test_event_ids_unique_unless_given(self) -> None:
        """Generated event ids never repeat; a given id is used as is."""
        ids = {event("customer.created", {}, created=1)["id"] for _ in range(1000)}
        assert len(ids) == 1000
        assert event("customer.created", {}, created=1, event_id="evt_fixed")["id"] == "evt_fixed"

    def test_previous_attributes_only_when_given(self) -> None:
        """data.previous_attributes is present for an update that passes it, absent
        otherwise (Stripe leaves it out of non-update events)."""
        updated = EVENTS["customer.subscription.updated"]()
        assert updated["data"]["previous_attributes"] == {
            "cancel_at_period_end": False,
            "cancel_at": None,
        }
        assert "previous_attributes" not in EVENTS["customer.created"]()["data"]

    def test_builders_return_fresh_dicts(self) -> None:
        """Changing one built object changes no other: tests may edit what they get."""
        first = _subscription()
        first["items"]["data"][0]["price"]["unit_amount"] = 1
        assert _subscription()["items"]["data"][0]["price"]["unit_amount"] == 990
        assert _subscription() == _subscription()


class TestObjectShapes:
    def test_customer_metadata(self) -> None:
        """A customer carries metadata.account_id when given, empty metadata otherwise."""
        assert customer("cus_Q1", account_id="acct_42")["metadata"] == {"account_id": "acct_42"}
        assert customer("cus_Q1")["metadata"] == {}
        assert customer("cus_Q1")["object"] == "customer"

    def test_subscription_period_top_level_and_on_item(self) -> None:
        """By default the period is on the subscription and on its one item; the item holds
        the price (monthly, 990 usd cents) with quantity 1."""
        sub = _subscription()
        (item,) = sub["items"]["data"]
        assert (sub["current_period_start"], sub["current_period_end"]) == (
            PERIOD_START,
            PERIOD_END,
        )
        assert (item["current_period_start"], item["current_period_end"]) == (
            PERIOD_START,
            PERIOD_END,
        )
        assert item["object"] == "subscription_item"
        assert item["id"].startswith("si_")
        assert item["quantity"] == 1
        assert {k: item["price"][k] for k in ("id", "object", "unit_amount", "currency")} == {
            "id": "price_pro_monthly",
            "object": "price",
            "unit_amount": 990,
            "currency": "usd",
        }
        assert item["price"]["recurring"]["interval"] == "month"
        assert sub["metadata"] == {"account_id": "acct_42"}

    def test_basil_subscription_has_period_only_on_items(self) -> None:
        """period_on_items_only drops the subscription-level period (API 2025-03-31.basil)
        and keeps the item's."""
        sub = _subscription(period_on_items_only=True)
        assert "current_period_start" not in sub
        assert "current_period_end" not in sub
        assert sub["items"]["data"][0]["current_period_end"] == PERIOD_END

    def test_cancellation_fields(self) -> None:
        """An active subscription has no cancellation times; one set to cancel at period end
        has cancel_at but no ended_at; a canceled one has canceled_at and ended_at."""
        active = _subscription()
        assert (active["canceled_at"], active["ended_at"], active["cancel_at"]) == (None,) * 3
        ending = _subscription(cancel_at_period_end=True)
        assert ending["cancel_at"] == PERIOD_END
        assert ending["canceled_at"] is not None
        assert ending["ended_at"] is None
        canceled = _subscription(status="canceled")
        assert canceled["canceled_at"] is not None
        assert canceled["ended_at"] == PERIOD_END
        assert _subscription()["metadata"] == {"account_id": "acct_42"}
        assert _subscription(account_id=None)["metadata"] == {}

    def test_trial(self) -> None:
        """A trial runs from the period start to trial_end; no trial means both null."""
        trialing = _subscription(status="trialing", trial_end=PERIOD_END)
        assert (trialing["trial_start"], trialing["trial_end"]) == (PERIOD_START, PERIOD_END)
        assert (_subscription()["trial_start"], _subscription()["trial_end"]) == (None, None)

    def test_checkout_session_metadata_carries_the_purchase(self) -> None:
        """A session passes account_id, price_id and quantity as metadata strings, since
        webhooks carry no line items; keys not given are left out."""
        session = EVENTS["checkout.session.completed (payment)"]()["data"]["object"]
        assert session["object"] == "checkout.session"
        assert session["metadata"] == {
            "account_id": "acct_42",
            "price_id": "price_credits_1000",
            "quantity": "3",
        }
        assert "line_items" not in session
        assert (session["mode"], session["payment_status"], session["status"]) == (
            "payment",
            "paid",
            "complete",
        )
        assert (session["amount_total"], session["payment_intent"]) == (3000, "pi_3Pq")
        bare = checkout_session("cs_test_c3", mode="subscription")
        assert bare["metadata"] == {}
        assert (bare["customer"], bare["client_reference_id"], bare["subscription"]) == (
            None,
            None,
            None,
        )

    def test_invoice_fields(self) -> None:
        """An invoice carries metadata.billing_invoice_id when synced from ours, amounts in
        cents, a number, a hosted URL and its period; a draft has no number or URL yet."""
        paid = EVENTS["invoice.paid"]()["data"]["object"]
        assert paid["metadata"] == {"billing_invoice_id": "inv_7"}
        assert (paid["amount_due"], paid["amount_paid"], paid["amount_remaining"]) == (
            990,
            990,
            0,
        )
        assert paid["hosted_invoice_url"].startswith("https://invoice.stripe.com/i/")
        assert re.fullmatch(r"[0-9A-F]{8}-\d{4}", paid["number"])
        assert paid["period_start"] < paid["period_end"]
        assert (paid["paid"], paid["subscription"], paid["currency"]) == (True, "sub_1Pq", "usd")
        failed = EVENTS["invoice.payment_failed"]()["data"]["object"]
        assert (failed["status"], failed["attempt_count"], failed["amount_remaining"]) == (
            "open",
            2,
            990,
        )
        assert failed["metadata"] == {}
        draft = invoice("in_3", customer="cus_Q1", status="draft", amount_due=990, amount_paid=0)
        assert (draft["number"], draft["hosted_invoice_url"], draft["attempt_count"]) == (
            None,
            None,
            0,
        )

    def test_payment_intent_error(self) -> None:
        """A message given as last_payment_error becomes a card_error with that message."""
        failed = EVENTS["payment_intent.payment_failed"]()["data"]["object"]
        assert failed["last_payment_error"]["type"] == "card_error"
        assert failed["last_payment_error"]["message"] == "Your card was declined."
        assert failed["amount_received"] == 0
        succeeded = EVENTS["payment_intent.succeeded"]()["data"]["object"]
        assert succeeded["last_payment_error"] is None
        assert succeeded["amount_received"] == 3000

    def test_charge_refunds(self) -> None:
        """A refunded charge lists one refund of amount_refunded; nothing refunded, no
        refunds."""
        refunded = EVENTS["charge.refunded"]()["data"]["object"]
        assert refunded["refunded"] is True
        (refund,) = refunded["refunds"]["data"]
        assert (refund["object"], refund["amount"], refund["charge"]) == (
            "refund",
            3000,
            "ch_3Pq",
        )
        partial = charge("ch_4", customer=None, amount=3000, amount_refunded=0, refunded=False)
        assert partial["refunds"]["data"] == []
        assert partial["refunds"]["total_count"] == 0

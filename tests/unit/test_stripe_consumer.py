"""Verification of relayed Stripe deliveries, before anything is read from them."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, cast

import pytest

from billing_worker.adapters.amqp.delivery import Delivery
from billing_worker.adapters.observability.metrics import Metrics
from billing_worker.consumers.stripe import StripeConsumer
from billing_worker.domain.errors import PermanentError
from tests import stripe_payloads as sp
from tests.fakes import FakeChannel, FakeMessage
from tests.pricebooks import DEFAULT_BOOK

SIGNED_AT = 1_800_000_000


def unused_uow() -> Any:
    raise AssertionError("verification must not touch storage")


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


def consumer(metrics: Metrics, now: float = SIGNED_AT + 10) -> StripeConsumer:
    return StripeConsumer(
        unused_uow,
        DEFAULT_BOOK,
        secret=sp.WEBHOOK_SECRET,
        tolerance_seconds=300,
        events=metrics.stripe_events,
        clock=lambda: datetime.fromtimestamp(now, UTC),
    )


def delivery(body: bytes, signature: str | bytes | None, relayed_at: int | None = None) -> Delivery:
    headers: dict[str, object] = {} if signature is None else {"stripe-signature": signature}
    if relayed_at is not None:
        headers["x-relayed-at"] = relayed_at
    return cast(Delivery, FakeMessage(body, FakeChannel(), headers=headers))


BODY = sp.encode(sp.event("customer.created", sp.customer("cus_1", account_id="a"), created=1))


def reason(metrics: Metrics, message: Delivery, now: float = SIGNED_AT + 10) -> str:
    with pytest.raises(PermanentError) as caught:
        consumer(metrics, now).decode(message)
    return caught.value.reason


def test_genuine_delivery_is_read(metrics: Metrics) -> None:
    """A body signed with the endpoint's secret within the tolerance becomes an event."""
    signature = sp.sign(BODY, sp.WEBHOOK_SECRET, timestamp=SIGNED_AT)
    command = consumer(metrics).decode(delivery(BODY, signature))
    assert (command.event.event_type, command.event.object_id) == ("customer.created", "cus_1")


def test_header_as_bytes_is_accepted(metrics: Metrics) -> None:
    """AMQP headers may arrive as bytes; the signature is the same."""
    signature = sp.sign(BODY, sp.WEBHOOK_SECRET, timestamp=SIGNED_AT).encode()
    assert consumer(metrics).decode(delivery(BODY, signature)).event.object_id == "cus_1"


@pytest.mark.parametrize(
    ("body", "signature"),
    [
        pytest.param(BODY, sp.sign(BODY, "whsec_someone_else", timestamp=SIGNED_AT), id="forged"),
        pytest.param(
            BODY + b" ", sp.sign(BODY, sp.WEBHOOK_SECRET, timestamp=SIGNED_AT), id="tampered"
        ),
        pytest.param(
            BODY[:-5], sp.sign(BODY, sp.WEBHOOK_SECRET, timestamp=SIGNED_AT), id="truncated"
        ),
        pytest.param(BODY, None, id="missing-header"),
        pytest.param(BODY, "t=abc,v1=", id="garbled-header"),
        pytest.param(
            b"\xff\xfe", sp.sign(BODY, sp.WEBHOOK_SECRET, timestamp=SIGNED_AT), id="not-utf8"
        ),
    ],
)
def test_forged_tampered_or_unsigned_is_bad_signature(
    metrics: Metrics, body: bytes, signature: str | None
) -> None:
    """Anything the secret did not sign is dead-lettered as bad_signature, and counted."""
    assert reason(metrics, delivery(body, signature)) == "bad_signature"
    counted = metrics.registry.get_sample_value(
        "billing_stripe_events_total", {"type": "unknown", "outcome": "bad_signature"}
    )
    assert counted == 1


def test_replay_after_the_tolerance_is_stale(metrics: Metrics) -> None:
    """A genuine delivery signed longer ago than the tolerance is a replay: stale_signature."""
    signature = sp.sign(BODY, sp.WEBHOOK_SECRET, timestamp=SIGNED_AT)
    assert reason(metrics, delivery(BODY, signature), now=SIGNED_AT + 301) == "stale_signature"
    assert consumer(metrics, SIGNED_AT + 299).decode(delivery(BODY, signature))


def test_signed_garbage_is_an_invalid_event(metrics: Metrics) -> None:
    """A correctly signed body that is not a Stripe event is refused with its own reason."""
    for body in (b"[1, 2]", b'{"id": "evt_1"}', b"not json"):
        signature = sp.sign(body, sp.WEBHOOK_SECRET, timestamp=SIGNED_AT)
        assert reason(metrics, delivery(body, signature)) == "invalid_stripe_event"


def test_age_is_measured_when_the_relay_received_it(metrics: Metrics) -> None:
    """A genuine delivery that waited in the queue (a backlog, a worker down) is accepted:
    its age is taken at the relay; one the relay received too late is a replay."""
    signature = sp.sign(BODY, sp.WEBHOOK_SECRET, timestamp=SIGNED_AT)
    much_later = SIGNED_AT + 86_400
    waited = delivery(BODY, signature, relayed_at=SIGNED_AT + 2)
    assert consumer(metrics, much_later).decode(waited).event.object_id == "cus_1"
    replayed = delivery(BODY, signature, relayed_at=SIGNED_AT + 301)
    assert reason(metrics, replayed, now=SIGNED_AT + 302) == "stale_signature"


def test_a_second_timestamp_cannot_hide_a_replay(metrics: Metrics) -> None:
    """The age is that of the timestamp the signature was verified with, however the header
    is padded: a fresh decoy ``t`` does not make an old signature young."""
    old = sp.sign(BODY, sp.WEBHOOK_SECRET, timestamp=SIGNED_AT - 3600)
    decoy = f" t={SIGNED_AT},{old}"
    assert reason(metrics, delivery(BODY, decoy)) == "stale_signature"

"""The ``billing-worker.stripe`` consumer: verify, then apply each relayed Stripe event.

Verification comes first and uses the official SDK: the ``stripe-signature`` header against
the raw body and the endpoint's signing secret. A forged or missing signature is
dead-lettered as ``bad_signature``, a genuine one older than the tolerance as
``stale_signature`` (a replay: measured against when the relay received it, so a queue
backlog ages nothing); neither body is logged. Events are then applied one per
transaction, in delivery order (see ``service/stripe_events.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

import orjson
import stripe
from prometheus_client import Counter

from billing_worker.adapters.amqp.delivery import Delivery
from billing_worker.consumers.settlement import Outcome, Settled
from billing_worker.domain.errors import PermanentError
from billing_worker.domain.pricebook import PriceBook
from billing_worker.domain.stripe import StripeEvent, parse_stripe_event
from billing_worker.service.ports import Clock, UnitOfWorkFactory
from billing_worker.service.stripe_events import CYCLE_MARGIN, StripeOutcome, apply_stripe_event

SIGNATURE_HEADER = "stripe-signature"
RELAYED_AT_HEADER = "x-relayed-at"


@dataclass(frozen=True, slots=True)
class StripeCommand:
    """A verified event to apply."""

    event: StripeEvent


class StripeConsumer:
    """``BatchHandler`` for relayed Stripe events."""

    def __init__(
        self,
        uow_factory: UnitOfWorkFactory,
        book: PriceBook,
        *,
        secret: str,
        tolerance_seconds: int,
        events: Counter,
        max_body_bytes: int = 1024 * 1024,
        clock: Clock,
        cycle_margin: timedelta = CYCLE_MARGIN,
    ) -> None:
        self._max_body_bytes = max_body_bytes
        self._cycle_margin = cycle_margin
        self._uow_factory = uow_factory
        self._book = book
        self._secret = secret
        self._tolerance = tolerance_seconds
        self._events = events
        self._clock = clock

    def decode(self, message: Delivery) -> StripeCommand:
        """A verified event, or a ``PermanentError`` (bad_signature, stale_signature...)."""
        try:
            return StripeCommand(self._verified(message))
        except PermanentError as exc:
            self._events.labels(type="unknown", outcome=exc.reason).inc()
            raise

    def _verified(self, message: Delivery) -> StripeEvent:
        body = message.body
        if len(body) > self._max_body_bytes:
            raise PermanentError(f"body is {len(body)} bytes", reason="too_large")
        header = message.headers.get(SIGNATURE_HEADER)
        if isinstance(header, bytes):
            header = header.decode("latin-1")
        if not isinstance(header, str) or not header:
            raise PermanentError(
                f"no {SIGNATURE_HEADER} header: not relayed from a Stripe delivery",
                reason="bad_signature",
            )
        try:
            stripe.WebhookSignature.verify_header(body, header, self._secret, tolerance=None)
            signed_at = _signed_at(header)
        except (stripe.SignatureVerificationError, UnicodeDecodeError, ValueError) as exc:
            raise PermanentError(
                f"signature does not verify: {_first_line(exc)}", reason="bad_signature"
            ) from None
        received = _relayed_at(message.headers.get(RELAYED_AT_HEADER))
        age = (received if received is not None else self._clock().timestamp()) - signed_at
        if age > self._tolerance:
            raise PermanentError(
                f"signed {age:.0f}s before it reached the relay, more than the "
                f"{self._tolerance}s tolerance (a replayed delivery)",
                reason="stale_signature",
            )
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise PermanentError(
                f"signed body is not JSON: {exc}", reason="invalid_stripe_event"
            ) from None
        return parse_stripe_event(payload)

    async def handle(self, commands: Sequence[StripeCommand]) -> Sequence[Outcome]:
        """Apply each event in its own transaction, in order."""
        outcomes: list[Outcome] = []
        for command in commands:
            event = command.event
            try:
                result = await apply_stripe_event(
                    self._uow_factory,
                    self._book,
                    event,
                    now=self._clock(),
                    cycle_margin=self._cycle_margin,
                )
            except PermanentError as exc:
                self._events.labels(type=event.event_type, outcome=exc.reason).inc()
                outcomes.append(exc)
                continue
            self._events.labels(type=event.event_type, outcome=result.value).inc()
            outcomes.append(
                Settled.RECORDED if result is StripeOutcome.APPLIED else Settled.DUPLICATE
            )
        return outcomes


def _signed_at(header: str) -> int:
    """The signed timestamp, read exactly as the SDK's verification read it (the first
    item whose key is ``t``), so the age checked is the age of what was verified."""
    items = [item.split("=", 2) for item in header.split(",")]
    return int(next(item[1] for item in items if item[0] == "t"))


def _relayed_at(value: object) -> float | None:
    """When the relay received the delivery (absent for messages published otherwise)."""
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    if isinstance(value, str) and value.isascii() and value.isdigit():
        return float(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return None


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__

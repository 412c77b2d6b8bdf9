"""When the plan a Stripe subscription event sets takes effect (``effective_from``)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from billing_worker.domain.periods import BillingPeriod
from billing_worker.domain.stripe import StripeEvent, SubscriptionTerms
from billing_worker.service.stripe_subscriptions import effective_from

DEC = datetime(2026, 12, 1, tzinfo=UTC)
NOW = datetime(2026, 12, 10, 6, tzinfo=UTC)


def terms(
    *, status: str = "active", started: datetime | None = None, ended: datetime | None = None
) -> SubscriptionTerms:
    return SubscriptionTerms(
        subscription_id="sub_1",
        customer="cus_1",
        price_id="price_plus_monthly",
        status=status,
        period=BillingPeriod(DEC, datetime(2027, 1, 1, tzinfo=UTC)),
        cancel_at_period_end=False,
        trial_end=None,
        started_at=started,
        ended_at=ended,
    )


def event(kind: str, created: datetime) -> StripeEvent:
    return StripeEvent("evt_1", f"customer.subscription.{kind}", created, {"object": "x"})


def when(
    t: SubscriptionTerms, e: StripeEvent, *, first_seen: bool, last: datetime | None
) -> datetime:
    return effective_from(t, e, first_seen=first_seen, open_from=DEC, last_change=last, now=NOW)


def test_a_new_subscription_applies_from_its_start_date() -> None:
    """First heard of on Dec 10, begun Dec 5: from Dec 5."""
    start = datetime(2026, 12, 5, tzinfo=UTC)
    assert when(terms(started=start), event("created", NOW), first_seen=True, last=None) == start


def test_a_change_applies_from_when_stripe_made_it() -> None:
    """An update of a known subscription: from the event's ``created``, not its start."""
    made = datetime(2026, 12, 9, tzinfo=UTC)
    got = when(terms(started=DEC), event("updated", made), first_seen=False, last=None)
    assert got == made


def test_an_end_applies_from_when_it_ended() -> None:
    """A deleted subscription: from its ``ended_at``."""
    ended = datetime(2026, 12, 8, tzinfo=UTC)
    got = when(
        terms(status="canceled", ended=ended), event("deleted", NOW), first_seen=False, last=None
    )
    assert got == ended


def test_never_before_the_open_period_nor_the_last_change_nor_after_now() -> None:
    """Clamped: a November start gives Dec 1; a start before the last plan change gives
    that change's time; a future ``created`` (clock skew) gives now."""
    november = datetime(2026, 11, 20, tzinfo=UTC)
    assert when(terms(started=november), event("created", NOW), first_seen=True, last=None) == DEC
    last = datetime(2026, 12, 7, tzinfo=UTC)
    got = when(
        terms(started=DEC + timedelta(days=2)), event("created", NOW), first_seen=True, last=last
    )
    assert got == last
    ahead = NOW + timedelta(minutes=3)
    assert when(terms(), event("updated", ahead), first_seen=False, last=None) == NOW

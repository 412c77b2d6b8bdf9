"""A day of usage for ``billing-worker demo``: an image generator and a chat service.

Pure and seeded: the same account, day and seed give the same events (ids included), so a
test can work out what the invoice must say. Event ids are derived from the account, so
another demo account never collides with these keys.
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

from billing_worker.domain.periods import BillingPeriod, calendar_month_of
from billing_worker.domain.pricebook import Plan, PlanMeter, PriceBook

GENERATOR = "image-generator"
CHAT = "chat-service"
IMAGE_TYPE = "generator.image_generated"
WEBSITE_TYPE = "generator.website_generated"
CHAT_TYPE = "chat.tokens"

CHAT_EVENTS = 300
IMAGE_EVENTS = 160
WEBSITE_EVENTS = 12
IMAGES_PER_REQUEST = (1, 1, 1, 2, 4)
CHAT_MODELS = ("gpt-4o-mini", "gpt-4o-mini", "gpt-4")

# Share of the day's traffic per UTC hour: quiet nights, busy office hours.
HOURLY_WEIGHTS = (1, 1, 1, 1, 1, 2, 3, 5, 8, 10, 11, 11, 10, 11, 11, 10, 9, 7, 5, 4, 3, 2, 2, 1)

_IDS = uuid.UUID("5f0f6a52-3c1e-4b7a-9d0c-2a6f1d8e4b10")


@dataclass(frozen=True, slots=True)
class DemoEvent:
    """One usage event as its producer publishes it."""

    source: str
    event_type: str
    quantity: int
    occurred_at: datetime
    body: bytes

    @property
    def routing_key(self) -> str:
        """``usage.<source>.<type>``, as the contract asks."""
        return f"usage.{self.source}.{self.event_type}"

    @property
    def event_id(self) -> str:
        """The event's ``id`` (with ``source``, its idempotency key)."""
        return str(json.loads(self.body)["id"])


@dataclass(frozen=True, slots=True)
class DemoDay:
    """A day of one account's usage, in time order."""

    account: str
    day: date
    events: tuple[DemoEvent, ...]

    def quantity(self, event_type: str) -> int:
        """Total ``data.quantity`` of the events of ``event_type``."""
        return sum(e.quantity for e in self.events if e.event_type == event_type)

    def count(self, event_type: str) -> int:
        """How many events of ``event_type``."""
        return sum(1 for e in self.events if e.event_type == event_type)


def demo_day(account: str, day: date, *, chat_tokens: int, seed: int = 2026) -> DemoDay:
    """Image generations, a few websites and ``chat_tokens`` tokens of chat over ``day``."""
    rng = random.Random(f"{seed}:{day.isoformat()}")  # noqa: S311 - reproducible, not secret
    start = datetime.combine(day, time(0), tzinfo=UTC)
    drafts: list[tuple[datetime, str, str, int, dict[str, str]]] = []
    for tokens in _split(rng, chat_tokens, CHAT_EVENTS):
        model = rng.choice(CHAT_MODELS)
        drafts.append((_moment(rng, start), CHAT, CHAT_TYPE, tokens, {"model": model}))
    for _ in range(IMAGE_EVENTS):
        images = rng.choice(IMAGES_PER_REQUEST)
        dims = {"model": "sdxl", "size": rng.choice(("1024x1024", "1024x1792"))}
        drafts.append((_moment(rng, start), GENERATOR, IMAGE_TYPE, images, dims))
    for _ in range(WEBSITE_EVENTS):
        template = rng.choice(("portfolio", "shop", "landing"))
        drafts.append((_moment(rng, start), GENERATOR, WEBSITE_TYPE, 1, {"template": template}))
    drafts.sort(key=lambda d: (d[0], d[2]))
    events = tuple(
        _event(account, n, when, source, event_type, quantity, dims)
        for n, (when, source, event_type, quantity, dims) in enumerate(drafts)
    )
    return DemoDay(account=account, day=day, events=events)


def _split(rng: random.Random, total: int, parts: int) -> Sequence[int]:
    """``total`` as ``parts`` positive sizes that vary like real completions do."""
    if total < parts:
        return [1] * total
    weights = [rng.lognormvariate(0, 0.7) for _ in range(parts)]
    scale = (total - parts) / sum(weights)
    sizes = [1 + int(w * scale) for w in weights]
    sizes[sizes.index(max(sizes))] += total - sum(sizes)
    return sizes


def _moment(rng: random.Random, start: datetime) -> datetime:
    hour = rng.choices(range(24), weights=HOURLY_WEIGHTS)[0]
    return start + timedelta(hours=hour, seconds=rng.randrange(3600))


def _event(  # noqa: PLR0917 - one call site, unpacking one draft
    account: str,
    n: int,
    when: datetime,
    source: str,
    event_type: str,
    quantity: int,
    dimensions: dict[str, str],
) -> DemoEvent:
    event_id = uuid.uuid5(_IDS, f"{account}/{n}")
    body = {
        "specversion": "1.0",
        "id": str(event_id),
        "source": source,
        "type": event_type,
        "subject": account,
        "time": when.isoformat().replace("+00:00", "Z"),
        "datacontenttype": "application/json",
        "data": {"quantity": quantity, **dimensions},
    }
    return DemoEvent(source, event_type, quantity, when, json.dumps(body).encode())


@dataclass(frozen=True, slots=True)
class DemoPlan:
    """The plan the demo account is on, and its terms for the chat meter."""

    plan: Plan
    chat_meter: str | None
    terms: PlanMeter | None

    @property
    def chat_tokens(self) -> int:
        """A day of chat that goes a quarter past the plan's limit (or 50,000 tokens)."""
        limit = self.terms.limit if self.terms is not None else None
        return int(limit * 5 / 4) if limit is not None else 50_000


def demo_plan(book: PriceBook) -> DemoPlan:
    """The plan with the smallest limit on the meter ``chat.tokens`` feeds (so a day of
    chat crosses every threshold), or the default plan when none limits it."""
    meters = [m.name for m in book.meters.values() if CHAT_TYPE in m.event_types]
    chat_meter = meters[0] if meters else None
    limited = [
        (terms.limit, plan.name, terms)
        for plan in book.plans.values()
        if chat_meter is not None
        and (terms := plan.limit_of(chat_meter)) is not None
        and terms.limit is not None
    ]
    if not limited:
        return DemoPlan(book.plan(book.default_plan), chat_meter, None)
    _, name, terms = min(limited, key=lambda x: (x[0], x[1]))
    return DemoPlan(book.plans[name], chat_meter, terms)


def demo_period(now: datetime, grace: timedelta) -> BillingPeriod:
    """The latest calendar month (a new account's periods) that ended at least ``grace``
    ago: the scheduler would close it now."""
    current = calendar_month_of(now - grace)
    return calendar_month_of(current.start - timedelta(microseconds=1))

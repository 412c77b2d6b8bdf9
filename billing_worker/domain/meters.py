"""Which meters an event type feeds: the launch catalog until the price book replaces it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from billing_worker.domain.errors import UnknownEventType

DEFAULT_PLAN = "FREE"
"""The plan an account starts on when it is first seen."""


@dataclass(frozen=True, slots=True)
class MeterCatalog:
    """Maps event types to the meters they feed; an event may feed several meters."""

    meters_by_event_type: Mapping[str, tuple[str, ...]]
    default_plan: str = DEFAULT_PLAN

    def meters_for(self, event_type: str) -> tuple[str, ...]:
        """The meters fed by ``event_type``; unknown types are a permanent error."""
        meters = self.meters_by_event_type.get(event_type)
        if not meters:
            raise UnknownEventType(f"no meter is fed by event type {event_type!r}")
        return meters


LAUNCH_CATALOG = MeterCatalog(
    MappingProxyType(
        {
            "generator.website_generated": ("websites_generated",),
            "generator.image_generated": ("images_generated",),
            "chat.tokens": ("tokens",),
            "api.call": ("api_calls",),
            "api.call_premium": ("premium_api_calls",),
            "storage.gb_month": ("storage_gb_months",),
            "ai.inference": ("inference_calls",),
        }
    )
)
"""The platform's launch event types (CONTRACTS.md), one meter each."""

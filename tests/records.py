"""Usage records for tests that call the service layer directly."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from billing_worker.domain.usage import UsageRecord

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
_ids = iter(range(1, 10**9))


def usage(
    event_type: str = "chat.tokens",
    quantity: int | str = 10,
    account: str = "acct_1",
    *,
    at: datetime = NOW,
    **dimensions: Any,
) -> UsageRecord:
    """A usage record with a fresh event id (``e<n>``, unique in the test session)."""
    return UsageRecord(
        source="svc",
        event_id=f"e{next(_ids)}",
        event_type=event_type,
        account=account,
        occurred_at=at,
        quantity=Decimal(quantity),
        dimensions=dimensions,
    )

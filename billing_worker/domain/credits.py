"""Prepaid credits: which grants a charge burns, in which order, and when alerts fire.

Burn order: lower ``priority`` number first, then the soonest expiry (grants that never
expire last), then the oldest grant. A plan grant only pays for usage in its own period;
purchased and promotional grants pay for any. What no grant covers is a shortfall:
recorded, never hidden.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, localcontext

from billing_worker.domain.periods import BillingPeriod
from billing_worker.domain.pricebook import EXACT, CreditSource, PriceBook
from billing_worker.domain.usage import LedgerEntry

ZERO = Decimal(0)


@dataclass(frozen=True, slots=True)
class GrantBalance:
    """A credit grant as it stands: what is left of it and when it can be used."""

    grant_id: int
    account: str
    source: CreditSource
    remaining: Decimal
    priority: int
    created_at: datetime
    expires_at: datetime | None = None
    period_start: datetime | None = None
    """Set for plan grants: the period whose usage they pay for."""

    def pays_for(self, period: BillingPeriod) -> bool:
        """Whether this grant may pay for usage in ``period``."""
        return self.source is not CreditSource.PLAN or self.period_start == period.start


def burn_order(grant: GrantBalance) -> tuple[int, bool, datetime | None, datetime, int]:
    """Sort key: priority, then soonest expiry (never-expiring last), then oldest."""
    return (
        grant.priority,
        grant.expires_at is None,
        grant.expires_at,
        grant.created_at,
        grant.grant_id,
    )


@dataclass(frozen=True, slots=True)
class CreditCharge:
    """Credits one usage entry costs."""

    account: str
    meter: str
    credits: Decimal
    period: BillingPeriod
    source: str
    event_id: str
    occurred_at: datetime


def credit_charges(entries: Iterable[LedgerEntry], book: PriceBook) -> list[CreditCharge]:
    """The credit cost of each entry on a credit-priced meter, in a fixed order."""
    with localcontext(EXACT):
        charges = [
            CreditCharge(
                account=entry.account,
                meter=entry.meter,
                credits=entry.quantity * book.credit_costs[entry.meter],
                period=entry.period,
                source=entry.source,
                event_id=entry.event_id,
                occurred_at=entry.occurred_at,
            )
            for entry in entries
            if entry.meter in book.credit_costs and entry.quantity > 0
        ]
    charges.sort(key=lambda c: (c.account, c.occurred_at, c.source, c.event_id, c.meter))
    return charges


class MovementKind(enum.StrEnum):
    """What a credit-ledger movement records."""

    BURN = "burn"
    SHORTFALL = "shortfall"


@dataclass(frozen=True, slots=True)
class CreditMovement:
    """Credits taken from one grant for one charge (or, for a shortfall, from none)."""

    kind: MovementKind
    charge: CreditCharge
    credits: Decimal
    grant_id: int | None = None


class AlertKind(enum.StrEnum):
    """Credit balance alerts."""

    LOW = "credits.low"
    EXHAUSTED = "credits.exhausted"


@dataclass(frozen=True, slots=True)
class CreditAlert:
    """A balance crossed an alert level because of ``charge``."""

    kind: AlertKind
    account: str
    balance: Decimal
    threshold: Decimal
    shortfall: Decimal
    charge: CreditCharge


@dataclass(slots=True)
class BurnResult:
    """Movements to append, grants' new remaining amounts, alerts to publish."""

    movements: list[CreditMovement] = field(default_factory=list)
    remaining: dict[int, Decimal] = field(default_factory=dict)
    alerts: list[CreditAlert] = field(default_factory=list)


def burn_credits(
    grants: Sequence[GrantBalance], charges: Sequence[CreditCharge], *, low_balance: Decimal
) -> BurnResult:
    """Burn ``charges`` from ``grants`` (see ``_burn``), in exact arithmetic."""
    with localcontext(EXACT):
        return _burn(grants, charges, low_balance)


def _burn(
    grants: Sequence[GrantBalance], charges: Sequence[CreditCharge], low_balance: Decimal
) -> BurnResult:
    """Burn ``charges`` from ``grants`` in burn order; report movements and alerts.

    An alert fires when a charge moves an account's balance (every usable grant) across
    a level: ``credits.low`` from ``>= low_balance`` to below it, ``credits.exhausted``
    from above zero to zero. A balance already below a level does not fire it again
    until it has been topped up above it.
    """
    result = BurnResult()
    remaining = {g.grant_id: g.remaining for g in grants}
    by_account: dict[str, list[GrantBalance]] = {}
    for grant in sorted(grants, key=burn_order):
        by_account.setdefault(grant.account, []).append(grant)
    for charge in charges:
        owned = by_account.get(charge.account, [])
        before = sum((remaining[g.grant_id] for g in owned), ZERO)
        due = charge.credits
        for grant in owned:
            if due <= 0:
                break
            available = remaining[grant.grant_id]
            if available <= 0 or not grant.pays_for(charge.period):
                continue
            taken = min(available, due)
            remaining[grant.grant_id] = available - taken
            due -= taken
            result.movements.append(
                CreditMovement(MovementKind.BURN, charge, taken, grant.grant_id)
            )
        if due > 0:
            result.movements.append(CreditMovement(MovementKind.SHORTFALL, charge, due))
        after = sum((remaining[g.grant_id] for g in owned), ZERO)
        shortfall = max(due, ZERO)
        if low_balance > 0 and before >= low_balance > after:
            result.alerts.append(
                CreditAlert(AlertKind.LOW, charge.account, after, low_balance, shortfall, charge)
            )
        if before > 0 >= after:
            result.alerts.append(
                CreditAlert(AlertKind.EXHAUSTED, charge.account, after, ZERO, shortfall, charge)
            )
    original = {g.grant_id: g.remaining for g in grants}
    result.remaining = {
        grant_id: amount for grant_id, amount in remaining.items() if amount != original[grant_id]
    }
    return result

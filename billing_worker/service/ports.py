"""What the use cases need from storage, as Protocols the adapters implement."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Protocol, Self

from billing_worker.domain.usage import AggregateDelta, IdempotencyKey, LedgerEntry, UsageRecord


class UsageStore(Protocol):
    """Idempotency records, the usage ledger and its aggregates, inside one transaction."""

    async def claim_keys(self, records: Sequence[UsageRecord]) -> set[IdempotencyKey]:
        """Insert idempotency records; return the keys this call inserted (not seen before)."""
        ...

    async def stored_fingerprints(
        self, keys: Sequence[IdempotencyKey]
    ) -> dict[IdempotencyKey, bytes]:
        """The content fingerprints already stored for ``keys``."""
        ...

    async def ensure_accounts(self, accounts: Sequence[str], plan: str) -> None:
        """Create the accounts that do not exist yet, on ``plan``."""
        ...

    async def append_usage(
        self, entries: Sequence[LedgerEntry], deltas: Sequence[AggregateDelta]
    ) -> None:
        """Append ledger rows and add ``deltas`` (sorted by key) to the running totals."""
        ...


class UnitOfWork(Protocol):
    """One database transaction. Leaving it without ``commit()`` rolls back.

    Storage failures leave it translated: transient ones as ``TransientError``, data
    the store refuses as ``UnprocessableEvent``.
    """

    @property
    def usage(self) -> UsageStore:
        """The usage store bound to this transaction."""
        ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    async def commit(self) -> None:
        """Make the transaction's writes durable."""
        ...


UnitOfWorkFactory = Callable[[], UnitOfWork]

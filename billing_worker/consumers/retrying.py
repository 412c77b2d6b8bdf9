"""Handling one batch: retry transient failures, isolate refused events by bisection."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

import structlog
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
    wait_random,
)

from billing_worker.adapters.amqp.delivery import Delivery
from billing_worker.adapters.observability.metrics import QueueMetrics
from billing_worker.consumers.settlement import Outcome
from billing_worker.domain.errors import PermanentError, TransientError

log = structlog.get_logger(__name__)

CommandT = TypeVar("CommandT")


class BatchHandler(Protocol[CommandT]):
    """What a queue's consumer module provides to the machinery."""

    def decode(self, message: Delivery) -> CommandT:
        """Turn one delivery into a command, or raise ``PermanentError``."""
        ...

    async def handle(self, commands: Sequence[CommandT]) -> Sequence[Outcome]:
        """Apply commands in one transaction; outcomes aligned with ``commands``."""
        ...


@dataclass(frozen=True, slots=True)
class BatchPolicy:
    """Batch bounds, pipelining, and the retry policy for transient failures."""

    max_size: int = 500
    max_wait: float = 0.005
    max_in_flight: int = 2
    retry_attempts: int = 6
    retry_max_wait: float = 5.0
    requeue_pause: float = 5.0


class StorageUnavailable(Exception):
    """Retries ran out (or the handler failed unexpectedly): give the batch back."""


class RetryingHandler(Generic[CommandT]):
    """Runs a ``BatchHandler`` under the transient-retry policy, bisecting refused batches."""

    def __init__(
        self,
        handler: BatchHandler[CommandT],
        policy: BatchPolicy,
        metrics: QueueMetrics,
        queue: str,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._handler = handler
        self._policy = policy
        self._metrics = metrics
        self._name = queue
        self._sleep = sleep

    async def handle(self, commands: Sequence[CommandT]) -> list[Outcome]:
        """Handle the batch; if the store refuses it, split it until the culprit stands alone."""
        try:
            return list(await self._with_retries(commands))
        except PermanentError as exc:
            if len(commands) == 1:
                return [exc]
            middle = len(commands) // 2
            log.warning("batch_refused_bisecting", queue=self._name, size=len(commands))
            first = await self.handle(commands[:middle])
            return first + await self.handle(commands[middle:])

    async def _with_retries(self, commands: Sequence[CommandT]) -> Sequence[Outcome]:
        policy = self._policy
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(TransientError),
            stop=stop_after_attempt(policy.retry_attempts),
            wait=wait_exponential(multiplier=0.05, max=policy.retry_max_wait)
            + wait_random(0, 0.05),
            sleep=self._sleep,
            before_sleep=self._on_retry,
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    return await self._handler.handle(commands)
        except TransientError as exc:
            log.error(  # noqa: TRY400 - the cause is in `error`; a traceback adds nothing
                "batch_retries_exhausted", queue=self._name, error=str(exc)
            )
            raise StorageUnavailable from exc
        except PermanentError:
            raise
        except Exception as exc:
            # A bug must not eat messages: hand them back and say so loudly.
            log.exception("batch_handler_failed", queue=self._name)
            raise StorageUnavailable from exc
        raise AssertionError("tenacity returned without an outcome")  # pragma: no cover

    def _on_retry(self, state: RetryCallState) -> None:
        self._metrics.retries.inc()
        error = state.outcome.exception() if state.outcome else None
        log.warning("batch_retry", queue=self._name, attempt=state.attempt_number, error=str(error))

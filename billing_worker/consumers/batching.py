"""The one place deliveries are settled: batch, decode, handle, dead-letter, ack or requeue.

Policy, for every consumed queue:
- each delivery is decoded on its own; a ``PermanentError`` dead-letters it with its reason;
- decoded commands are handled as one batch; a ``TransientError`` retries the whole batch
  with backoff, and when retries run out the deliveries go back to the queue, unacked;
- a ``PermanentError`` raised for the whole batch is isolated by bisection, so one event the
  store refuses is dead-lettered and the rest are recorded;
- dead letters are confirmed by the broker before the originals are acked; the batch is
  then acked with one ``multiple`` ack per channel.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

import structlog
from aio_pika.abc import AbstractIncomingMessage, AbstractQueue
from aio_pika.exceptions import ChannelInvalidStateError
from aiormq.exceptions import AMQPError
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
    wait_random,
)

from billing_worker.adapters.amqp.dead_letters import DeadLetter, DeadLetterPublisher
from billing_worker.adapters.observability.metrics import QueueMetrics
from billing_worker.domain.errors import PermanentError, TransientError

log = structlog.get_logger(__name__)

CommandT = TypeVar("CommandT")


class Settled(enum.Enum):
    """A handled command that needs no dead letter."""

    RECORDED = "recorded"
    DUPLICATE = "duplicate"


Outcome = Settled | PermanentError


class BatchHandler(Protocol[CommandT]):
    """What a queue's consumer module provides to the machinery."""

    def decode(self, message: AbstractIncomingMessage) -> CommandT:
        """Turn one delivery into a command, or raise ``PermanentError``."""
        ...

    async def handle(self, commands: Sequence[CommandT]) -> Sequence[Outcome]:
        """Apply commands in one transaction; outcomes aligned with ``commands``."""
        ...


@dataclass(frozen=True, slots=True)
class BatchPolicy:
    """Batch bounds and the retry policy for transient failures."""

    max_size: int = 500
    max_wait: float = 0.02
    retry_attempts: int = 6
    retry_max_wait: float = 5.0
    requeue_pause: float = 5.0


class _StorageUnavailable(Exception):
    """Retries ran out (or the handler failed unexpectedly): give the batch back."""


class BatchingConsumer(Generic[CommandT]):
    """Consumes one queue, settling deliveries in batches per the module policy."""

    def __init__(
        self,
        queue: AbstractQueue,
        handler: BatchHandler[CommandT],
        dead_letters: DeadLetterPublisher,
        metrics: QueueMetrics,
        policy: BatchPolicy,
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._queue = queue
        self._name = queue.name
        self._handler = handler
        self._dead_letters = dead_letters
        self._metrics = metrics
        self._policy = policy
        self._sleep = sleep
        self._buffer: list[tuple[AbstractIncomingMessage, float]] = []
        self._arrived = asyncio.Event()
        self._full = asyncio.Event()
        self._stopping = False
        self._consumer_tag: str | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Begin consuming and settling."""
        self._consumer_tag = await self._queue.consume(self._on_delivery)
        self._task = asyncio.create_task(self._run(), name=f"settle:{self._name}")
        log.info("consumer_started", queue=self._name, max_batch=self._policy.max_size)

    async def stop(self, grace: float) -> bool:
        """Stop taking deliveries, settle what was taken, within ``grace`` seconds.

        Returns whether everything taken was settled. Whatever was not is left unacked
        and the broker redelivers it when the channel closes.
        """
        self._stopping = True
        if self._consumer_tag is not None:
            try:
                await self._queue.cancel(self._consumer_tag)
            except (AMQPError, ChannelInvalidStateError, ConnectionError) as exc:
                log.warning("consumer_cancel_failed", queue=self._name, error=repr(exc))
        self._arrived.set()
        self._full.set()
        if self._task is None:
            return True
        try:
            await asyncio.wait_for(asyncio.shield(self._task), grace)
        except TimeoutError:
            self._task.cancel()
            log.warning("drain_timed_out", queue=self._name, unsettled=len(self._buffer))
            return False
        return True

    @property
    def running(self) -> bool:
        """Whether the settling loop is alive."""
        return self._task is not None and not self._task.done()

    async def _on_delivery(self, message: AbstractIncomingMessage) -> None:
        # No await here: deliveries must enter the buffer in delivery-tag order.
        self._buffer.append((message, time.monotonic()))
        if len(self._buffer) == 1:
            self._arrived.set()
        if len(self._buffer) >= self._policy.max_size:
            self._full.set()

    async def _run(self) -> None:
        while True:
            if not self._buffer:
                if self._stopping:
                    return
                self._arrived.clear()
                await self._arrived.wait()
                continue
            await self._wait_for_batch()
            batch = [m for m, _ in self._buffer[: self._policy.max_size]]
            del self._buffer[: self._policy.max_size]
            live = [m for m in batch if _channel_open(m)]
            if live:
                await self._settle(live)

    async def _wait_for_batch(self) -> None:
        """Until the batch is full, the oldest delivery has waited ``max_wait``, or stop."""
        if self._stopping or len(self._buffer) >= self._policy.max_size:
            return
        remaining = self._buffer[0][1] + self._policy.max_wait - time.monotonic()
        if remaining <= 0:
            return
        self._full.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._full.wait(), remaining)

    async def _settle(self, batch: list[AbstractIncomingMessage]) -> None:
        started = time.perf_counter()
        decoded: list[AbstractIncomingMessage] = []
        commands: list[CommandT] = []
        letters: list[DeadLetter] = []
        for message in batch:
            try:
                commands.append(self._handler.decode(message))
                decoded.append(message)
            except PermanentError as exc:
                letters.append(DeadLetter(message, exc.reason, exc.detail))
        outcomes: Sequence[Outcome] = []
        try:
            if commands:
                outcomes = await self._handle_isolating(commands)
        except _StorageUnavailable:
            await self._give_back(decoded, letters)
            return
        settled = {Settled.RECORDED: 0, Settled.DUPLICATE: 0}
        for message, outcome in zip(decoded, outcomes, strict=True):
            if isinstance(outcome, PermanentError):
                letters.append(DeadLetter(message, outcome.reason, outcome.detail))
            else:
                settled[outcome] += 1
        unconfirmed = await self._dead_letter(letters)
        await self._acknowledge(batch, unconfirmed)
        self._count(settled, letters, unconfirmed)
        self._metrics.batch_size.observe(len(batch))
        seconds = time.perf_counter() - started
        self._metrics.batch_duration.observe(seconds)
        log.info(
            "batch_settled",
            queue=self._name,
            size=len(batch),
            recorded=settled[Settled.RECORDED],
            duplicate=settled[Settled.DUPLICATE],
            rejected=len(letters) - len(unconfirmed),
            requeued=len(unconfirmed),
            seconds=round(seconds, 4),
        )

    async def _handle_isolating(self, commands: Sequence[CommandT]) -> list[Outcome]:
        """Handle the batch; if the store refuses it, split it until the culprit stands alone."""
        try:
            return list(await self._handle_with_retries(commands))
        except PermanentError as exc:
            if len(commands) == 1:
                return [exc]
            middle = len(commands) // 2
            log.warning("batch_refused_bisecting", queue=self._name, size=len(commands))
            first = await self._handle_isolating(commands[:middle])
            return first + await self._handle_isolating(commands[middle:])

    async def _handle_with_retries(self, commands: Sequence[CommandT]) -> Sequence[Outcome]:
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
            raise _StorageUnavailable from exc
        except PermanentError:
            raise
        except Exception as exc:
            # A bug must not eat messages: hand them back and say so loudly.
            log.exception("batch_handler_failed", queue=self._name)
            raise _StorageUnavailable from exc
        raise AssertionError("tenacity returned without an outcome")  # pragma: no cover

    def _on_retry(self, state: RetryCallState) -> None:
        self._metrics.retries.inc()
        error = state.outcome.exception() if state.outcome else None
        log.warning(
            "batch_retry",
            queue=self._name,
            attempt=state.attempt_number,
            error=str(error),
        )

    async def _dead_letter(self, letters: list[DeadLetter]) -> set[AbstractIncomingMessage]:
        """Publish dead letters; return the originals the broker did not confirm."""
        if not letters:
            return set()
        confirmed = await self._dead_letters.publish(self._name, letters)
        return {letter.message for letter, ok in zip(letters, confirmed, strict=True) if not ok}

    async def _acknowledge(
        self, batch: list[AbstractIncomingMessage], unconfirmed: set[AbstractIncomingMessage]
    ) -> None:
        """Ack the batch (one multiple-ack per channel), or one by one if some must go back."""
        if not unconfirmed:
            by_channel: dict[int, AbstractIncomingMessage] = {}
            for message in batch:  # delivery order: the last one per channel has the top tag
                by_channel[_channel_key(message)] = message
            for last in by_channel.values():
                await _settle_safely(last.ack(multiple=True), self._name)
            return
        for message in batch:
            if message in unconfirmed:
                await _settle_safely(message.nack(requeue=True), self._name)
            else:
                await _settle_safely(message.ack(), self._name)

    async def _give_back(
        self, decoded: list[AbstractIncomingMessage], letters: list[DeadLetter]
    ) -> None:
        """Storage is unavailable: requeue the valid deliveries, still dead-letter the bad."""
        unconfirmed = await self._dead_letter(letters)
        for letter in letters:
            if letter.message in unconfirmed:
                await _settle_safely(letter.message.nack(requeue=True), self._name)
            else:
                await _settle_safely(letter.message.ack(), self._name)
        for message in decoded:
            await _settle_safely(message.nack(requeue=True), self._name)
        self._count({}, letters, unconfirmed)
        self._metrics.requeued.inc(len(decoded))
        log.warning(
            "batch_requeued",
            queue=self._name,
            requeued=len(decoded),
            pause_seconds=self._policy.requeue_pause,
        )
        if not self._stopping:
            await self._sleep(self._policy.requeue_pause)

    def _count(
        self,
        settled: dict[Settled, int],
        letters: list[DeadLetter],
        unconfirmed: set[AbstractIncomingMessage],
    ) -> None:
        # received first: a scrape may catch receipts not yet split into outcomes,
        # never outcomes without their receipts.
        m = self._metrics
        recorded = settled.get(Settled.RECORDED, 0)
        duplicate = settled.get(Settled.DUPLICATE, 0)
        rejected = [letter for letter in letters if letter.message not in unconfirmed]
        m.received.inc(recorded + duplicate + len(rejected))
        for letter in rejected:
            m.rejected(letter.reason).inc()
        m.recorded.inc(recorded)
        m.duplicate.inc(duplicate)
        m.requeued.inc(len(unconfirmed))


def _channel_open(message: AbstractIncomingMessage) -> bool:
    """False for a delivery whose channel died: its tag is void and it will be redelivered."""
    try:
        return not message.channel.is_closed
    except ChannelInvalidStateError:
        return False


def _channel_key(message: AbstractIncomingMessage) -> int:
    try:
        return id(message.channel)
    except ChannelInvalidStateError:
        return -1


async def _settle_safely(settlement: Awaitable[None], queue: str) -> None:
    """Ack or nack; if the channel died meanwhile the broker redelivers, and dedupe absorbs it."""
    try:
        await settlement
    except (AMQPError, ChannelInvalidStateError, ConnectionError, RuntimeError) as exc:
        log.warning("settlement_lost_with_channel", queue=queue, error=repr(exc))

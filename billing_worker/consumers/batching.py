"""The one place deliveries are settled: batch, decode, handle, dead-letter, ack or requeue.

Policy, for every consumed queue:
- each delivery is decoded on its own; a ``PermanentError`` dead-letters it with its reason;
- decoded commands are handled as one batch; a ``TransientError`` retries the whole batch
  with backoff, and when retries run out the deliveries go back to the queue, unacked;
- a ``PermanentError`` raised for the whole batch is isolated by bisection, so one event the
  store refuses is dead-lettered and the rest are recorded;
- dead letters are confirmed by the broker before the originals are acked.

Batches are pipelined: while one batch's transaction runs, the next is decoded and its
transaction started (up to ``max_in_flight``). Each batch still dead-letters and acks only
after the batch before it has, so a multiple-ack never covers an unsettled delivery.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import structlog
from aio_pika.exceptions import ChannelInvalidStateError
from aiormq.exceptions import AMQPError

from billing_worker.adapters.amqp.dead_letters import DeadLetter, DeadLetterPublisher
from billing_worker.adapters.amqp.delivery import Delivery, DeliverySource
from billing_worker.adapters.observability.metrics import QueueMetrics
from billing_worker.consumers.retrying import (
    BatchHandler,
    BatchPolicy,
    RetryingHandler,
    StorageUnavailable,
)
from billing_worker.consumers.settlement import (
    Outcome,
    Settled,
    acknowledge,
    channel_key,
    channel_open,
    count_outcomes,
    settle_safely,
)
from billing_worker.domain.errors import PermanentError

log = structlog.get_logger(__name__)

CommandT = TypeVar("CommandT")

__all__ = ["BatchHandler", "BatchPolicy", "BatchingConsumer", "Outcome", "Settled"]


@dataclass(slots=True)
class _Batch(Generic[CommandT]):
    """One batch between decoding and settlement."""

    deliveries: list[Delivery]
    decoded: list[Delivery] = field(default_factory=list)
    commands: list[CommandT] = field(default_factory=list)
    letters: list[DeadLetter] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)


class BatchingConsumer(Generic[CommandT]):
    """Consumes one queue, settling deliveries in batches per the module policy."""

    def __init__(
        self,
        queue: DeliverySource,
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
        self._retrying = RetryingHandler(handler, policy, metrics, self._name, sleep)
        self._buffer: list[tuple[Delivery, float]] = []
        self._arrived = asyncio.Event()
        self._wake = asyncio.Event()
        self._busy = 0
        self._slots = asyncio.Semaphore(policy.max_in_flight)
        self._in_flight: set[asyncio.Task[None]] = set()
        self._dirty_channels: set[int] = set()
        self._resume_at = 0.0
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
        if self._consumer_tag is not None:
            try:
                await self._queue.cancel(self._consumer_tag)
            except (AMQPError, ChannelInvalidStateError, ConnectionError) as exc:
                log.warning("consumer_cancel_failed", queue=self._name, error=repr(exc))
        # Only now: deliveries sent before the broker confirmed the cancel are in the buffer.
        self._stopping = True
        self._arrived.set()
        self._wake.set()
        if self._task is None:
            return True
        try:
            await asyncio.wait_for(asyncio.shield(self._task), grace)
        except TimeoutError:
            tasks = [self._task, *self._in_flight]
            for task in tasks:
                task.cancel()
            await asyncio.wait(tasks, timeout=5)
            log.warning("drain_timed_out", queue=self._name, unsettled=len(self._buffer))
            return False
        except Exception:
            log.exception("consumer_loop_failed", queue=self._name)
            return False
        return True

    @property
    def finished(self) -> asyncio.Future[None] | None:
        """The settling loop; done only after ``stop`` or if it died."""
        return self._task

    @property
    def running(self) -> bool:
        """Whether the settling loop is alive."""
        return self._task is not None and not self._task.done()

    def _on_delivery(self, message: Delivery) -> None:
        # Synchronous: deliveries must enter the buffer in delivery-tag order.
        self._buffer.append((message, time.monotonic()))
        if len(self._buffer) == 1:
            self._arrived.set()
        if len(self._buffer) >= self._policy.max_size:
            self._wake.set()

    async def _run(self) -> None:
        previous: asyncio.Task[None] | None = None
        try:
            while True:
                if not self._buffer:
                    if self._stopping:
                        return
                    self._arrived.clear()
                    await self._arrived.wait()
                    continue
                await self._slots.acquire()
                await self._pause_if_asked()
                await self._wait_for_batch()
                taken = [m for m, _ in self._buffer[: self._policy.max_size]]
                del self._buffer[: self._policy.max_size]
                live = [m for m in taken if channel_open(m)]
                if not live:
                    self._slots.release()
                    continue
                batch = self._decode(live)
                self._busy += 1
                previous = asyncio.create_task(self._settle(batch, previous))
                self._in_flight.add(previous)
                previous.add_done_callback(self._in_flight.discard)
        finally:
            if previous is not None and not previous.done():
                await asyncio.shield(previous)

    async def _pause_if_asked(self) -> None:
        delay = self._resume_at - time.monotonic()
        if delay > 0 and not self._stopping:
            await self._sleep(delay)

    async def _wait_for_batch(self) -> None:
        """Until the batch is full, or it has waited ``max_wait`` with no batch in flight.

        Group commit: when idle, a lone delivery waits at most ``max_wait`` (latency);
        while a batch is in flight, deliveries gather until it finishes, so a busy worker
        commits few large batches instead of many small ones competing for the CPU. A
        full batch never waits and may run alongside the one in flight.
        """
        while not self._stopping and len(self._buffer) < self._policy.max_size:
            waited = time.monotonic() - self._buffer[0][1]
            if waited >= self._policy.max_wait and self._busy == 0:
                return
            timeout = None if self._busy else self._policy.max_wait - waited
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    def _decode(self, deliveries: list[Delivery]) -> _Batch[CommandT]:
        batch: _Batch[CommandT] = _Batch(deliveries)
        for message in deliveries:
            try:
                batch.commands.append(self._handler.decode(message))
                batch.decoded.append(message)
            except PermanentError as exc:
                batch.letters.append(DeadLetter(message, exc.reason, exc.detail))
            except Exception as exc:
                # Decoding is pure and per message: an unforeseen error is this message's,
                # and redelivering it would fail the same way forever.
                log.exception("decode_failed", queue=self._name)
                detail = f"decoding raised {type(exc).__name__}: {exc}"
                batch.letters.append(DeadLetter(message, "undecodable", detail))
        return batch

    async def _settle(self, batch: _Batch[CommandT], previous: asyncio.Task[None] | None) -> None:
        """Handle the batch now; dead-letter and ack it once ``previous`` has settled.

        Never fails silently: if settling breaks off, the batch's channels are marked
        dirty (no later multiple-ack may cover them) and its deliveries are nacked.
        """
        try:
            try:
                outcomes = await self._retrying.handle(batch.commands) if batch.commands else []
            except StorageUnavailable:
                await _after(previous)
                await self._give_back(batch)
                return
            await _after(previous)
            await self._conclude(batch, outcomes)
        except BaseException as exc:
            self._dirty_channels.update(channel_key(m) for m in batch.deliveries)
            if not isinstance(exc, Exception):
                raise
            log.exception("batch_settlement_failed", queue=self._name)
            for message in batch.deliveries:
                await settle_safely(message.nack(requeue=True), self._name)
        finally:
            self._busy -= 1
            self._wake.set()
            self._slots.release()

    async def _conclude(self, batch: _Batch[CommandT], outcomes: Sequence[Outcome]) -> None:
        settled = {Settled.RECORDED: 0, Settled.DUPLICATE: 0}
        letters = list(batch.letters)
        for message, outcome in zip(batch.decoded, outcomes, strict=True):
            if isinstance(outcome, PermanentError):
                letters.append(DeadLetter(message, outcome.reason, outcome.detail))
            else:
                settled[outcome] += 1
        unconfirmed = await self._dead_letter(letters)
        await acknowledge(self._name, batch.deliveries, unconfirmed, self._dirty_channels)
        rejected = count_outcomes(self._metrics, settled, letters, unconfirmed)
        self._metrics.batch_size.observe(len(batch.deliveries))
        seconds = time.perf_counter() - batch.started
        self._metrics.batch_duration.observe(seconds)
        log.info(
            "batch_settled",
            queue=self._name,
            size=len(batch.deliveries),
            recorded=settled[Settled.RECORDED],
            duplicate=settled[Settled.DUPLICATE],
            rejected=rejected,
            requeued=len(unconfirmed),
            seconds=round(seconds, 4),
        )

    async def _dead_letter(self, letters: list[DeadLetter]) -> set[Delivery]:
        """Publish dead letters; return the originals that were not (they go back).

        A delivery whose channel died is not dead-lettered: it cannot be acked, so the
        broker will deliver it again and it would land in the DLQ twice.
        """
        if not letters:
            return set()
        live = [letter for letter in letters if channel_open(letter.message)]
        not_sent = {letter.message for letter in letters if not channel_open(letter.message)}
        confirmed = await self._dead_letters.publish(self._name, live) if live else []
        unconfirmed = {m.message for m, ok in zip(live, confirmed, strict=True) if not ok}
        return not_sent | unconfirmed

    async def _give_back(self, batch: _Batch[CommandT]) -> None:
        """Storage is unavailable: requeue the valid deliveries, still dead-letter the bad."""
        unconfirmed = await self._dead_letter(batch.letters)
        give_back = unconfirmed | set(batch.decoded)
        await acknowledge(self._name, batch.deliveries, give_back, self._dirty_channels)
        count_outcomes(self._metrics, {}, batch.letters, unconfirmed)
        self._metrics.requeued.inc(len(batch.decoded))
        self._resume_at = time.monotonic() + self._policy.requeue_pause
        log.warning(
            "batch_requeued",
            queue=self._name,
            requeued=len(batch.decoded),
            pause_seconds=self._policy.requeue_pause,
        )


async def _after(previous: asyncio.Task[None] | None) -> None:
    """Wait for the previous batch to finish settling, whatever its fate.

    Its failure is its own and already handled (its channels are marked dirty);
    ``asyncio.wait`` neither raises it nor propagates its cancellation here.
    """
    if previous is not None:
        await asyncio.wait({previous})

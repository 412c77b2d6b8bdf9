"""The shared settling machinery: batching, dead letters before acks, retries, requeues."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, cast

import pytest

from billing_worker.adapters.amqp.dead_letters import DeadLetter, DeadLetterPublisher
from billing_worker.adapters.amqp.delivery import Delivery, DeliverySource
from billing_worker.adapters.observability.metrics import Metrics
from billing_worker.consumers.batching import BatchingConsumer, BatchPolicy, Outcome, Settled
from billing_worker.consumers.settlement import settle_safely
from billing_worker.domain.errors import (
    IdempotencyConflict,
    SchemaViolation,
    TransientError,
    UnprocessableEvent,
)
from tests.fakes import FakeChannel, FakeDeadLetters, FakeMessage, FakeQueue

QUEUE = "test.billing-worker.usage"


class ScriptedHandler:
    """Decodes bodies starting with b'bad' as schema violations; handles per a script."""

    def __init__(self) -> None:
        self.batches: list[list[bytes]] = []
        self.transient_failures = 0
        self.poison: set[bytes] = set()
        self.conflicts: set[bytes] = set()
        self.crash = False

    def decode(self, message: Delivery) -> bytes:
        if message.body.startswith(b"bad"):
            raise SchemaViolation(f"cannot read {message.body!r}")
        return message.body

    async def handle(self, commands: Sequence[bytes]) -> Sequence[Outcome]:
        self.batches.append(list(commands))
        if self.crash:
            raise KeyError("bug in the handler")
        if self.transient_failures:
            self.transient_failures -= 1
            raise TransientError("database went away")
        if self.poison & set(commands):
            raise UnprocessableEvent("numeric field overflow")
        return [
            IdempotencyConflict("other content") if c in self.conflicts else Settled.RECORDED
            for c in commands
        ]


class Rig:
    """A consumer wired to fakes, with helpers to read its metrics."""

    def __init__(self, policy: BatchPolicy) -> None:
        self.queue = FakeQueue(name=QUEUE)
        self.handler = ScriptedHandler()
        self.dead_letters = FakeDeadLetters()
        self.metrics = Metrics()
        self.sleeps: list[float] = []
        self.channel = FakeChannel()
        self.delivered: list[FakeMessage] = []

        async def no_sleep(seconds: float) -> None:
            self.sleeps.append(seconds)

        self.consumer = BatchingConsumer(
            cast(DeliverySource, self.queue),
            self.handler,
            cast(DeadLetterPublisher, self.dead_letters),
            self.metrics.for_queue(QUEUE),
            policy,
            sleep=no_sleep,
        )

    async def deliver(self, *bodies: bytes, channel: FakeChannel | None = None) -> None:
        messages = [FakeMessage(b, channel or self.channel) for b in bodies]
        self.delivered.extend(messages)
        await self.queue.deliver(*messages)

    def value(self, name: str, **labels: str) -> float:
        return self.metrics.registry.get_sample_value(name, {"queue": QUEUE, **labels}) or 0.0

    def identity_holds(self) -> bool:
        rejected = sum(
            s.value
            for metric in self.metrics.registry.collect()
            if metric.name == "billing_events_rejected"
            for s in metric.samples
            if s.name.endswith("_total")
        )
        return self.value("billing_events_received_total") == (
            self.value("billing_events_recorded_total")
            + self.value("billing_events_duplicate_total")
            + rejected
        )

    async def settle_all(self) -> None:
        """Stop the consumer, which settles everything delivered so far."""
        assert await self.consumer.stop(grace=5)


@pytest.fixture
async def rig() -> Any:
    r = Rig(BatchPolicy(max_size=4, max_wait=0.01, retry_attempts=3, requeue_pause=7))
    await r.consumer.start()
    yield r
    await r.consumer.stop(grace=1)


async def test_valid_batch_is_handled_once_and_acked_once(rig: Rig) -> None:
    """A full batch is one handler call and one multiple-ack of its last tag."""
    await rig.deliver(b"a", b"b", b"c", b"d")
    await rig.settle_all()
    assert rig.handler.batches == [[b"a", b"b", b"c", b"d"]]
    assert rig.channel.acks == [(rig.delivered[-1].delivery_tag, True)]
    assert rig.value("billing_events_recorded_total") == 4
    assert rig.identity_holds()


async def test_batches_are_bounded_by_size(rig: Rig) -> None:
    """Ten deliveries at once make batches of at most max_size."""
    await rig.deliver(*(bytes([65 + i]) for i in range(10)))
    await rig.settle_all()
    assert [len(b) for b in rig.handler.batches] == [4, 4, 2]
    assert rig.channel.acked_tags(rig.delivered) == {m.delivery_tag for m in rig.delivered}


async def test_partial_batch_flushes_after_max_wait(rig: Rig) -> None:
    """A lone delivery is not held hostage waiting for a full batch."""
    await rig.deliver(b"lonely")
    for _ in range(100):
        if rig.channel.acks:
            break
        await asyncio.sleep(0.01)
    assert rig.handler.batches == [[b"lonely"]]
    assert rig.channel.acks


async def test_bad_delivery_is_dead_lettered_and_never_stops_good_ones(rig: Rig) -> None:
    """A bad message goes to the DLQ with its reason; its neighbours are recorded."""
    await rig.deliver(b"a", b"bad-1", b"b")
    await rig.settle_all()
    assert rig.handler.batches == [[b"a", b"b"]]
    assert [(d.message.body, d.reason) for d in rig.dead_letters.published] == [
        (b"bad-1", "schema_violation")
    ]
    assert rig.channel.acked_tags(rig.delivered) == {m.delivery_tag for m in rig.delivered}
    assert rig.value("billing_events_rejected_total", reason="schema_violation") == 1
    assert rig.identity_holds()


async def test_conflicts_reported_by_handler_are_dead_lettered(rig: Rig) -> None:
    """An outcome that is a PermanentError dead-letters that delivery with its reason."""
    rig.handler.conflicts = {b"b"}
    await rig.deliver(b"a", b"b")
    await rig.settle_all()
    assert [(d.message.body, d.reason) for d in rig.dead_letters.published] == [
        (b"b", "idempotency_conflict")
    ]
    assert rig.value("billing_events_recorded_total") == 1
    assert rig.identity_holds()


async def test_transient_failure_is_retried_then_succeeds(rig: Rig) -> None:
    """Two transient failures then success: the batch is recorded once, retries counted."""
    rig.handler.transient_failures = 2
    await rig.deliver(b"a", b"b")
    await rig.settle_all()
    assert len(rig.handler.batches) == 3
    assert rig.value("billing_batch_retries_total") == 2
    assert rig.value("billing_events_recorded_total") == 2
    assert rig.channel.nacks == []


async def test_exhausted_retries_requeue_and_never_ack(rig: Rig) -> None:
    """When retries run out, valid deliveries are nacked back to the queue, not acked."""
    rig.handler.transient_failures = 99
    await rig.deliver(b"a", b"bad-x", b"b")
    await rig.settle_all()
    good = {m.delivery_tag for m in rig.delivered if not m.body.startswith(b"bad")}
    bad = {m.delivery_tag for m in rig.delivered if m.body.startswith(b"bad")}
    assert {tag for tag, requeue in rig.channel.nacks if requeue} == good
    assert rig.channel.acked_tags(rig.delivered) == bad
    assert rig.value("billing_events_requeued_total") == 2
    assert rig.value("billing_events_recorded_total") == 0
    assert rig.identity_holds()


async def test_pause_after_requeue_while_running() -> None:
    """After handing a batch back, the consumer pauses before taking the next one."""
    r = Rig(BatchPolicy(max_size=2, max_wait=0.01, retry_attempts=2, requeue_pause=7))
    r.handler.transient_failures = 99
    await r.consumer.start()
    await r.deliver(b"a", b"b")
    for _ in range(100):
        if r.channel.nacks:
            break
        await asyncio.sleep(0.01)
    await r.deliver(b"c")
    for _ in range(100):
        if len(r.channel.nacks) == 3:
            break
        await asyncio.sleep(0.01)
    await r.consumer.stop(grace=1)
    assert any(6 < s <= 7 for s in r.sleeps), r.sleeps


async def test_pipelined_batches_settle_in_delivery_order() -> None:
    """A later batch whose transaction ends first still acks only after the earlier one."""
    r = Rig(BatchPolicy(max_size=2, max_wait=0.01, max_in_flight=2))
    release_first = asyncio.Event()
    handled: list[list[bytes]] = []

    async def slow_first(commands: Sequence[bytes]) -> Sequence[Outcome]:
        handled.append(list(commands))
        if commands[0] == b"a":
            await release_first.wait()
        return [Settled.RECORDED] * len(commands)

    r.handler.handle = slow_first  # type: ignore[method-assign]
    await r.consumer.start()
    await r.deliver(b"a", b"b", b"c", b"d")
    for _ in range(200):
        if len(handled) == 2:
            break
        await asyncio.sleep(0.005)
    assert handled == [[b"a", b"b"], [b"c", b"d"]], "the second batch runs while the first waits"
    assert r.channel.acks == [], "nothing is acked while the first batch is unsettled"
    release_first.set()
    await r.settle_all()
    tags = [m.delivery_tag for m in r.delivered]
    assert r.channel.acks == [(tags[1], True), (tags[3], True)]


async def test_unexpected_handler_error_requeues(rig: Rig) -> None:
    """A bug in a handler hands deliveries back instead of dropping them."""
    rig.handler.crash = True
    await rig.deliver(b"a")
    await rig.settle_all()
    assert rig.channel.nacks == [(rig.delivered[0].delivery_tag, True)]
    assert rig.channel.acks == []


async def test_poison_event_is_isolated_by_bisection(rig: Rig) -> None:
    """One event the store refuses is dead-lettered alone; the rest are recorded."""
    rig.handler.poison = {b"c"}
    await rig.deliver(b"a", b"b", b"c", b"d")
    await rig.settle_all()
    assert [(d.message.body, d.reason) for d in rig.dead_letters.published] == [
        (b"c", "unprocessable")
    ]
    assert rig.value("billing_events_recorded_total") == 3
    assert rig.identity_holds()


async def test_unconfirmed_dead_letter_keeps_original_on_queue(rig: Rig) -> None:
    """If the broker does not confirm a dead letter, its original is requeued, others acked."""
    rig.dead_letters.refuse = {b"bad-2"}
    await rig.deliver(b"a", b"bad-1", b"bad-2")
    await rig.settle_all()
    by_body = {m.body: m.delivery_tag for m in rig.delivered}
    assert rig.channel.nacks == [(by_body[b"bad-2"], True)]
    assert rig.channel.acked_tags(rig.delivered) == {by_body[b"a"], by_body[b"bad-1"]}
    assert all(not multiple for _, multiple in rig.channel.acks)
    assert rig.value("billing_events_requeued_total") == 1
    assert rig.identity_holds()


async def test_deliveries_from_a_dead_channel_are_dropped(rig: Rig) -> None:
    """After a reconnect, old deliveries are not handled or acked; the broker resends them."""
    dead = FakeChannel(is_closed=True)
    await rig.deliver(b"old", channel=dead)
    await rig.deliver(b"new")
    await rig.settle_all()
    assert rig.handler.batches == [[b"new"]]
    assert dead.acks == []
    assert rig.value("billing_events_received_total") == 1


async def test_each_channel_gets_its_own_multiple_ack(rig: Rig) -> None:
    """Tags are per channel, so a batch spanning two channels acks each separately."""
    other = FakeChannel()
    await rig.deliver(b"a")
    await rig.deliver(b"b", channel=other)
    await rig.settle_all()
    assert len(rig.channel.acks) == 1
    assert len(other.acks) == 1


async def test_stop_cancels_consumption_and_settles_in_flight(rig: Rig) -> None:
    """Stopping cancels the consumer and still commits and acks what was delivered."""
    await rig.deliver(b"a", b"b")
    assert await rig.consumer.stop(grace=5)
    assert rig.queue.cancelled
    assert rig.value("billing_events_recorded_total") == 2
    assert rig.channel.acked_tags(rig.delivered) == {m.delivery_tag for m in rig.delivered}
    assert not rig.consumer.running


async def test_unforeseen_decode_error_dead_letters_that_message_only(rig: Rig) -> None:
    """A delivery whose decoding raises something unforeseen is dead-lettered; the loop lives."""
    original = rig.handler.decode

    def fragile(message: Delivery) -> bytes:
        if message.body == b"odd":
            raise OverflowError("date value out of range")
        return original(message)

    rig.handler.decode = fragile  # type: ignore[method-assign]
    await rig.deliver(b"a", b"odd", b"b")
    await rig.settle_all()
    assert [(d.message.body, d.reason) for d in rig.dead_letters.published] == [
        (b"odd", "undecodable")
    ]
    assert "OverflowError" in rig.dead_letters.published[0].detail
    assert rig.value("billing_events_recorded_total") == 2
    assert rig.identity_holds()


async def test_failed_settlement_is_nacked_and_never_covered_by_a_later_ack() -> None:
    """If settling a batch breaks off, it is requeued and later batches ack one by one."""
    r = Rig(BatchPolicy(max_size=2, max_wait=0.01, max_in_flight=1))
    calls = 0

    async def flaky_publish(queue: str, letters: Sequence[DeadLetter]) -> list[bool]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("publisher broke")
        return [True] * len(letters)

    r.dead_letters.publish = flaky_publish  # type: ignore[method-assign]
    await r.consumer.start()
    await r.deliver(b"bad-1", b"a")
    for _ in range(200):
        if r.channel.nacks:
            break
        await asyncio.sleep(0.005)
    await r.deliver(b"b", b"c")
    await r.settle_all()
    first, second = r.delivered[:2], r.delivered[2:]
    assert {tag for tag, _ in r.channel.nacks} == {m.delivery_tag for m in first}
    assert all(not multiple for _, multiple in r.channel.acks), "no multiple-ack over them"
    assert {tag for tag, _ in r.channel.acks} == {m.delivery_tag for m in second}


async def test_ack_cancelled_by_the_client_library_does_not_unwind_settlement() -> None:
    """aiormq failing an ack with CancelledError is a lost channel, not our cancellation."""

    async def cancelled_ack() -> None:
        raise asyncio.CancelledError

    assert await settle_safely(cancelled_ack(), QUEUE) is False

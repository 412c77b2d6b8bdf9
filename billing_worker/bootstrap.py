"""The composition root: the one place that wires adapters, service and consumers together."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from aio_pika.abc import AbstractChannel, AbstractExchange
from sqlalchemy.ext.asyncio import AsyncEngine

from billing_worker.adapters.amqp.billing_events import OutboxRelay
from billing_worker.adapters.amqp.dead_letters import DeadLetterPublisher
from billing_worker.adapters.amqp.delivery import DeliverySource
from billing_worker.adapters.amqp.topology import Topology
from billing_worker.adapters.observability.metrics import Metrics
from billing_worker.adapters.postgres.account_store import PostgresUsageReader
from billing_worker.adapters.postgres.rejections import PostgresRejections
from billing_worker.adapters.postgres.unit_of_work import PostgresUnitOfWork
from billing_worker.adapters.postgres.usage_store import KnownAccounts
from billing_worker.config import Settings
from billing_worker.consumers.batching import BatchingConsumer, BatchPolicy
from billing_worker.consumers.quota_check import QuotaCheckConsumer
from billing_worker.consumers.stripe import StripeCommand, StripeConsumer
from billing_worker.consumers.usage import UsageConsumer, usage_rejected_notice
from billing_worker.domain.pricebook import PriceBook
from billing_worker.domain.usage import UsageRecord
from billing_worker.service.stripe_events import CYCLE_MARGIN

STRIPE_BATCH_SIZE = 50
"""Stripe events come a few at a time, each applied in its own transaction."""


@dataclass(frozen=True, slots=True)
class Components:
    """What the process lifecycle starts and stops."""

    usage_consumer: BatchingConsumer[UsageRecord]
    quota_check: QuotaCheckConsumer
    relay: OutboxRelay
    stripe_consumer: BatchingConsumer[StripeCommand] | None = None
    """None when BILLING_STRIPE_WEBHOOK_SECRET is unset: nothing is accepted unverified."""

    @property
    def consumers(self) -> list[BatchingConsumer[Any]]:
        """The batching consumers, usage first."""
        extra = [self.stripe_consumer] if self.stripe_consumer is not None else []
        return [self.usage_consumer, *extra]


def batch_policy(settings: Settings) -> BatchPolicy:
    """Batch bounds and retry policy from the settings."""
    return BatchPolicy(
        max_size=settings.batch_size,
        max_wait=settings.batch_max_wait_ms / 1000,
        max_in_flight=settings.batches_in_flight,
        retry_attempts=settings.db_retry_attempts,
        retry_max_wait=settings.db_retry_max_wait_seconds,
        requeue_pause=settings.requeue_pause_seconds,
    )


def topology_for(settings: Settings) -> Topology:
    """Broker names with the deployment's namespace."""
    return Topology(settings.namespace)


def build_components(
    settings: Settings,
    *,
    book: PriceBook,
    engine: AsyncEngine,
    quota_engine: AsyncEngine,
    usage_queue: DeliverySource,
    quota_queue: DeliverySource,
    reply_exchange: AbstractExchange,
    publish_channel: AbstractChannel,
    metrics: Metrics,
    stripe_queue: DeliverySource | None = None,
) -> Components:
    """Wire the consumers and the outbox relay to the database and the broker."""
    topology = topology_for(settings)
    clock = settings.clock
    relay = OutboxRelay(engine, publish_channel, topology.events_exchange, metrics)
    dead_letters = DeadLetterPublisher(
        publish_channel,
        clock=clock,
        events_exchange=topology.events_exchange,
        notices={usage_queue.name: usage_rejected_notice},
        published=metrics.outbox_published,
        on_announced=PostgresRejections(engine).record,
    )
    known_accounts = KnownAccounts()

    def unit_of_work() -> PostgresUnitOfWork:
        return PostgresUnitOfWork(engine, known_accounts, on_outbox_written=relay.wake)

    usage = UsageConsumer(
        unit_of_work,
        book,
        max_clock_skew=timedelta(seconds=settings.max_clock_skew_seconds),
        clock=clock,
    )
    stripe_consumer = None
    secret = settings.stripe_webhook_secret
    if stripe_queue is not None and secret is not None:
        stripe = StripeConsumer(
            unit_of_work,
            book,
            secret=secret.get_secret_value(),
            tolerance_seconds=settings.stripe_signature_tolerance_seconds,
            events=metrics.stripe_events,
            # the relay's limit: what it accepted, the worker reads
            max_body_bytes=settings.stripe_relay_max_body_bytes,
            cycle_margin=CYCLE_MARGIN + timedelta(seconds=settings.max_clock_skew_seconds),
            clock=clock,
        )
        stripe_consumer = BatchingConsumer(
            stripe_queue,
            stripe,
            dead_letters,
            metrics.for_queue(stripe_queue.name),
            dataclasses.replace(batch_policy(settings), max_size=STRIPE_BATCH_SIZE),
        )
    return Components(
        stripe_consumer=stripe_consumer,
        usage_consumer=BatchingConsumer(
            usage_queue,
            usage,
            dead_letters,
            metrics.for_queue(usage_queue.name),
            batch_policy(settings),
        ),
        quota_check=QuotaCheckConsumer(
            quota_queue,
            reply_exchange,
            PostgresUsageReader(quota_engine),
            book,
            metrics,
            clock=clock,
        ),
        relay=relay,
    )

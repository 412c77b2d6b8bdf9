"""The composition root: the one place that wires adapters, service and consumers together."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from aio_pika.abc import AbstractChannel
from sqlalchemy.ext.asyncio import AsyncEngine

from billing_worker.adapters.amqp.dead_letters import DeadLetterPublisher
from billing_worker.adapters.amqp.delivery import DeliverySource
from billing_worker.adapters.amqp.topology import Topology
from billing_worker.adapters.observability.metrics import Metrics
from billing_worker.adapters.postgres.usage_store import KnownAccounts, PostgresUnitOfWork
from billing_worker.config import Settings
from billing_worker.consumers.batching import BatchingConsumer, BatchPolicy
from billing_worker.consumers.usage import UsageConsumer
from billing_worker.domain.meters import LAUNCH_CATALOG, MeterCatalog
from billing_worker.domain.usage import UsageRecord


@dataclass(frozen=True, slots=True)
class Components:
    """What the process lifecycle starts and stops."""

    usage_consumer: BatchingConsumer[UsageRecord]


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
    engine: AsyncEngine,
    usage_queue: DeliverySource,
    publish_channel: AbstractChannel,
    metrics: Metrics,
    catalog: MeterCatalog = LAUNCH_CATALOG,
) -> Components:
    """Wire the consumers to the database and the broker."""
    dead_letters = DeadLetterPublisher(publish_channel)
    known_accounts = KnownAccounts()
    usage = UsageConsumer(
        lambda: PostgresUnitOfWork(engine, known_accounts),
        catalog,
        max_clock_skew=timedelta(seconds=settings.max_clock_skew_seconds),
    )
    return Components(
        usage_consumer=BatchingConsumer(
            usage_queue,
            usage,
            dead_letters,
            metrics.for_queue(usage_queue.name),
            batch_policy(settings),
        )
    )

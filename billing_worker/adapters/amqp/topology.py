"""Exchange and queue names (CONTRACTS.md), namespaced, and their declaration."""

from __future__ import annotations

from dataclasses import dataclass

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractQueue
from pamqp.common import FieldTable

USAGE_BINDING_KEY = "usage.#"


@dataclass(frozen=True, slots=True)
class Topology:
    """Every broker name the worker uses, with the deployment's namespace applied."""

    namespace: str = ""

    def name(self, base: str) -> str:
        """``base`` prefixed by ``<namespace>.`` when a namespace is set."""
        return f"{self.namespace}.{base}" if self.namespace else base

    @property
    def usage_exchange(self) -> str:
        """Topic exchange producers publish usage events to."""
        return self.name("billing.usage")

    @property
    def usage_queue(self) -> str:
        """Quorum queue the worker consumes usage events from."""
        return self.name("billing-worker.usage")

    @property
    def events_exchange(self) -> str:
        """Topic exchange the worker publishes billing events to."""
        return self.name("billing.events")

    @property
    def stripe_exchange(self) -> str:
        """Fanout exchange the Stripe relay publishes webhook deliveries to."""
        return self.name("billing.stripe")

    @property
    def stripe_queue(self) -> str:
        """Quorum queue the worker consumes relayed Stripe events from."""
        return self.name("billing-worker.stripe")

    @property
    def quota_check_queue(self) -> str:
        """Queue of quota-check requests (producers publish to the default exchange)."""
        return self.name("billing.quota.check")

    @staticmethod
    def dead_letter_queue(queue: str) -> str:
        """The dead-letter queue of ``queue``."""
        return f"{queue}.dlq"


def quorum_queue_arguments(dead_letter_queue: str) -> FieldTable:
    """Arguments of a consumed queue: quorum, broker-side dead letters kept at-least-once.

    The worker dead-letters bad messages itself (with reasons). These arguments cover the
    rest: a message the broker gives up on (a delivery limit set by policy, say) lands in
    the same DLQ, and at-least-once dead-lettering needs ``reject-publish`` overflow.
    """
    return {
        "x-queue-type": "quorum",
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": dead_letter_queue,
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
    }


async def declare_consumed_queue(
    channel: AbstractChannel, queue: str, *, exchange: str, binding_key: str, exchange_type: str
) -> AbstractQueue:
    """Declare ``exchange``, ``queue`` bound to it, and ``queue``'s DLQ (all durable)."""
    dlq = Topology.dead_letter_queue(queue)
    await channel.declare_queue(dlq, durable=True, arguments={"x-queue-type": "quorum"})
    source = await channel.declare_exchange(exchange, exchange_type, durable=True)
    declared = await channel.declare_queue(
        queue, durable=True, arguments=quorum_queue_arguments(dlq)
    )
    await declared.bind(source, routing_key=binding_key)
    return declared


async def declare_usage_topology(channel: AbstractChannel, topology: Topology) -> AbstractQueue:
    """Declare everything the usage path needs; return the usage queue."""
    await channel.declare_exchange(
        topology.events_exchange, aio_pika.ExchangeType.TOPIC, durable=True
    )
    return await declare_consumed_queue(
        channel,
        topology.usage_queue,
        exchange=topology.usage_exchange,
        binding_key=USAGE_BINDING_KEY,
        exchange_type=aio_pika.ExchangeType.TOPIC,
    )


QUOTA_CHECK_TTL_MS = 60_000
"""A quota check nobody answered within a minute has a caller that gave up waiting."""


async def declare_quota_check_queue(channel: AbstractChannel, topology: Topology) -> AbstractQueue:
    """Declare the quota-check request queue (quorum; stale requests expire)."""
    return await channel.declare_queue(
        topology.quota_check_queue,
        durable=True,
        arguments={"x-queue-type": "quorum", "x-message-ttl": QUOTA_CHECK_TTL_MS},
    )


async def declare_stripe_topology(channel: AbstractChannel, topology: Topology) -> AbstractQueue:
    """Declare the Stripe exchange, the worker's Stripe queue and its DLQ."""
    return await declare_consumed_queue(
        channel,
        topology.stripe_queue,
        exchange=topology.stripe_exchange,
        binding_key="",
        exchange_type=aio_pika.ExchangeType.FANOUT,
    )


async def declare_stripe_exchange(channel: AbstractChannel, topology: Topology) -> None:
    """Declare the exchange the relay publishes to (the worker binds its queue to it)."""
    await channel.declare_exchange(
        topology.stripe_exchange, aio_pika.ExchangeType.FANOUT, durable=True
    )

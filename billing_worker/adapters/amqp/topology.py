"""Exchange and queue names (CONTRACTS.md), namespaced, and their declaration."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import aio_pika
import structlog
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractQueue
from aiormq.exceptions import (
    ChannelAccessRefused,
    ChannelNotFoundEntity,
    ChannelPreconditionFailed,
)
from pamqp.common import FieldTable
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_delay,
    wait_exponential,
    wait_random,
)

log = structlog.get_logger(__name__)

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


PERMANENT_DECLARE_ERRORS = (ChannelPreconditionFailed, ChannelAccessRefused, ChannelNotFoundEntity)
"""What declaring again can't cure: other arguments, missing rights, a missing exchange."""


def _declare_again(exc: BaseException) -> bool:
    if isinstance(exc, PERMANENT_DECLARE_ERRORS):
        return False
    return isinstance(exc, OSError | aio_pika.exceptions.AMQPError)


def _say_retrying(state: RetryCallState) -> None:
    error = state.outcome.exception() if state.outcome is not None else None
    log.warning("topology_declare_retrying", attempt=state.attempt_number, error=repr(error))


async def ensure_topology(
    connect: Callable[[], Awaitable[AbstractConnection]],
    topology: Topology,
    *,
    stripe: bool,
    patience: float,
) -> None:
    """Declare every queue and exchange the worker consumes or publishes to, on a connection
    of its own, until it holds or ``patience`` seconds have passed.

    Replicas starting together race to create a new quorum queue, and a broker may answer
    the loser with INTERNAL_ERROR, which closes the whole connection (seen on RabbitMQ
    3.10): each attempt takes a fresh connection and declares it all again, with a jittered
    backoff. Errors no retry can cure (a queue of that name with other arguments, missing
    rights) are raised at once. Once this returns, the worker's own channels declare queues
    that exist, which never races.
    """
    async for attempt in AsyncRetrying(
        stop=stop_after_delay(patience),
        wait=wait_exponential(multiplier=0.2, max=5) + wait_random(0, 0.3),
        retry=retry_if_exception(_declare_again),
        before_sleep=_say_retrying,
        reraise=True,
    ):
        with attempt:
            connection = await connect()
            try:
                channel = await connection.channel()
                await declare_usage_topology(channel, topology)
                await declare_quota_check_queue(channel, topology)
                if stripe:
                    await declare_stripe_topology(channel, topology)
            finally:
                await connection.close()

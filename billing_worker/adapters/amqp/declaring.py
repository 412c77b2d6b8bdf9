"""Declaring the topology at start, until it holds: replicas race to create new queues."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import aio_pika
import structlog
from aio_pika.abc import AbstractConnection
from aiormq.exceptions import (
    ChannelAccessRefused,
    ChannelNotFoundEntity,
    ChannelPreconditionFailed,
)
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_delay,
    wait_exponential,
    wait_random,
)

from billing_worker.adapters.amqp.topology import (
    Topology,
    declare_quota_check_queue,
    declare_stripe_topology,
    declare_usage_topology,
)

log = structlog.get_logger(__name__)

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

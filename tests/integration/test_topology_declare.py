"""Declaring the broker topology at start holds through a broker's INTERNAL_ERROR (replicas
racing to create a new quorum queue) and gives up at once on what no retry can cure."""

from __future__ import annotations

import asyncio
from typing import Any

import aio_pika
import pytest
from aio_pika.abc import AbstractConnection
from aiormq.exceptions import ChannelPreconditionFailed, ConnectionInternalError

from billing_worker.adapters.amqp.declaring import ensure_topology
from billing_worker.adapters.amqp.topology import Topology
from tests.conftest import AMQP_URL


class FlakyChannel:
    """A real channel whose first ``failures`` queue declarations fail as a broker's
    INTERNAL_ERROR does (it closes the connection)."""

    def __init__(self, channel: Any, failures: list[int]) -> None:
        self._channel = channel
        self._failures = failures

    async def declare_queue(self, *args: Any, **kwargs: Any) -> Any:
        if self._failures[0] > 0:
            self._failures[0] -= 1
            raise ConnectionInternalError(541, "INTERNAL_ERROR")
        return await self._channel.declare_queue(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._channel, name)


class Connector:
    """``connect`` for ``ensure_topology``: counts attempts; declarations fail ``failures``
    times in all."""

    def __init__(self, failures: int = 0) -> None:
        self.attempts = 0
        self._failures = [failures]

    async def __call__(self) -> AbstractConnection:
        self.attempts += 1
        connection = await aio_pika.connect(AMQP_URL)
        real_channel = connection.channel

        async def channel(*args: Any, **kwargs: Any) -> Any:
            return FlakyChannel(await real_channel(*args, **kwargs), self._failures)

        connection.channel = channel  # type: ignore[method-assign]
        return connection


async def queue_exists(name: str) -> bool:
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        try:
            await channel.declare_queue(name, passive=True)
        except aio_pika.exceptions.ChannelNotFoundEntity:
            return False
        return True


async def test_internal_errors_are_declared_through(namespace: str) -> None:
    """Two INTERNAL_ERRORs while declaring: a fresh connection each time, and on the third
    attempt every queue exists (the Stripe ones included)."""
    topology = Topology(namespace)
    connect = Connector(failures=2)
    await ensure_topology(connect, topology, stripe=True, patience=30)
    assert connect.attempts == 3
    for queue in (
        topology.usage_queue,
        Topology.dead_letter_queue(topology.usage_queue),
        topology.quota_check_queue,
        topology.stripe_queue,
    ):
        assert await queue_exists(queue), queue


async def test_other_arguments_are_refused_at_once(namespace: str) -> None:
    """A classic queue already under the usage queue's name is a mismatch no retry cures:
    raised on the first attempt."""
    topology = Topology(namespace)
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        await channel.declare_queue(topology.usage_queue, durable=True)
    connect = Connector()
    with pytest.raises(ChannelPreconditionFailed):
        await ensure_topology(connect, topology, stripe=False, patience=30)
    assert connect.attempts == 1


async def test_patience_runs_out_with_the_last_error(namespace: str) -> None:
    """A broker that keeps failing is given up on after the patience, with its error."""
    connect = Connector(failures=10_000)
    with pytest.raises(ConnectionInternalError):
        await ensure_topology(connect, Topology(namespace), stripe=False, patience=1)
    assert connect.attempts >= 2


async def test_replicas_declaring_a_new_namespace_together_all_succeed(namespace: str) -> None:
    """Six workers' declarations of a namespace nobody declared yet, at the same moment:
    every one returns."""
    topology = Topology(namespace)
    await asyncio.gather(
        *(ensure_topology(Connector(), topology, stripe=True, patience=30) for _ in range(6))
    )
    assert await queue_exists(topology.usage_queue)

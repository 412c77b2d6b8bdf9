"""The AsyncAPI document's AMQP bindings agree with what a running worker declared on the
broker: RabbitMQ refuses a re-declaration whose properties or arguments differ."""

from __future__ import annotations

import json
from typing import Any

import aio_pika
import pytest

from billing_worker.contract.asyncapi import render_document
from tests.e2e.conftest import Bus, StartWorker
from tests.stripe_payloads import WEBHOOK_SECRET


def documented(kind: str) -> list[dict[str, Any]]:
    """The ``exchange`` or ``queue`` objects of every channel binding, with their extensions."""
    document = json.loads(render_document())
    found = []
    for channel in document["channels"].values():
        amqp = channel["bindings"]["amqp"]
        if kind in amqp and amqp[kind]["name"]:
            found.append({**amqp[kind], "x-arguments": amqp.get("x-arguments", {})})
    return found


def namespaced(bus: Bus, arguments: dict[str, Any], queues: set[str]) -> dict[str, Any]:
    """Queue arguments as deployed on ``bus``'s namespace: a queue name as value is prefixed."""
    return {k: bus.name(v) if v in queues else v for k, v in arguments.items()}


async def test_worker_topology_matches_the_document(start_worker: StartWorker, bus: Bus) -> None:
    """Every documented exchange (type, durability) and queue (durability, arguments) can be
    declared again exactly as documented after the worker declared it."""
    await start_worker(stripe_webhook_secret=WEBHOOK_SECRET)  # declares the Stripe queue
    queues = documented("queue")
    names = {q["name"] for q in queues}
    for exchange in documented("exchange"):
        channel = await bus.connection.channel()
        await channel.declare_exchange(
            bus.name(exchange["name"]),
            aio_pika.ExchangeType(exchange["type"]),
            durable=exchange["durable"],
            auto_delete=exchange["autoDelete"],
        )
        await channel.close()
    for queue in queues:
        channel = await bus.connection.channel()
        await channel.declare_queue(
            bus.name(queue["name"]),
            durable=queue["durable"],
            exclusive=queue["exclusive"],
            auto_delete=queue["autoDelete"],
            arguments=namespaced(bus, queue["x-arguments"], names),
        )
        await channel.close()


async def test_a_differing_declaration_is_refused(start_worker: StartWorker, bus: Bus) -> None:
    """The check above has teeth: the usage queue declared with another argument is refused."""
    await start_worker()
    (usage_queue,) = [q for q in documented("queue") if q["name"] == "billing-worker.usage"]
    arguments = namespaced(bus, usage_queue["x-arguments"], {"billing-worker.usage.dlq"})
    channel = await bus.connection.channel()
    with pytest.raises(aio_pika.exceptions.ChannelPreconditionFailed):
        await channel.declare_queue(
            bus.name("billing-worker.usage"),
            durable=True,
            arguments={**arguments, "x-overflow": "drop-head"},
        )

"""The raw ceiling: a no-op aio-pika consumer that parses each body and multiple-acks."""

from __future__ import annotations

import asyncio
import json
import time

import aio_pika
from aio_pika.abc import AbstractIncomingMessage

from billing_worker.bench.scratch import Scratch, publish


async def measure_ceiling(
    place: Scratch, bodies: list[bytes], *, prefetch: int, ack_every: int
) -> float:
    """Events/s from first delivery to the last ack, for ``bodies`` preloaded on the queue."""
    await publish(place.amqp_url, place.topology.usage_exchange, bodies)
    total = len(bodies)
    done: asyncio.Future[float] = asyncio.get_running_loop().create_future()
    state = {"seen": 0, "first": 0.0}

    async def on_message(message: AbstractIncomingMessage) -> None:
        if state["seen"] == 0:
            state["first"] = time.perf_counter()
        json.loads(message.body)
        state["seen"] += 1
        seen = state["seen"]
        if seen % ack_every == 0 or seen == total:
            await message.ack(multiple=True)
        if seen == total and not done.done():
            done.set_result(time.perf_counter())

    connection = await aio_pika.connect(place.amqp_url)
    async with connection:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=prefetch)
        queue = await channel.get_queue(place.topology.usage_queue)
        await queue.consume(on_message)
        finished = await done
    return total / (finished - state["first"])

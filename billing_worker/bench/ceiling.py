"""The raw ceilings: no-op consumers that only parse each body and multiple-ack.

Two of them, both measured in the same run as the worker:
- ``aio-pika``: aio-pika's documented consumer API (``queue.consume``), the ceiling the
  benchmark is defined against;
- ``aiormq``: the same loop on the aiormq channel underneath, without aio-pika's
  per-message wrapper — the path the worker itself takes, so the stricter yardstick.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aio_pika

from billing_worker.bench.scratch import Scratch, publish


async def measure_ceiling(
    place: Scratch, bodies: list[bytes], *, prefetch: int, ack_every: int, raw: bool
) -> float:
    """Events/s from first delivery to the last ack, for ``bodies`` preloaded on the queue."""
    await publish(place.amqp_url, place.topology.usage_exchange, bodies)
    total = len(bodies)
    done: asyncio.Future[float] = asyncio.get_running_loop().create_future()
    state = {"seen": 0, "first": 0.0}

    def count(body: bytes) -> bool:
        """Parse like a consumer must; True when an ack is due."""
        if state["seen"] == 0:
            state["first"] = time.perf_counter()
        json.loads(body)
        state["seen"] += 1
        seen = state["seen"]
        if seen == total and not done.done():
            done.set_result(time.perf_counter())
        return seen % ack_every == 0 or seen == total

    connection = await aio_pika.connect(place.amqp_url)
    async with connection:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=prefetch)
        on_message: Callable[[Any], Awaitable[None]]
        if raw:
            underlay = await channel.get_underlay_channel()

            async def on_message(message: Any) -> None:
                if count(message.body):
                    await underlay.basic_ack(message.delivery.delivery_tag, multiple=True)

            await underlay.basic_consume(place.topology.usage_queue, on_message)
        else:
            queue = await channel.get_queue(place.topology.usage_queue)

            async def on_message(message: Any) -> None:
                if count(message.body):
                    await message.ack(multiple=True)

            await queue.consume(on_message)
        finished = await done
    return total / (finished - state["first"])

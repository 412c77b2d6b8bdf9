"""Quota-check latency: request to reply over direct reply-to, while usage flows in."""

from __future__ import annotations

import asyncio
import contextlib
import queue
import statistics
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aio_pika
from aio_pika.abc import AbstractIncomingMessage

from billing_worker.bench.latency import TICK_SECONDS, publish_steadily
from billing_worker.bench.scratch import Scratch
from billing_worker.bench.worker_process import WorkerProcess
from billing_worker.entrypoints.progress import progress

REPLY_TO = "amq.rabbitmq.reply-to"


@dataclass(frozen=True, slots=True)
class QuotaCheckRun:
    """Round trips of quota checks at one rate, under a usage load, in milliseconds."""

    check_rate: float
    usage_rate: float
    checks: int
    errors: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float


async def measure_quota_check(
    place: Scratch,
    *,
    check_rate: float,
    usage_rate: float,
    duration: float,
    settings: dict[str, str],
    log_path: Path,
) -> QuotaCheckRun:
    """Start a worker, publish usage at ``usage_rate`` and ask ``check_rate`` checks a second."""
    worker = WorkerProcess(place, settings, log_path)
    try:
        await asyncio.to_thread(worker.wait_ready)
        usage = asyncio.create_task(
            publish_steadily(place, usage_rate, duration, {}, queue.SimpleQueue())
        )
        round_trips, errors = await _ask_steadily(place, check_rate, duration)
        await usage
    finally:
        worker.stop()
        with contextlib.suppress(Exception):
            connection = await aio_pika.connect(place.amqp_url)
            async with connection:
                channel = await connection.channel()
                await channel.queue_delete(place.topology.quota_check_queue)
    if not round_trips:
        raise AssertionError("no quota check was answered")
    cuts = statistics.quantiles(round_trips, n=100, method="inclusive")
    return QuotaCheckRun(
        check_rate,
        usage_rate,
        len(round_trips),
        errors,
        cuts[49],
        cuts[94],
        cuts[98],
        max(round_trips),
    )


async def _ask_steadily(place: Scratch, rate: float, duration: float) -> tuple[list[float], int]:
    connection = await aio_pika.connect(place.amqp_url)
    async with connection:
        channel = await connection.channel()
        sent: dict[str, float] = {}
        round_trips: list[float] = []
        errors = 0

        async def on_reply(message: AbstractIncomingMessage) -> None:
            nonlocal errors
            started = sent.pop(str(message.correlation_id), None)
            if started is not None:
                round_trips.append((time.monotonic() - started) * 1000)
            if b'"error"' in message.body:
                errors += 1

        replies = await channel.get_queue(REPLY_TO, ensure=False)
        await replies.consume(on_reply, no_ack=True)
        start = time.monotonic()
        asked = 0
        pending: set[asyncio.Future[Any]] = set()
        with progress(
            f"quota checks at {rate:g}/s", total=int(rate * duration), unit="check"
        ) as bar:
            while (elapsed := time.monotonic() - start) < duration:
                due = int(elapsed * rate) - asked
                for i in range(max(due, 0)):
                    correlation_id = uuid.uuid4().hex
                    body = b'{"account": "acct_%d", "meter": "tokens", "quantity": 100}' % (
                        (asked + i) % 1000
                    )
                    sent[correlation_id] = time.monotonic()
                    task = asyncio.ensure_future(
                        channel.default_exchange.publish(
                            aio_pika.Message(
                                body,
                                content_type="application/json",
                                correlation_id=correlation_id,
                                reply_to=REPLY_TO,
                            ),
                            routing_key=place.topology.quota_check_queue,
                        )
                    )
                    pending.add(task)
                    task.add_done_callback(pending.discard)
                asked += max(due, 0)
                bar.update(max(due, 0))
                await asyncio.sleep(TICK_SECONDS)
        deadline = time.monotonic() + 10
        while sent and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        return round_trips, errors

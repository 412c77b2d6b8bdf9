"""Latency: publish at a steady rate and time each event from publish to observed commit."""

from __future__ import annotations

import asyncio
import random
import statistics
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aio_pika
import psycopg

from billing_worker.bench.scratch import USAGE_ROUTING_KEY, Scratch
from billing_worker.bench.worker_process import WorkerProcess
from billing_worker.bench.workload import usage_event

POLL_SECONDS = 0.002
TICK_SECONDS = 0.01


@dataclass(frozen=True, slots=True)
class LatencyRun:
    """Publish-to-commit latencies at one steady rate, in milliseconds."""

    rate: float
    events: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    peak_rss_mb: float


class _CommitWatcher(threading.Thread):
    """Notes when each event id first shows up in the ledger (an upper bound of its commit)."""

    def __init__(self, place: Scratch) -> None:
        super().__init__(name="commit-watcher", daemon=True)
        self._place = place
        self.seen: dict[str, float] = {}
        self.stop_event = threading.Event()

    def run(self) -> None:
        last = 0
        with psycopg.connect(self._place.libpq_url, autocommit=True) as conn:
            while not self.stop_event.is_set():
                rows = conn.execute(
                    "SELECT entry_id, event_id FROM usage_ledger WHERE entry_id > %s",
                    (last,),
                ).fetchall()
                now = time.monotonic()
                for entry_id, event_id in rows:
                    self.seen.setdefault(event_id, now)
                    last = max(last, entry_id)
                time.sleep(POLL_SECONDS)


async def measure_latency(
    place: Scratch, *, rate: float, duration: float, settings: dict[str, str], log_path: Path
) -> LatencyRun:
    """Run the worker idle, then publish ``rate`` events/s for ``duration`` seconds."""
    worker = WorkerProcess(place, settings, log_path)
    watcher = _CommitWatcher(place)
    published: dict[str, float] = {}
    try:
        await asyncio.to_thread(worker.wait_ready)
        watcher.start()
        await _publish_steadily(place, rate, duration, published)
        deadline = time.monotonic() + 30
        while len(watcher.seen) < len(published) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        rss = worker.peak_rss_mb()
    finally:
        watcher.stop_event.set()
        worker.stop()
    missing = set(published) - set(watcher.seen)
    if missing:
        raise AssertionError(f"{len(missing)} events were never committed")
    latencies = sorted((watcher.seen[k] - t) * 1000 for k, t in published.items())
    cuts = statistics.quantiles(latencies, n=100, method="inclusive")
    return LatencyRun(rate, len(latencies), cuts[49], cuts[94], cuts[98], latencies[-1], rss)


async def _publish_steadily(
    place: Scratch, rate: float, duration: float, published: dict[str, float]
) -> None:
    """Publish in 10 ms ticks, each carrying its share, confirms awaited off the beat."""
    rng = random.Random(11)
    connection = await aio_pika.connect(place.amqp_url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(place.topology.usage_exchange)
        pending: set[asyncio.Future[Any]] = set()
        start = time.monotonic()
        sent = 0
        while (elapsed := time.monotonic() - start) < duration:
            due = int(elapsed * rate) - sent
            for _ in range(due):
                event_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
                body = usage_event(event_id, f"acct_{rng.randrange(1000)}", 100, datetime.now(UTC))
                published[event_id] = time.monotonic()
                task = asyncio.ensure_future(
                    exchange.publish(
                        aio_pika.Message(
                            body,
                            content_type="application/json",
                            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                        ),
                        routing_key=USAGE_ROUTING_KEY,
                    )
                )
                pending.add(task)
                task.add_done_callback(pending.discard)
            sent += max(due, 0)
            await asyncio.sleep(TICK_SECONDS)
        if pending:
            await asyncio.gather(*pending)

"""Latency: publish at a steady rate and time each event from publish to observed commit."""

from __future__ import annotations

import asyncio
import queue
import random
import statistics
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aio_pika
import psycopg

from billing_worker.adapters.clock import SystemClock
from billing_worker.bench.scratch import USAGE_ROUTING_KEY, Scratch, usage_message
from billing_worker.bench.worker_process import WorkerProcess
from billing_worker.bench.workload import usage_event
from billing_worker.entrypoints.progress import progress

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
    """Notes when each published event first shows up in the ledger (an upper bound of its
    commit time).

    Every 2 ms it reads the rows past the highest ``entry_id`` seen: cheap, and exact while
    transactions commit in id order. Pipelined transactions can commit out of id order, so
    every 5 ms it also looks up, by key, the events still missing after 5 ms; those are
    stamped when the sweep finds them, which can only overstate their latency.
    """

    SWEEP_SECONDS = 0.005
    STRAGGLER_SECONDS = 0.005

    def __init__(self, place: Scratch) -> None:
        super().__init__(name="commit-watcher", daemon=True)
        self._place = place
        self.published: queue.SimpleQueue[tuple[str, float]] = queue.SimpleQueue()
        self.seen: dict[str, float] = {}
        self.stop_event = threading.Event()

    def run(self) -> None:
        pending: dict[str, float] = {}
        last_id = 0
        next_sweep = time.monotonic() + self.SWEEP_SECONDS
        with psycopg.connect(self._place.libpq_url, autocommit=True) as conn:
            while not self.stop_event.is_set():
                while not self.published.empty():
                    event_id, at = self.published.get_nowait()
                    pending[event_id] = at
                rows = conn.execute(
                    "SELECT entry_id, event_id FROM usage_ledger WHERE entry_id > %s",
                    (last_id,),
                ).fetchall()
                now = time.monotonic()
                for entry_id, event_id in rows:
                    last_id = max(last_id, entry_id)
                    self._saw(event_id, now, pending)
                if now >= next_sweep:
                    next_sweep = now + self.SWEEP_SECONDS
                    stragglers = [
                        k for k, at in pending.items() if now - at > self.STRAGGLER_SECONDS
                    ]
                    if stragglers:
                        found = conn.execute(
                            "SELECT event_id FROM usage_ledger "
                            "WHERE event_source = 'bench' AND event_id = ANY(%s)",
                            (stragglers,),
                        ).fetchall()
                        now = time.monotonic()
                        for (event_id,) in found:
                            self._saw(event_id, now, pending)
                time.sleep(POLL_SECONDS)

    def _saw(self, event_id: str, now: float, pending: dict[str, float]) -> None:
        if event_id not in self.seen:
            self.seen[event_id] = now
        pending.pop(event_id, None)


async def measure_latency(
    place: Scratch, *, rate: float, duration: float, settings: dict[str, str], log_path: Path
) -> LatencyRun:
    """Run the worker idle, then publish ``rate`` events/s for ``duration`` seconds."""
    # The publisher (event loop) and the watcher (thread) share the GIL; at the default
    # 5 ms switch interval the watcher could notice a commit up to 5 ms late.
    previous_interval = sys.getswitchinterval()
    sys.setswitchinterval(0.0002)
    worker = WorkerProcess(place, settings, log_path)
    watcher = _CommitWatcher(place)
    published: dict[str, float] = {}
    try:
        await asyncio.to_thread(worker.wait_ready)
        watcher.start()
        await publish_steadily(place, rate, duration, published, watcher.published)
        deadline = time.monotonic() + 30
        with progress("waiting for commits", total=len(published), unit="event") as bar:
            while len(watcher.seen) < len(published) and time.monotonic() < deadline:
                bar.update(len(watcher.seen) - bar.n)
                await asyncio.sleep(0.05)
        rss = worker.peak_rss_mb()
    finally:
        sys.setswitchinterval(previous_interval)
        watcher.stop_event.set()
        worker.stop()
    missing = set(published) - set(watcher.seen)
    if missing:
        raise AssertionError(f"{len(missing)} events were never committed")
    latencies = sorted((watcher.seen[k] - t) * 1000 for k, t in published.items())
    cuts = statistics.quantiles(latencies, n=100, method="inclusive")
    return LatencyRun(rate, len(latencies), cuts[49], cuts[94], cuts[98], latencies[-1], rss)


async def publish_steadily(
    place: Scratch,
    rate: float,
    duration: float,
    published: dict[str, float],
    announce: queue.SimpleQueue[tuple[str, float]],
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
        clock = SystemClock.from_environment()
        with progress(f"publishing at {rate:g}/s", total=int(rate * duration), unit="event") as bar:
            while (elapsed := time.monotonic() - start) < duration:
                due = int(elapsed * rate) - sent
                for _ in range(due):
                    event_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
                    account = f"acct_{rng.randrange(1000)}"
                    body = usage_event(event_id, account, 100, clock())
                    published[event_id] = sent_at = time.monotonic()
                    announce.put((event_id, sent_at))
                    task = asyncio.ensure_future(
                        exchange.publish(usage_message(body), routing_key=USAGE_ROUTING_KEY)
                    )
                    pending.add(task)
                    task.add_done_callback(pending.discard)
                sent += max(due, 0)
                bar.update(max(due, 0))
                await asyncio.sleep(TICK_SECONDS)
        if pending:
            await asyncio.gather(*pending)

"""Worker throughput: preload the queue, start the worker, time first delivery to last commit."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aio_pika
import psycopg
from tqdm import tqdm

from billing_worker.bench.scratch import Scratch, publish, queue_depth
from billing_worker.bench.worker_process import BatchStats, WorkerProcess
from billing_worker.bench.workload import Workload
from billing_worker.entrypoints.progress import progress

POLL_SECONDS = 0.005
PROGRESS_POLL_SECONDS = 0.25


@dataclass(frozen=True, slots=True)
class WorkerRun:
    """One measured run of the real worker."""

    events_per_second: float
    seconds: float
    peak_rss_mb: float
    batches: BatchStats
    ledger_rows: int


async def measure_worker(
    place: Scratch, workload: Workload, settings: dict[str, str], log_path: Path
) -> WorkerRun:
    """Throughput of the worker process over ``workload``, checked through the database.

    The clock starts when the broker's ready count first drops (the first delivery,
    seen from outside within a few ms) and stops when the ledger holds every distinct
    event; the workload ends with a new event, so every delivery has been settled then.
    """
    await publish(place.amqp_url, place.topology.usage_exchange, workload.bodies)
    connection = await aio_pika.connect(place.amqp_url)
    async with connection:
        channel = await connection.channel()
        worker = WorkerProcess(place, settings, log_path)
        try:
            with progress("worker draining the queue", total=workload.total, unit="event") as bar:
                started = await _first_delivery(channel, place.topology.usage_queue, workload.total)
                follow = None
                if not bar.disable:
                    follow = asyncio.create_task(
                        _follow_queue(channel, place.topology.usage_queue, workload.total, bar)
                    )
                try:
                    finished = await asyncio.to_thread(
                        _wait_for_event, place, workload.source, workload.last_event_id
                    )
                finally:
                    if follow is not None:
                        follow.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await follow
            rss = worker.peak_rss_mb()
            batches = await asyncio.to_thread(worker.batch_stats)
        finally:
            worker.stop()
    rows = await asyncio.to_thread(_ledger_rows, place, workload.source)
    if rows != workload.unique:
        raise AssertionError(f"ledger has {rows} rows for {workload.unique} distinct events")
    seconds = finished - started
    return WorkerRun(workload.total / seconds, seconds, rss, batches, rows)


async def _first_delivery(channel: aio_pika.abc.AbstractChannel, queue: str, total: int) -> float:
    deadline = time.monotonic() + 120
    while await queue_depth(channel, queue) >= total:
        if time.monotonic() > deadline:
            raise TimeoutError("the worker never took a delivery")
        await asyncio.sleep(POLL_SECONDS)
    return time.monotonic()


async def _follow_queue(
    channel: aio_pika.abc.AbstractChannel, queue: str, total: int, bar: tqdm[Any]
) -> None:
    """Move ``bar`` to the deliveries the worker has taken (cheap: a passive declare)."""
    while True:
        taken = total - await queue_depth(channel, queue)
        bar.update(max(0, taken - bar.n))
        await asyncio.sleep(PROGRESS_POLL_SECONDS)


def _wait_for_event(place: Scratch, source: str, event_id: str, timeout: float = 600) -> float:
    """Poll (by index, cheap whatever the ledger size) until ``event_id`` is committed."""
    deadline = time.monotonic() + timeout
    with psycopg.connect(place.libpq_url, autocommit=True) as conn:
        while True:
            row = conn.execute(
                "SELECT 1 FROM usage_ledger WHERE event_source = %s AND event_id = %s",
                (source, event_id),
            ).fetchone()
            if row is not None:
                return time.monotonic()
            if time.monotonic() > deadline:
                raise TimeoutError("the worker did not record every event")
            time.sleep(POLL_SECONDS)


def _ledger_rows(place: Scratch, source: str) -> int:
    with psycopg.connect(place.libpq_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM usage_ledger WHERE event_source = %s", (source,)
        ).fetchone()
    return int(row[0]) if row else 0

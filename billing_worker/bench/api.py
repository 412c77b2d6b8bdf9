"""The API under load: usage reads at a steady rate (over a preloaded ledger if asked) and
ingest through one API process, each against a real ``billing-worker api`` child."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import statistics
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import httpx

from billing_worker.adapters.clock import OFFSET_VARIABLE, SystemClock
from billing_worker.adapters.postgres.api_keys import PostgresApiKeys
from billing_worker.adapters.postgres.database import create_engine_for
from billing_worker.bench.ledger_growth import preload_ledger
from billing_worker.bench.scratch import Scratch
from billing_worker.bench.worker_process import _free_port
from billing_worker.bench.workload import usage_event

INGEST_BATCH = 500
INGEST_CONCURRENCY = 4
READ_TIMEOUT_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class ApiRun:
    """One run's figures."""

    preload_rows: int
    read_rate: float
    reads: int
    read_errors: int
    read_p50_ms: float
    read_p99_ms: float
    read_max_ms: float
    ingest_events: int
    ingest_events_per_second: float


async def measure_api(
    place: Scratch, *, rate: float, duration: float, events: int, preload_rows: int, log_path: Path
) -> ApiRun:
    """Preload, start the API, read ``GET /v1/accounts/{a}/usage`` at ``rate`` for
    ``duration`` seconds (accounts in turn), then post ``events`` in batches."""
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request otherwise
    await asyncio.to_thread(preload_ledger, place, preload_rows)  # 0 rows: the accounts only
    engine = create_engine_for(place.database_url, pool_size=1)
    try:
        key = await PostgresApiKeys(engine).create(
            f"bench-{uuid.uuid4().hex[:6]}", "write", SystemClock.from_environment()()
        )
    finally:
        await engine.dispose()
    port = _free_port()
    with log_path.open("ab") as log:
        process = _spawn(place, port, log)
        try:
            base = f"http://127.0.0.1:{port}"
            headers = {"Authorization": f"Bearer {key}"}
            limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
            async with httpx.AsyncClient(
                base_url=base, headers=headers, limits=limits, timeout=READ_TIMEOUT_SECONDS
            ) as client:
                await _wait_ready(client, process)
                latencies, errors = await _paced_reads(client, rate, duration)
                ingest_rate = await _ingest(client, events)
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
    ordered = sorted(latencies) or [float("nan")]
    return ApiRun(
        preload_rows=preload_rows,
        read_rate=rate,
        reads=len(latencies),
        read_errors=errors,
        read_p50_ms=statistics.median(ordered) * 1000,
        read_p99_ms=ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000,
        read_max_ms=ordered[-1] * 1000,
        ingest_events=events,
        ingest_events_per_second=ingest_rate,
    )


def _spawn(place: Scratch, port: int, log: BinaryIO) -> subprocess.Popen[bytes]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("BILLING_") or k == OFFSET_VARIABLE
    }
    env.update(
        {
            "BILLING_AMQP_URL": place.amqp_url,
            "BILLING_DATABASE_URL": place.database_url,
            "BILLING_NAMESPACE": place.topology.namespace,
            "BILLING_API_HOST": "127.0.0.1",
            "BILLING_API_PORT": str(port),
            "BILLING_LOG_LEVEL": "warning",
        }
    )
    return subprocess.Popen(
        [sys.executable, "-m", "billing_worker", "api"],
        env=env,
        stdout=log,
        stderr=log,
    )


async def _wait_ready(client: httpx.AsyncClient, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"the API exited with {process.returncode}")
        try:
            if (await client.get("/readyz")).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError("the API did not become ready")
        await asyncio.sleep(0.1)


async def _paced_reads(
    client: httpx.AsyncClient, rate: float, duration: float
) -> tuple[list[float], int]:
    latencies: list[float] = []
    errors = 0
    tasks: set[asyncio.Task[None]] = set()

    async def read(n: int) -> None:
        nonlocal errors
        started = time.perf_counter()
        try:
            response = await client.get(f"/v1/accounts/acct_{n % 1000}/usage")
            if response.status_code != 200:
                errors += 1
        except httpx.HTTPError:
            errors += 1
        latencies.append(time.perf_counter() - started)

    start = time.monotonic()
    sent = 0
    while (elapsed := time.monotonic() - start) < duration:
        due = int(elapsed * rate) - sent
        for _ in range(due):
            task = asyncio.create_task(read(sent))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            sent += 1
        await asyncio.sleep(0.002)
    if tasks:
        await asyncio.wait(tasks)
    return latencies, errors


async def _ingest(client: httpx.AsyncClient, events: int) -> float:
    now = SystemClock.from_environment()().replace(microsecond=0)
    bodies = [
        json.loads(usage_event(str(uuid.uuid4()), f"acct_{i % 1000}", 10, now, "bench-api"))
        for i in range(events)
    ]
    batches = [bodies[i : i + INGEST_BATCH] for i in range(0, len(bodies), INGEST_BATCH)]
    window = asyncio.Semaphore(INGEST_CONCURRENCY)
    accepted = 0

    async def post(batch: list[object]) -> None:
        nonlocal accepted
        async with window:
            response = await client.post("/v1/events", json=batch, timeout=60)
            if response.status_code == 202:
                accepted += sum(r["status"] == "accepted" for r in response.json()["results"])

    started = time.perf_counter()
    await asyncio.gather(*(post(batch) for batch in batches))
    seconds = time.perf_counter() - started
    if accepted != events:
        raise RuntimeError(f"only {accepted} of {events} events were accepted")
    return events / seconds

"""Faults — database outage, broker connection loss, SIGTERM, SIGKILL — and still exactly once.

Quick, focused checks; the long scenarios, which end with every invariant (ledger, totals,
billing events, dead letters, counters), are in ``tests/reliability/test_faults.py``.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import subprocess
from pathlib import Path
from urllib.parse import urlparse

import aio_pika
import psycopg
import pytest

from tests.conftest import admin
from tests.e2e.conftest import (
    USAGE_KEY,
    Bus,
    StartWorker,
    WorkerProcess,
    encode,
    event,
    http_get,
    sample,
    wait_until,
    worker_settings,
)
from tests.ledger_checks import aggregates_match_ledger


def ledger_count(sql: psycopg.Connection) -> int:
    row = sql.execute("SELECT count(*) FROM usage_ledger").fetchone()
    return int(row[0]) if row else 0


def assert_exactly_once(sql: psycopg.Connection, expected: int) -> None:
    """Every event has one ledger row, and the aggregates equal a rebuild from the ledger."""
    assert ledger_count(sql) == expected
    assert sql.execute(
        "SELECT count(*) FROM (SELECT DISTINCT event_source, event_id FROM usage_ledger) k"
    ).fetchone() == (expected,)
    assert aggregates_match_ledger(sql)


def events(n: int, prefix: str = "e") -> list[bytes]:
    return [
        encode(event(f"{prefix}{i}", subject=f"acct_{i % 11}", data={"quantity": i % 5 + 1}))
        for i in range(n)
    ]


async def test_database_outage_requeues_then_recovers(
    start_worker: StartWorker, bus: Bus, database_url: str, sql: psycopg.Connection
) -> None:
    """With the database gone, deliveries go back to the queue; once it returns, all land once."""
    name = urlparse(database_url).path.lstrip("/")
    worker = await start_worker(db_retry_attempts=2, db_retry_max_wait_seconds=0.1)
    assert worker.http is not None
    with admin() as conn:
        conn.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS false')
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,)
        )
    sql.close()  # terminated above; reopened below
    try:
        await bus.publish_all(events(40))
        await wait_until(
            lambda: sample(worker, "billing_events_requeued_total") >= 40,
            what="the batch to be handed back",
        )
        assert sample(worker, "billing_events_recorded_total") == 0
        await wait_until(
            lambda: http_get(f"http://127.0.0.1:{worker.http.port}/readyz")[0] == 503,  # type: ignore[union-attr]
            what="/readyz to report the database down",
        )
    finally:
        with admin() as conn:
            conn.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS true')
    await wait_until(
        lambda: sample(worker, "billing_events_recorded_total") == 40,
        timeout=30,
        what="recovery",
    )
    with psycopg.connect(database_url.replace("+psycopg", "")) as fresh:
        assert_exactly_once(fresh, 40)
    assert sample(worker, "billing_events_received_total") == 40


@pytest.mark.skipif(shutil.which("rabbitmqctl") is None, reason="needs rabbitmqctl")
async def test_broker_connection_loss_reconnects(
    start_worker: StartWorker, bus: Bus, sql: psycopg.Connection
) -> None:
    """The broker closing the worker's connection: it reconnects, resumes, counts once."""
    worker = await start_worker()
    await bus.publish_all(events(100, "a"))
    await wait_until(lambda: sample(worker, "billing_events_recorded_total") == 100)

    listing = subprocess.run(
        ["rabbitmqctl", "-q", "list_connections", "pid", "client_properties"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    pids = [line.split("\t")[0] for line in listing.splitlines() if bus.namespace in line]
    assert pids, "the worker's connection is named after its namespace"
    for pid in pids:
        subprocess.run(
            ["rabbitmqctl", "-q", "close_connection", pid, "test: simulated broker loss"],
            check=True,
            timeout=60,
        )
    await bus.publish_all(events(100, "b"))
    await wait_until(
        lambda: sample(worker, "billing_events_recorded_total") == 200,
        timeout=45,
        what="recording after reconnect",
    )
    assert_exactly_once(sql, 200)


@pytest.mark.slow
async def test_sigterm_drains_commits_and_exits_zero(
    bus: Bus, database_url: str, namespace: str, sql: psycopg.Connection, tmp_path: Path
) -> None:
    """SIGTERM mid-stream: in-flight work is committed and acked, nothing lost, exit code 0."""
    settings = worker_settings(database_url, namespace, batch_size=100)
    proc = WorkerProcess(settings, tmp_path / "worker.log")
    try:
        await proc.wait_ready()
        bodies = events(4000)
        publishing = asyncio.create_task(bus.publish_all(bodies))
        await wait_until(lambda: ledger_count(sql) > 200, what="the worker to be busy")
        proc.signal(signal.SIGTERM)
        assert await proc.wait_exit() == 0, proc.log_path.read_text()[-3000:]
        await publishing
    finally:
        proc.kill()
    # everything published is either committed or still waiting in the queue
    left = await bus.depth("billing-worker.usage")
    assert ledger_count(sql) + left == len(bodies)
    log_lines = [json.loads(line) for line in proc.log_path.read_text().splitlines() if line]
    assert any(line["event"] == "worker_stopped" and line["drained"] for line in log_lines)

    second = WorkerProcess(settings, tmp_path / "worker2.log")
    try:
        await second.wait_ready()
        await wait_until(lambda: ledger_count(sql) == len(bodies), timeout=60, what="the rest")
        second.signal(signal.SIGINT)
        assert await second.wait_exit() == 0
    finally:
        second.kill()
    assert_exactly_once(sql, len(bodies))


@pytest.mark.slow
async def test_sigkill_mid_run_then_restart_counts_everything_once(
    bus: Bus, database_url: str, namespace: str, sql: psycopg.Connection, tmp_path: Path
) -> None:
    """A worker killed without warning loses nothing and doubles nothing after a restart."""
    settings = worker_settings(database_url, namespace, batch_size=200)
    unique = events(5000)
    bodies = unique + unique[::10]  # 10% duplicates, re-sent later
    first = WorkerProcess(settings, tmp_path / "worker1.log")
    try:
        await first.wait_ready()
        publishing = asyncio.create_task(bus.publish_all(bodies))
        await wait_until(lambda: ledger_count(sql) > 1000, timeout=60, what="progress")
        first.process.kill()  # SIGKILL: no drain, no acks for whatever was in flight
        await first.wait_exit()
        await publishing
    finally:
        first.kill()
    assert ledger_count(sql) < len(unique), "the crash happened mid-run"

    second = WorkerProcess(settings, tmp_path / "worker2.log")
    try:
        await second.wait_ready()
        await wait_until(
            lambda: ledger_count(sql) == len(unique), timeout=90, what="recovery after crash"
        )

        async def queue_empty() -> bool:
            return await bus.depth("billing-worker.usage") == 0

        await wait_until(queue_empty, timeout=30, what="the queue to drain")
        second.signal(signal.SIGTERM)
        assert await second.wait_exit() == 0
    finally:
        second.kill()
    assert_exactly_once(sql, len(unique))


async def test_queue_deleted_under_the_worker_is_redeclared_and_consumed(
    start_worker: StartWorker, bus: Bus, sql: psycopg.Connection
) -> None:
    """The broker cancelling the consumer (queue deleted) does not leave the worker deaf."""
    worker = await start_worker()
    await bus.publish_all(events(20, "before"))
    await wait_until(lambda: sample(worker, "billing_events_recorded_total") == 20)
    channel = await bus.connection.channel()
    await channel.queue_delete(bus.name("billing-worker.usage"))
    await channel.close()

    async def redeclared() -> bool:
        try:
            return await bus.depth("billing-worker.usage") >= 0
        except aio_pika.exceptions.AMQPError:
            return False

    await wait_until(redeclared, timeout=30, what="the worker to redeclare its queue")
    # The queue is redeclared a moment before its binding: until then a publish is
    # unroutable and dropped by the broker, so each one is retried until it is routed.
    channel = await bus.connection.channel(publisher_confirms=True, on_return_raises=True)
    exchange = await channel.get_exchange(bus.name("billing.usage"))
    for body in events(30, "after"):

        async def routed(body: bytes = body) -> bool:
            message = aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
            try:
                await exchange.publish(message, routing_key=USAGE_KEY, mandatory=True)
            except aio_pika.exceptions.DeliveryError:
                return False
            return True

        await wait_until(routed, timeout=30, what="the queue to be bound again")
    await wait_until(
        lambda: sample(worker, "billing_events_recorded_total") == 50,
        timeout=30,
        what="consumption to resume",
    )
    assert_exactly_once(sql, 50)


async def test_two_replicas_on_one_queue_count_each_event_once(
    start_worker: StartWorker, bus: Bus, sql: psycopg.Connection
) -> None:
    """Two workers sharing the queue and the database, fed resends: every event once."""
    first = await start_worker(batch_size=50)
    second = await start_worker(batch_size=50)
    unique = events(2000, "r")
    await bus.publish_all(unique + unique[::4])  # a quarter resent, maybe to the other replica

    def settled() -> float:
        return sum(sample(w, "billing_events_received_total") for w in (first, second))

    await wait_until(lambda: settled() == 2500, timeout=60, what="both replicas to settle all")
    recorded = sum(sample(w, "billing_events_recorded_total") for w in (first, second))
    duplicates = sum(sample(w, "billing_events_duplicate_total") for w in (first, second))
    assert (recorded, duplicates) == (2000, 500)
    assert sample(first, "billing_events_recorded_total") > 0
    assert sample(second, "billing_events_recorded_total") > 0, "both replicas took work"
    assert_exactly_once(sql, 2000)

"""End-to-end helpers: a worker in this process or as a child process, and a bus client."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import aio_pika
import pytest
from aio_pika.abc import (
    AbstractChannel,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
)

from billing_worker.adapters.pricebook_file import load_pricebook
from billing_worker.bench.worker_process import spawn_worker
from billing_worker.config import Settings
from billing_worker.entrypoints.worker import Worker
from tests.clock import now
from tests.conftest import AMQP_URL

USAGE_KEY = "usage.chat-service.chat.tokens"


_test_started_at: list[datetime] = []


@pytest.fixture(autouse=True)
def test_started_at() -> Iterator[datetime]:
    """When this test started, by the session's clock: the default time of its events, the
    same however often a test builds one (an event built twice is a duplicate, never a
    conflict)."""
    _test_started_at.append(now().replace(microsecond=0))
    yield _test_started_at[-1]
    _test_started_at.pop()


def event_time() -> str:
    """The default ``time`` of this test's events (RFC 3339, Z)."""
    moment = _test_started_at[-1] if _test_started_at else now().replace(microsecond=0)
    return moment.isoformat().replace("+00:00", "Z")


def event(event_id: str, **overrides: Any) -> dict[str, Any]:
    """A valid usage event as a dict, happening when the test started."""
    body: dict[str, Any] = {
        "specversion": "1.0",
        "id": event_id,
        "source": "chat-service",
        "type": "chat.tokens",
        "subject": "acct_1",
        "time": event_time(),
        "datacontenttype": "application/json",
        "data": {"quantity": 10, "model": "gpt-4"},
    }
    body.update(overrides)
    return body


def encode(body: dict[str, Any]) -> bytes:
    return json.dumps(body).encode()


async def wait_until(
    condition: Callable[[], bool | Awaitable[bool]], timeout: float = 20, what: str = "condition"
) -> None:
    """Poll ``condition`` until true; fail the test with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


@dataclass
class Bus:
    """A producer's and an inspector's view of one namespace on the broker."""

    connection: AbstractRobustConnection
    channel: AbstractChannel
    namespace: str

    def name(self, base: str) -> str:
        return f"{self.namespace}.{base}"

    async def publish(
        self,
        body: bytes,
        routing_key: str = USAGE_KEY,
        content_type: str | None = "application/json",
        headers: dict[str, Any] | None = None,
    ) -> None:
        """Publish persistently to the usage exchange and wait for the broker's confirm."""
        exchange = await self.channel.get_exchange(self.name("billing.usage"))
        await exchange.publish(
            aio_pika.Message(
                body,
                content_type=content_type,
                headers=headers or {},
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            ),
            routing_key=routing_key,
        )

    async def publish_all(self, bodies: list[bytes], window: int = 200) -> None:
        """Publish many, a window of confirms at a time."""
        for start in range(0, len(bodies), window):
            await asyncio.gather(*(self.publish(b) for b in bodies[start : start + window]))

    async def take_all(self, base: str) -> list[AbstractIncomingMessage]:
        """Remove and return every ready message of queue ``base``."""
        queue = await self.channel.declare_queue(self.name(base), passive=True)
        taken = []
        while (message := await queue.get(no_ack=True, fail=False)) is not None:
            taken.append(message)
        return taken

    async def depth(self, base: str) -> int:
        """Ready messages in queue ``base``."""
        channel = await self.connection.channel()
        try:
            queue = await channel.declare_queue(self.name(base), passive=True)
            return int(queue.declaration_result.message_count or 0)
        finally:
            await channel.close()


@pytest.fixture
async def bus(namespace: str) -> AsyncIterator[Bus]:
    connection = await aio_pika.connect_robust(AMQP_URL)
    channel = await connection.channel(publisher_confirms=True)
    yield Bus(connection, channel, namespace)
    await connection.close()


def worker_settings(database_url: str, namespace: str, **overrides: Any) -> Settings:
    """Settings for a worker confined to this test's database and namespace."""
    values: dict[str, Any] = {
        "amqp_url": AMQP_URL,
        "database_url": database_url,
        "namespace": namespace,
        "http_host": "127.0.0.1",
        "http_port": 0,
        "batch_max_wait_ms": 5,
        "requeue_pause_seconds": 0.2,
        "shutdown_grace_seconds": 15,
        "startup_timeout_seconds": 15,
    }
    values.update(overrides)
    return Settings(**values)


StartWorker = Callable[..., Awaitable[Worker]]


@pytest.fixture
async def start_worker(database_url: str, namespace: str) -> AsyncIterator[StartWorker]:
    """Start in-process workers on this test's database and namespace; stopped afterwards."""
    started: list[Worker] = []

    async def start(**overrides: Any) -> Worker:
        settings = worker_settings(database_url, namespace, **overrides)
        worker = Worker(settings, load_pricebook(settings.pricebook))
        started.append(worker)
        await worker.start()
        return worker

    yield start
    for worker in started:
        await worker.stop()


def sample(worker: Worker, name: str, **labels: str) -> float:
    """The current value of a metric sample of ``worker`` (0 when absent)."""
    queue = f"{worker.settings.namespace}.billing-worker.usage"
    value = worker.metrics.registry.get_sample_value(name, {"queue": queue, **labels})
    return value or 0.0


def rejected_by_reason(worker: Worker) -> dict[str, float]:
    """billing_events_rejected_total per reason."""
    result = {}
    for metric in worker.metrics.registry.collect():
        for s in metric.samples:
            if s.name == "billing_events_rejected_total":
                result[s.labels["reason"]] = s.value
    return result


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - loopback URL
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


class WorkerProcess:
    """``billing-worker run`` as a child process, as an operator would run it."""

    def __init__(self, settings: Settings, log_path: Path) -> None:
        self.port = free_port()
        self.log_path = log_path
        self._log = log_path.open("ab")
        self.process = spawn_worker(
            {
                "BILLING_AMQP_URL": settings.amqp_url.get_secret_value(),
                "BILLING_DATABASE_URL": settings.database_url.get_secret_value(),
                "BILLING_NAMESPACE": settings.namespace,
                "BILLING_HTTP_HOST": "127.0.0.1",
                "BILLING_HTTP_PORT": str(self.port),
                "BILLING_BATCH_SIZE": str(settings.batch_size),
                "BILLING_BATCH_MAX_WAIT_MS": str(settings.batch_max_wait_ms),
            },
            self._log,
        )

    async def wait_ready(self, timeout: float = 30) -> None:
        def ready() -> bool:
            if self.process.poll() is not None:
                pytest.fail(f"worker exited early:\n{self.log_path.read_text()[-3000:]}")
            try:
                return http_get(f"http://127.0.0.1:{self.port}/readyz")[0] == 200
            except OSError:
                return False

        await wait_until(ready, timeout, "the worker process to be ready")

    def signal(self, sig: signal.Signals) -> None:
        self.process.send_signal(sig)

    async def wait_exit(self, timeout: float = 30) -> int:
        await wait_until(lambda: self.process.poll() is not None, timeout, "the worker to exit")
        self._log.close()
        return int(self.process.returncode)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._log.close()


@pytest.fixture
async def events_queue(bus: Bus) -> AsyncIterator[AbstractQueue]:
    """A subscriber's queue bound to every billing event of this namespace."""
    exchange = await bus.channel.declare_exchange(
        bus.name("billing.events"), aio_pika.ExchangeType.TOPIC, durable=True
    )
    queue = await bus.channel.declare_queue(bus.name(f"test-events-{uuid.uuid4().hex[:6]}"))
    await queue.bind(exchange, routing_key="#")
    yield queue
    await queue.delete(if_unused=False, if_empty=False)


async def received(
    queue: AbstractQueue, count: int, timeout: float = 20
) -> list[AbstractIncomingMessage]:
    """Wait until ``count`` messages arrived; return them (and anything else already there)."""
    messages: list[AbstractIncomingMessage] = []

    async def enough() -> bool:
        while (message := await queue.get(no_ack=True, fail=False)) is not None:
            messages.append(message)
        return len(messages) >= count

    await wait_until(enough, timeout, f"{count} billing events")
    await asyncio.sleep(0.3)
    while (message := await queue.get(no_ack=True, fail=False)) is not None:
        messages.append(message)
    return messages

"""``billing-worker stripe-relay`` against the real broker: what it forwards, what it refuses,
and that it never answers 2xx for a delivery the broker did not confirm."""

from __future__ import annotations

import asyncio
import http.client
import json
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aio_pika
import pytest

from billing_worker.config import Settings
from billing_worker.entrypoints.stripe_relay import WEBHOOK_PATH, StripeRelay
from tests.clock import child_env
from tests.conftest import AMQP_URL
from tests.e2e.conftest import Bus, free_port, wait_until

SIGNATURE = (
    "t=1763720100,v1=5257a869e7ecebeda32affa62cdca3fa51cad7e77a0e56ff536d0ce8e108d8bd,v0=6ffbb59b"
)
# Odd spacing, key order, escapes and raw UTF-8: anything re-encoded would differ.
BODY = (
    b'{\n  "id": "evt_1Q2w3E",  "object":"event",\r\n  "type": "checkout.session.completed",'
    b' "data": {"object": {"client_reference_id": "acct_\xc3\xa9t\xc3\xa9", "amount": 1.50,'
    b' "note": "\\u00e9 \\/ \xf0\x9f\x92\xb3"}}}\n'
)


@dataclass
class Reply:
    status: int
    body: bytes
    headers: dict[str, str]

    def json(self) -> Any:
        return json.loads(self.body)


def _request(
    port: int,
    method: str,
    path: str,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    *,
    send_length: bool = True,
) -> Reply:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        for name, value in (headers or {}).items():
            conn.putheader(name, value)
        if send_length:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body or None)
        response = conn.getresponse()
        return Reply(response.status, response.read(), dict(response.getheaders()))
    finally:
        conn.close()


async def call(port: int, method: str, path: str, body: bytes = b"", **kwargs: Any) -> Reply:
    """One HTTP request from a thread: the relay's requests need this event loop free."""
    return await asyncio.to_thread(_request, port, method, path, body, **kwargs)


async def deliver(port: int, body: bytes = BODY, signature: str | None = SIGNATURE) -> Reply:
    """POST a webhook delivery as Stripe does."""
    headers = {"Content-Type": "application/json; charset=utf-8", "User-Agent": "Stripe/1.0"}
    if signature is not None:
        headers["Stripe-Signature"] = signature
    return await call(port, "POST", WEBHOOK_PATH, body, headers=headers)


def relay_settings(namespace: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "amqp_url": AMQP_URL,
        "namespace": namespace,
        "stripe_relay_host": "127.0.0.1",
        "stripe_relay_port": 0,
        "startup_timeout_seconds": 60,
    }
    values.update(overrides)
    return Settings(**values)


StartRelay = Callable[..., Awaitable[StripeRelay]]


@pytest.fixture
async def start_relay(namespace: str) -> AsyncIterator[StartRelay]:
    """Start in-process relays on this test's namespace (connected unless told otherwise)."""
    started: list[StripeRelay] = []

    async def start(
        *, wait_connected: bool = True, reconnect_interval: float = 1.0, **overrides: Any
    ) -> StripeRelay:
        relay = StripeRelay(
            relay_settings(namespace, **overrides), reconnect_interval=reconnect_interval
        )
        started.append(relay)
        await relay.start()
        if wait_connected:
            assert relay.connecting is not None
            await asyncio.wait_for(asyncio.shield(relay.connecting), 20)
        return relay

    yield start
    for relay in started:
        await relay.stop()


def delivered(relay: StripeRelay, outcome: str) -> float:
    value = relay.registry.get_sample_value(
        "billing_stripe_relay_deliveries_total", {"outcome": outcome}
    )
    return value or 0.0


def header(message: aio_pika.abc.AbstractIncomingMessage, name: str) -> str:
    value = (message.headers or {})[name]
    return value.decode() if isinstance(value, bytes) else str(value)


async def test_delivery_is_relayed_byte_for_byte(start_relay: StartRelay, bus: Bus) -> None:
    """A signed POST answers 200 {"relayed": true} and lands on the worker's Stripe queue as
    the exact request bytes, the Stripe-Signature value unchanged, persistent, JSON; the
    relay declared that queue (and its DLQ) itself, before any worker ran."""
    relay = await start_relay()

    reply = await deliver(relay.port)

    assert reply.status == 200, reply.body
    assert reply.json() == {"relayed": True}
    messages = await bus.take_all("billing-worker.stripe")
    assert len(messages) == 1
    message = messages[0]
    assert message.body == BODY
    assert header(message, "stripe-signature") == SIGNATURE
    assert message.content_type == "application/json"
    assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    assert message.exchange == f"{bus.namespace}.billing.stripe"
    assert await bus.depth("billing-worker.stripe.dlq") == 0
    assert delivered(relay, "relayed") == 1

    metrics = await call(relay.port, "GET", "/metrics", send_length=False)
    assert metrics.status == 200
    assert 'billing_stripe_relay_deliveries_total{outcome="relayed"} 1.0' in metrics.body.decode()


async def test_body_size_limit_is_inclusive(start_relay: StartRelay, bus: Bus) -> None:
    """A body of exactly BILLING_STRIPE_RELAY_MAX_BODY_BYTES is relayed; one byte more is 413
    and nothing of it is published."""
    relay = await start_relay(stripe_relay_max_body_bytes=2048)
    at_limit = b'{"pad": "' + b"x" * (2048 - 11) + b'"}'
    assert len(at_limit) == 2048

    assert (await deliver(relay.port, at_limit)).status == 200
    over = await deliver(relay.port, at_limit + b" ")

    assert over.status == 413
    assert over.json()["relayed"] is False
    bodies = [m.body for m in await bus.take_all("billing-worker.stripe")]
    assert bodies == [at_limit]
    assert delivered(relay, "refused_too_large") == 1


async def test_too_large_is_refused_without_reading_the_body(
    start_relay: StartRelay, bus: Bus
) -> None:
    """The 413 comes from Content-Length alone: the client sends only the headers of a
    100 MB delivery and still gets its answer at once."""
    relay = await start_relay()
    headers = {"Stripe-Signature": SIGNATURE, "Content-Length": str(100 * 1024 * 1024)}

    reply = await asyncio.wait_for(
        call(relay.port, "POST", WEBHOOK_PATH, headers=headers, send_length=False), 5
    )

    assert reply.status == 413
    assert await bus.depth("billing-worker.stripe") == 0
    assert delivered(relay, "refused_too_large") == 1
    assert delivered(relay, "relayed") == 0


async def test_unsigned_or_unsized_deliveries_are_refused(
    start_relay: StartRelay, bus: Bus
) -> None:
    """No Stripe-Signature header (or an empty one) is 400; no Content-Length is 411; neither
    is published."""
    relay = await start_relay()

    unsigned = await deliver(relay.port, signature=None)
    empty = await deliver(relay.port, signature="")
    unsized = await call(
        relay.port,
        "POST",
        WEBHOOK_PATH,
        headers={"Stripe-Signature": SIGNATURE},
        send_length=False,
    )

    assert unsigned.status == 400
    assert unsigned.json()["relayed"] is False
    assert empty.status == 400
    assert unsized.status == 411
    assert await bus.depth("billing-worker.stripe") == 0
    assert delivered(relay, "refused_no_signature") == 2
    assert delivered(relay, "refused_bad_length") == 1


async def test_other_paths_and_methods(start_relay: StartRelay, bus: Bus) -> None:
    """Signed POSTs elsewhere are 404; other methods on the webhook path are 405 (Allow:
    POST); /healthz and /readyz answer 200 while connected. None of it is published."""
    relay = await start_relay()

    elsewhere = await deliver_to(relay.port, "/stripe/webhooks")
    root = await deliver_to(relay.port, "/")
    get = await call(relay.port, "GET", WEBHOOK_PATH, send_length=False)
    put = await call(relay.port, "PUT", WEBHOOK_PATH, BODY, headers={"Stripe-Signature": "x"})

    assert elsewhere.status == 404
    assert root.status == 404
    assert get.status == 405
    assert get.headers["Allow"] == "POST"
    assert put.status == 405
    assert (await call(relay.port, "GET", "/healthz", send_length=False)).status == 200
    ready = await call(relay.port, "GET", "/readyz", send_length=False)
    assert ready.status == 200, ready.body
    assert await bus.depth("billing-worker.stripe") == 0


async def deliver_to(port: int, path: str) -> Reply:
    return await call(port, "POST", path, BODY, headers={"Stripe-Signature": SIGNATURE})


async def test_no_broker_means_503_and_not_ready(start_relay: StartRelay) -> None:
    """With nothing listening at BILLING_AMQP_URL the relay still serves: /healthz 200,
    /readyz 503, and every delivery 503 with a reason, never 2xx."""
    dead = f"amqp://guest:guest@127.0.0.1:{free_port()}/"
    relay = await start_relay(amqp_url=dead, wait_connected=False)

    replies = [await deliver(relay.port) for _ in range(3)]

    assert [r.status for r in replies] == [503, 503, 503]
    assert replies[0].json() == {"relayed": False, "error": "not connected to the broker"}
    assert delivered(relay, "broker_unavailable") == 3
    assert delivered(relay, "relayed") == 0
    assert (await call(relay.port, "GET", "/healthz", send_length=False)).status == 200
    ready = await call(relay.port, "GET", "/readyz", send_length=False)
    assert ready.status == 503
    assert ready.json()["status"] == "not ready"


async def test_readyz_follows_the_broker_connection(start_relay: StartRelay) -> None:
    """/readyz is 503 for a relay without a broker and 200 for one connected to it."""
    dead = f"amqp://guest:guest@127.0.0.1:{free_port()}/"
    without = await start_relay(amqp_url=dead, wait_connected=False)
    with_broker = await start_relay()

    assert (await call(without.port, "GET", "/readyz", send_length=False)).status == 503
    assert (await call(with_broker.port, "GET", "/readyz", send_length=False)).status == 200


async def test_unroutable_delivery_is_503(start_relay: StartRelay, bus: Bus) -> None:
    """Publishes are mandatory: with the Stripe queue gone (nothing bound to the exchange)
    the broker returns the message and the relay answers 503, not 200."""
    relay = await start_relay()
    await bus.channel.queue_delete(bus.name("billing-worker.stripe"))

    reply = await deliver(relay.port)

    assert reply.status == 503
    assert "unroutable" in reply.json()["error"]
    assert delivered(relay, "broker_unavailable") == 1
    assert delivered(relay, "relayed") == 0


def _close_connections_named(needle: str) -> int:
    listing = subprocess.run(
        ["rabbitmqctl", "-q", "list_connections", "pid", "client_properties"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    pids = [line.split("\t")[0] for line in listing.splitlines() if needle in line]
    for pid in pids:
        subprocess.run(
            ["rabbitmqctl", "-q", "close_connection", pid, "test: simulated broker loss"],
            check=True,
            timeout=60,
        )
    return len(pids)


@pytest.mark.skipif(shutil.which("rabbitmqctl") is None, reason="needs rabbitmqctl")
async def test_lost_connection_503_then_relays_after_reconnect(
    start_relay: StartRelay, bus: Bus
) -> None:
    """The broker closing the relay's connection: deliveries are 503 (and /readyz 503) while
    it is down, 200 again once the robust connection is back; every 200 is in the queue."""
    relay = await start_relay(reconnect_interval=5.0)
    first = BODY.replace(b"evt_1Q2w3E", b"evt_before")
    assert (await deliver(relay.port, first)).status == 200

    closed = await asyncio.to_thread(_close_connections_named, f"stripe-relay {bus.namespace}")
    assert closed == 1, "the relay's connection is named after its namespace"
    await wait_until(lambda: not relay.ready, timeout=10, what="the relay to notice")

    down = await deliver(relay.port, BODY.replace(b"evt_1Q2w3E", b"evt_during"))
    ready_while_down = await call(relay.port, "GET", "/readyz", send_length=False)
    assert down.status == 503
    assert ready_while_down.status == 503

    await wait_until(lambda: relay.ready, timeout=30, what="the relay to reconnect")
    after = BODY.replace(b"evt_1Q2w3E", b"evt_after")
    assert (await deliver(relay.port, after)).status == 200
    bodies = [m.body for m in await bus.take_all("billing-worker.stripe")]
    assert bodies == [first, after]
    assert delivered(relay, "relayed") == 2
    assert delivered(relay, "broker_unavailable") == 1


class RelayProcess:
    """``python -m billing_worker stripe-relay`` as an operator would run it."""

    def __init__(self, namespace: str, log_path: Path, **variables: str) -> None:
        self.port = free_port()
        self.log_path = log_path
        self._log = log_path.open("ab")
        env = child_env()
        env.update(
            {
                "BILLING_AMQP_URL": AMQP_URL,
                "BILLING_NAMESPACE": namespace,
                "BILLING_STRIPE_RELAY_HOST": "127.0.0.1",
                "BILLING_STRIPE_RELAY_PORT": str(self.port),
                **variables,
            }
        )
        self.process = subprocess.Popen(
            [sys.executable, "-m", "billing_worker", "stripe-relay"],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def status(self, path: str) -> int | None:
        try:
            return _request(self.port, "GET", path, send_length=False).status
        except OSError:
            return None

    async def wait_serving(self, path: str = "/readyz", timeout: float = 30) -> None:
        def serving() -> bool:
            if self.process.poll() is not None:
                pytest.fail(f"relay exited early:\n{self.logs()[-3000:]}")
            return self.status(path) == 200

        await wait_until(lambda: asyncio.to_thread(serving), timeout, f"{path} to answer 200")

    async def wait_exit(self, timeout: float = 30) -> int:
        await wait_until(lambda: self.process.poll() is not None, timeout, "the relay to exit")
        return int(self.process.returncode)

    def logs(self) -> str:
        return self.log_path.read_text()

    def log_lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.logs().splitlines() if line.startswith("{")]

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._log.close()


@pytest.mark.slow
async def test_sigterm_finishes_the_request_in_flight_and_exits_zero(
    namespace: str, bus: Bus, tmp_path: Path
) -> None:
    """The CLI command: SIGTERM while a delivery is half-sent still relays it (200), then the
    relay exits 0. Its log has one JSON line per delivery with size and outcome, and neither
    the body nor the signature."""
    relay = RelayProcess(namespace, tmp_path / "relay.log")
    try:
        await relay.wait_serving()
        head = (
            f"POST {WEBHOOK_PATH} HTTP/1.1\r\nHost: relay\r\nContent-Type: application/json\r\n"
            f"Stripe-Signature: {SIGNATURE}\r\nContent-Length: {len(BODY)}\r\n\r\n"
        ).encode()
        with socket.create_connection(("127.0.0.1", relay.port), timeout=20) as sock:
            sock.sendall(head + BODY[:40])
            await asyncio.sleep(0.5)
            relay.process.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.5)
            assert relay.process.poll() is None, "exited with a request in flight"
            sock.sendall(BODY[40:])
            answer = await asyncio.to_thread(sock.makefile("rb").read)
        assert answer.startswith(b"HTTP/1.0 200 "), answer
        assert answer.endswith(b'{"relayed": true}')
        assert await relay.wait_exit() == 0, relay.logs()[-3000:]
    finally:
        relay.kill()

    messages = await bus.take_all("billing-worker.stripe")
    assert [m.body for m in messages] == [BODY]
    logs = relay.logs()
    deliveries = [line for line in relay.log_lines() if line["event"] == "stripe_delivery"]
    assert len(deliveries) == 1
    assert deliveries[0]["outcome"] == "relayed"
    assert deliveries[0]["status"] == 200
    assert deliveries[0]["bytes"] == len(BODY)
    assert "v1=" not in logs
    assert "evt_1Q2w3E" not in logs
    assert any(line["event"] == "stripe_relay_stopped" for line in relay.log_lines())


@pytest.mark.slow
async def test_broker_never_reachable_503s_then_exits_one(namespace: str, tmp_path: Path) -> None:
    """The CLI command without a broker: it serves (healthz 200, readyz 503, deliveries 503)
    until BILLING_STARTUP_TIMEOUT_SECONDS pass, then exits 1 saying why."""
    relay = RelayProcess(
        namespace,
        tmp_path / "relay.log",
        BILLING_AMQP_URL=f"amqp://guest:guest@127.0.0.1:{free_port()}/",
        BILLING_STARTUP_TIMEOUT_SECONDS="8",
    )
    try:
        await relay.wait_serving("/healthz")
        assert relay.status("/readyz") == 503
        assert (await deliver(relay.port)).status == 503
        assert await relay.wait_exit() == 1
    finally:
        relay.kill()
    failures = [line for line in relay.log_lines() if line["event"] == "stripe_relay_start_failed"]
    assert len(failures) == 1
    assert "broker not reachable" in failures[0]["error"]

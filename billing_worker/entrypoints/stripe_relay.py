"""``billing-worker stripe-relay``: Stripe webhook deliveries in over HTTP, out to RabbitMQ.

The relay is deliberately dumb. For each ``POST /stripe/webhook`` it publishes the raw
request body, byte for byte, with the ``Stripe-Signature`` header, to the fanout exchange
``<namespace>.billing.stripe`` (CONTRACTS.md, "In: relayed Stripe events") and answers
``200`` only once the broker has confirmed the message (publisher confirms, ``mandatory``).
It verifies nothing but the presence of the signature header: the worker checks the
signature with the endpoint's signing secret, so the secret never has to live here.
Anything else (broker down, message returned or nacked, no confirm within
``CONFIRM_TIMEOUT_SECONDS``) is a ``503``. Stripe retries non-2xx answers for up to three
days, so a refusal loses nothing; a ``200`` always means the delivery is in the queue.

At start the relay declares the exchange, the worker's quorum queue
``<namespace>.billing-worker.stripe`` and its DLQ, so deliveries are kept even before a
worker has ever run.

Endpoints (``BILLING_STRIPE_RELAY_HOST``:``BILLING_STRIPE_RELAY_PORT``, default
``0.0.0.0:8080``): ``POST /stripe/webhook``; ``GET /healthz`` (the process is up);
``GET /readyz`` (200 while connected to the broker, else 503); ``GET /metrics``
(``billing_stripe_relay_deliveries_total{outcome}``). Bodies over
``BILLING_STRIPE_RELAY_MAX_BODY_BYTES`` are refused with 413 before they are read.

In production
    Serve the relay behind a TLS-terminating reverse proxy or load balancer (Stripe only
    calls ``https://`` endpoints) that forwards ``/stripe/webhook`` to port 8080, and route
    only that path from the internet. In the Stripe Dashboard (Developers -> Webhooks ->
    Add endpoint), or with ``stripe webhook_endpoints create``, set the endpoint URL to
    ``https://<host>/stripe/webhook``, select the events the worker handles, and give the
    endpoint's signing secret (``whsec_...``) to the *worker* as
    ``BILLING_STRIPE_WEBHOOK_SECRET``. Point the proxy's health check at ``/readyz``.

Developing locally
    Run RabbitMQ, then ``billing-worker stripe-relay`` (``BILLING_STRIPE_RELAY_HOST=127.0.0.1``
    keeps it off the network), then::

        stripe listen --forward-to localhost:8080/stripe/webhook

    The CLI prints a signing secret for the session; give it to the worker as
    ``BILLING_STRIPE_WEBHOOK_SECRET``. ``stripe trigger checkout.session.completed`` sends
    a test event through.

Threads: the asyncio loop (and its robust AMQP connection, which reconnects by itself)
runs in the main thread; a threaded WSGI server answers HTTP, and each request thread hands
its publish to the loop and waits for the confirm. On SIGTERM/SIGINT the relay stops
accepting, lets requests in flight finish, closes the connection and exits 0.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import threading
import time
from collections.abc import Iterable
from enum import StrEnum
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import aio_pika
import structlog
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractRobustConnection
from aiormq.exceptions import ChannelPreconditionFailed
from pamqp.commands import Basic
from prometheus_client import CollectorRegistry, Counter, make_wsgi_app

from billing_worker import __version__
from billing_worker.adapters.amqp.topology import Topology, declare_stripe_topology
from billing_worker.adapters.observability.http import StartResponse, WsgiApp
from billing_worker.config import Settings
from billing_worker.entrypoints.signals import stop_on_signals

log = structlog.get_logger(__name__)

WEBHOOK_PATH = "/stripe/webhook"
CONFIRM_TIMEOUT_SECONDS = 10.0
"""How long a request waits for the broker's confirm before answering 503."""
READ_TIMEOUT_SECONDS = 30.0
"""A client silent this long mid-request is dropped (and cannot hold up a shutdown)."""
RECONNECT_INTERVAL_SECONDS = 1.0
CONNECT_TIMEOUT_SECONDS = 10.0


class Outcome(StrEnum):
    """The ``outcome`` label of ``billing_stripe_relay_deliveries_total``."""

    RELAYED = "relayed"
    REFUSED_TOO_LARGE = "refused_too_large"
    REFUSED_NO_SIGNATURE = "refused_no_signature"
    REFUSED_BAD_LENGTH = "refused_bad_length"
    BROKER_UNAVAILABLE = "broker_unavailable"


class StartupError(Exception):
    """The relay cannot serve: its port is taken, or the broker never answered."""


class BrokerUnavailable(Exception):
    """The delivery was not confirmed by the broker; the message says why."""


class _Handler(WSGIRequestHandler):
    timeout = READ_TIMEOUT_SECONDS

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        """Each delivery is logged once, as JSON, by the app."""


class _Server(ThreadingMixIn, WSGIServer):
    """One thread per request; ``server_close`` waits for the requests in flight."""

    daemon_threads = False
    block_on_close = True


class StripeRelay:
    """The HTTP endpoint and its broker connection, started and stopped together."""

    def __init__(
        self,
        settings: Settings,
        *,
        confirm_timeout: float = CONFIRM_TIMEOUT_SECONDS,
        reconnect_interval: float = RECONNECT_INTERVAL_SECONDS,
    ) -> None:
        self.settings = settings
        self.topology = Topology(settings.namespace)
        self.registry = CollectorRegistry()
        self.deliveries = Counter(
            "billing_stripe_relay_deliveries_total",
            "Webhook deliveries answered by the Stripe relay, by outcome.",
            ["outcome"],
            registry=self.registry,
        )
        for outcome in Outcome:
            self.deliveries.labels(outcome=outcome.value)
        self._confirm_timeout = confirm_timeout
        self._reconnect_interval = reconnect_interval
        self._metrics_app = make_wsgi_app(self.registry)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractChannel | None = None
        self._exchange: AbstractExchange | None = None
        self._stopping = False
        self.connecting: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        """The bound HTTP port (useful when configured as 0)."""
        if self._server is None:
            raise RuntimeError("relay not started")
        return int(self._server.server_port)

    @property
    def connected(self) -> bool:
        """True while the relay can publish: connected, topology declared, channel open."""
        connection, channel = self._connection, self._channel
        return (
            self._exchange is not None
            and connection is not None
            and connection.connected.is_set()
            and channel is not None
            and not channel.is_closed
        )

    @property
    def ready(self) -> bool:
        """What ``/readyz`` says: connected and not shutting down."""
        return self.connected and not self._stopping

    async def start(self) -> None:
        """Serve HTTP at once (probes answer, deliveries get 503), then reach the broker.

        ``connecting`` finishes when the topology is declared, or fails with
        ``StartupError`` once ``startup_timeout_seconds`` pass without a broker.
        """
        s = self.settings
        self._loop = asyncio.get_running_loop()
        try:
            self._server = make_server(
                s.stripe_relay_host,
                s.stripe_relay_port,
                self.app,
                server_class=_Server,
                handler_class=_Handler,
            )
        except OSError as exc:
            raise StartupError(
                f"cannot listen on {s.stripe_relay_host}:{s.stripe_relay_port} ({exc}); "
                "set BILLING_STRIPE_RELAY_PORT to a free port"
            ) from exc
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="stripe-relay-http", daemon=True
        )
        self._thread.start()
        self.connecting = asyncio.create_task(self._connect(), name="stripe-relay-connect")
        log.info(
            "stripe_relay_listening",
            version=__version__,
            host=s.stripe_relay_host,
            port=self.port,
            path=WEBHOOK_PATH,
            namespace=s.namespace or None,
            exchange=self.topology.stripe_exchange,
        )

    async def stop(self) -> None:
        """Stop accepting, let requests in flight finish, then close the connection."""
        self._stopping = True
        if self._server is not None:
            # Blocking; off the loop, which the requests in flight still need.
            await asyncio.to_thread(self._close_http)
        if self.connecting is not None and not self.connecting.done():
            self.connecting.cancel()
        if self.connecting is not None:
            with contextlib.suppress(asyncio.CancelledError, StartupError):
                await self.connecting
        if self._connection is not None:
            await self._connection.close()
        log.info("stripe_relay_stopped")

    def _close_http(self) -> None:
        server, thread = self._server, self._thread
        self._server = None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join(timeout=5)

    async def _connect(self) -> None:
        """Connect and declare, retrying until the startup timeout; after that the robust
        connection reconnects (and re-declares) by itself."""
        s = self.settings
        deadline = time.monotonic() + s.startup_timeout_seconds
        while True:
            connection: AbstractRobustConnection | None = None
            try:
                connection = await aio_pika.connect_robust(
                    s.amqp_url.get_secret_value(),
                    timeout=CONNECT_TIMEOUT_SECONDS,
                    reconnect_interval=self._reconnect_interval,
                    client_properties={
                        "connection_name": f"billing-worker stripe-relay {s.namespace}".strip()
                    },
                )
                channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
                await declare_stripe_topology(channel, self.topology)
                exchange = await channel.get_exchange(self.topology.stripe_exchange, ensure=False)
                break
            except ChannelPreconditionFailed as exc:
                await _close_quietly(connection)
                raise StartupError(
                    f"broker topology mismatch: {exc}. A queue or exchange of that name exists "
                    "with other arguments; delete it or set another BILLING_NAMESPACE"
                ) from exc
            except (OSError, RuntimeError, aio_pika.exceptions.AMQPError) as exc:
                await _close_quietly(connection)
                if time.monotonic() > deadline:
                    raise StartupError(
                        f"broker not reachable after {s.startup_timeout_seconds:g}s: {exc}"
                    ) from exc
                log.warning("broker_unreachable_retrying", error=str(exc))
                await asyncio.sleep(1)
        self._connection, self._channel, self._exchange = connection, channel, exchange
        log.info("stripe_relay_connected", exchange=self.topology.stripe_exchange)

    async def _publish(self, body: bytes, signature: str) -> None:
        """Publish one delivery and wait for the confirm; ``BrokerUnavailable`` otherwise."""
        exchange = self._exchange
        if exchange is None or not self.connected:  # requests in flight at shutdown still go
            raise BrokerUnavailable("not connected to the broker")
        message = aio_pika.Message(
            body,
            # When the delivery reached us: the worker measures the signature's age against
            # it, so a backlog in the queue never turns genuine deliveries into "replays".
            headers={
                "stripe-signature": signature,
                "x-relayed-at": int(self.settings.clock().timestamp()),
            },
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        )
        try:
            async with asyncio.timeout(self._confirm_timeout):
                confirm = await exchange.publish(message, routing_key="", mandatory=True)
        except TimeoutError as exc:
            raise BrokerUnavailable("no confirm from the broker in time") from exc
        except aio_pika.exceptions.PublishError as exc:
            raise BrokerUnavailable("unroutable: the broker returned the message") from exc
        except aio_pika.exceptions.DeliveryError as exc:
            raise BrokerUnavailable("the broker refused the message (nack)") from exc
        except (OSError, RuntimeError, aio_pika.exceptions.AMQPError) as exc:
            raise BrokerUnavailable(f"broker unavailable ({type(exc).__name__})") from exc
        if not isinstance(confirm, Basic.Ack):  # belt and braces
            raise BrokerUnavailable("the broker did not acknowledge the message")

    def forward(self, body: bytes, signature: str) -> str | None:
        """From a request thread: publish on the loop; None once confirmed, else why not."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return "relay not running"
        try:
            future = asyncio.run_coroutine_threadsafe(self._publish(body, signature), loop)
        except RuntimeError:
            return "relay not running"
        try:
            future.result(self._confirm_timeout + 1)
        except BrokerUnavailable as exc:
            return str(exc)
        except concurrent.futures.TimeoutError:
            future.cancel()
            return "no confirm from the broker in time"
        except Exception as exc:  # noqa: BLE001 - whatever it was, the delivery is not confirmed
            return f"publish failed ({type(exc).__name__})"
        return None

    # -- HTTP ----------------------------------------------------------------------------

    def app(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        """The WSGI app: the webhook, health probes and metrics."""
        routes: dict[str, tuple[str, WsgiApp]] = {
            WEBHOOK_PATH: ("POST", self._webhook),
            "/healthz": ("GET", self._healthz),
            "/readyz": ("GET", self._readyz),
            "/metrics": ("GET", self._metrics_app),
        }
        route = routes.get(environ.get("PATH_INFO", ""))
        if route is None:
            return _json(start_response, 404, {"error": "not found"})
        method, handler = route
        if environ.get("REQUEST_METHOD") != method:
            return _json(start_response, 405, {"error": f"use {method}"}, [("Allow", method)])
        return handler(environ, start_response)

    def _healthz(self, environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
        return _json(start_response, 200, {"status": "ok"})

    def _readyz(self, environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
        if self.ready:
            return _json(start_response, 200, {"status": "ready"})
        note = "shutting down" if self._stopping else "not connected to the broker"
        return _json(start_response, 503, {"status": "not ready", "broker": note})

    def _webhook(self, environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
        try:
            body, signature = self._read_delivery(environ)
        except _Refused as refused:
            outcome, status = refused.outcome.value, refused.status
            self.deliveries.labels(outcome=outcome).inc()
            log.info("stripe_delivery", outcome=outcome, status=status, bytes=refused.length)
            return _json(start_response, status, {"relayed": False, "error": refused.reason})
        reason = self.forward(body, signature)
        if reason is not None:
            outcome = Outcome.BROKER_UNAVAILABLE.value
            self.deliveries.labels(outcome=outcome).inc()
            log.warning(
                "stripe_delivery", outcome=outcome, status=503, bytes=len(body), reason=reason
            )
            return _json(start_response, 503, {"relayed": False, "error": reason})
        self.deliveries.labels(outcome=Outcome.RELAYED.value).inc()
        log.info("stripe_delivery", outcome=Outcome.RELAYED.value, status=200, bytes=len(body))
        return _json(start_response, 200, {"relayed": True})

    def _read_delivery(self, environ: dict[str, Any]) -> tuple[bytes, str]:
        """The raw body and the signature header, or ``_Refused`` saying what is wrong."""
        declared = environ.get("CONTENT_LENGTH") or ""
        if not declared:
            raise _Refused(411, Outcome.REFUSED_BAD_LENGTH, None, "Content-Length required")
        try:
            length = int(declared)
        except ValueError:
            length = -1
        if length < 0:
            raise _Refused(400, Outcome.REFUSED_BAD_LENGTH, None, "invalid Content-Length")
        if length > self.settings.stripe_relay_max_body_bytes:
            # Refused unread; the connection closes after the answer.
            raise _Refused(413, Outcome.REFUSED_TOO_LARGE, length, "body too large")
        try:
            body: bytes = environ["wsgi.input"].read(length)
        except OSError:  # the client went quiet (read timeout) or away
            body = b""
        if len(body) != length:
            raise _Refused(400, Outcome.REFUSED_BAD_LENGTH, length, "body shorter than declared")
        signature: str = environ.get("HTTP_STRIPE_SIGNATURE") or ""
        if not signature:
            raise _Refused(
                400, Outcome.REFUSED_NO_SIGNATURE, length, "Stripe-Signature header required"
            )
        return body, signature


class _Refused(Exception):
    """A delivery answered with a 4xx and not relayed."""

    def __init__(self, status: int, outcome: Outcome, length: int | None, reason: str) -> None:
        super().__init__(reason)
        self.status, self.outcome, self.length, self.reason = status, outcome, length, reason


async def _close_quietly(connection: AbstractRobustConnection | None) -> None:
    if connection is not None:
        with contextlib.suppress(Exception):
            await connection.close()


_STATUS = {
    200: "200 OK",
    400: "400 Bad Request",
    404: "404 Not Found",
    405: "405 Method Not Allowed",
    411: "411 Length Required",
    413: "413 Content Too Large",
    503: "503 Service Unavailable",
}


def _json(
    start_response: StartResponse,
    status: int,
    body: object,
    headers: list[tuple[str, str]] | None = None,
) -> list[bytes]:
    payload = json.dumps(body).encode()
    start_response(
        _STATUS[status],
        [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(payload))),
            *(headers or []),
        ],
    )
    return [payload]


async def serve(settings: Settings) -> int:
    """Relay until SIGTERM or SIGINT (exit 0), or exit 1 if the relay cannot start.

    A second signal while stopping exits at once; unanswered deliveries are retried by
    Stripe.
    """
    relay = StripeRelay(settings)
    stop = stop_on_signals("stripe_relay")
    try:
        await relay.start()
        if relay.connecting is None:  # pragma: no cover - set by start()
            raise RuntimeError("relay started without connecting")
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({stopping, relay.connecting}, return_when=asyncio.FIRST_COMPLETED)
        if relay.connecting.done() and not relay.connecting.cancelled():
            relay.connecting.result()  # raises StartupError if the broker never answered
        await stopping
    except StartupError as exc:
        log.error("stripe_relay_start_failed", error=str(exc))  # noqa: TRY400 - says it all
        return 1
    finally:
        await relay.stop()
    log.info("stripe_relay_exiting")
    return 0

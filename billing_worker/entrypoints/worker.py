"""The worker process: start in order, serve until told to stop, drain, close in reverse."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

import aio_pika
import structlog
from aio_pika.abc import AbstractRobustConnection
from aiormq.exceptions import ChannelPreconditionFailed
from sqlalchemy import text
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_exponential

from billing_worker import __version__
from billing_worker.adapters.amqp.declaring import ensure_topology
from billing_worker.adapters.amqp.frame_decoding import install_total_decoders
from billing_worker.adapters.amqp.subscription import QueueSubscription
from billing_worker.adapters.amqp.topology import (
    Topology,
    declare_quota_check_queue,
    declare_stripe_topology,
    declare_usage_topology,
)
from billing_worker.adapters.observability.http import HealthServer, Readiness, health_app
from billing_worker.adapters.observability.metrics import Metrics
from billing_worker.adapters.postgres.database import (
    SchemaNotReady,
    create_engine_for,
    prepare_database,
    redacted,
)
from billing_worker.adapters.postgres.pricebooks import (
    PriceBookVersionConflict,
    register_pricebook,
)
from billing_worker.bootstrap import Components, build_components, topology_for
from billing_worker.config import Settings
from billing_worker.domain.pricebook import PriceBook
from billing_worker.entrypoints.housekeeping import Housekeeping

log = structlog.get_logger(__name__)

PROBE_INTERVAL_SECONDS = 2.0
QUOTA_CHECK_PREFETCH = 64
QUOTA_CHECK_POOL_SIZE = 2
STRIPE_PREFETCH = 100
LAST_RELAY_SECONDS = 5.0


class StartupError(Exception):
    """A dependency could not be reached within the startup timeout."""


class Worker:
    """One worker process's resources, started and stopped in a fixed order."""

    def __init__(self, settings: Settings, book: PriceBook, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.book = book
        self.metrics = metrics or Metrics()
        self.readiness = Readiness()
        self.http: HealthServer | None = None
        self._engine: AsyncEngine | None = None
        self._quota_engine: AsyncEngine | None = None
        self._connection: AbstractRobustConnection | None = None
        self._components: Components | None = None
        self._probe: asyncio.Task[None] | None = None
        self._subscription: QueueSubscription | None = None
        self._stripe_subscription: QueueSubscription | None = None
        self._housekeeping: Housekeeping | None = None
        self._stopped = False

    @property
    def consumers_finished(self) -> list[asyncio.Future[None]]:
        """Each done when its consumer's loop ends (after ``stop``, or if it died)."""
        if self._components is None:
            return []
        return [f for c in self._components.consumers if (f := c.finished) is not None]

    @property
    def components(self) -> Components:
        """The running consumers (after ``start``)."""
        if self._components is None:
            raise RuntimeError("worker not started")
        return self._components

    async def start(self) -> None:
        """HTTP first (so probes answer), then database, broker, topology, consumers."""
        s = self.settings
        try:
            self.http = HealthServer(
                s.http_host, s.http_port, health_app(self.metrics.registry, self.readiness)
            )
        except OSError as exc:
            raise StartupError(
                f"cannot serve /metrics on {s.http_host}:{s.http_port} ({exc}); "
                "set BILLING_HTTP_PORT to a free port"
            ) from exc
        self.http.start()
        self._note_stripe()
        db_url = s.database_url.get_secret_value()
        try:
            await self._within_startup_timeout("database", prepare_database, db_url)
        except SchemaNotReady as exc:
            raise StartupError(str(exc)) from exc
        self._engine = create_engine_for(db_url, pool_size=s.db_pool_size)
        # Quota checks read on connections of their own: behind the batch transactions
        # they would wait for whole batches.
        self._quota_engine = create_engine_for(db_url, pool_size=QUOTA_CHECK_POOL_SIZE)
        try:
            await register_pricebook(self._engine, self.book)
        except PriceBookVersionConflict as exc:
            raise StartupError(f"{exc} (BILLING_PRICEBOOK)") from exc
        # Before any delivery is read: one odd header must not take the connection down.
        install_total_decoders()
        self._connection = await self._connect_broker()
        await self._declare_topology()
        consume_channel = await self._connection.channel(publisher_confirms=False)
        await consume_channel.set_qos(prefetch_count=s.effective_prefetch)
        publish_channel = await self._connection.channel(
            publisher_confirms=True, on_return_raises=True
        )
        usage_queue = await declare_usage_topology(consume_channel, topology_for(s))
        quota_channel = await self._connection.channel(publisher_confirms=False)
        await quota_channel.set_qos(prefetch_count=QUOTA_CHECK_PREFETCH)
        quota_queue = await declare_quota_check_queue(quota_channel, topology_for(s))
        self._subscription = QueueSubscription(consume_channel, usage_queue.name)
        self._stripe_subscription = None
        if s.stripe_webhook_secret is not None:
            stripe_channel = await self._connection.channel(publisher_confirms=False)
            await stripe_channel.set_qos(prefetch_count=STRIPE_PREFETCH)
            stripe_queue = await declare_stripe_topology(stripe_channel, topology_for(s))
            self._stripe_subscription = QueueSubscription(stripe_channel, stripe_queue.name)
        self._components = build_components(
            s,
            book=self.book,
            engine=self._engine,
            quota_engine=self._quota_engine,
            usage_queue=self._subscription,
            quota_queue=QueueSubscription(quota_channel, quota_queue.name),
            reply_exchange=quota_channel.default_exchange,
            publish_channel=publish_channel,
            metrics=self.metrics,
            stripe_queue=self._stripe_subscription,
        )
        await self._components.relay.start()
        for consumer in self._components.consumers:
            await consumer.start()
        await self._components.quota_check.start()
        self._housekeeping = Housekeeping(
            s, self.book, self._engine, on_outbox_written=self._wake, metrics=self.metrics
        )
        self._housekeeping.start()
        await self._check_dependencies()
        self._probe = asyncio.create_task(self._probe_forever(), name="dependency-probe")
        log.info(
            "worker_started",
            version=__version__,
            database=redacted(db_url),
            namespace=s.namespace or None,
            http_port=self.http.port,
            batch_size=s.batch_size,
            batch_max_wait_ms=s.batch_max_wait_ms,
            prefetch=s.effective_prefetch,
            pricebook=self.book.version,
        )

    async def stop(self) -> bool:
        """Stop consuming, settle in-flight deliveries, close everything; True if fully drained."""
        if self._stopped:
            return True
        self._stopped = True
        self.readiness.set("draining", False, "shutting down")
        self.metrics.ready.set(0)
        drained = True
        if self._components is not None:
            grace = self.settings.shutdown_grace_seconds
            for consumer in self._components.consumers:
                drained = await consumer.stop(grace) and drained
            await self._components.quota_check.stop(grace)
            await self._components.relay.stop()
            await self._publish_last_events(self._components)
        if self._housekeeping is not None:
            await self._housekeeping.stop()
        if self._probe is not None:
            self._probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe
        if self._connection is not None:
            await self._connection.close()
        for engine in (self._engine, self._quota_engine):
            if engine is not None:
                await engine.dispose()
        if self.http is not None:
            self.http.stop()
        log.info("worker_stopped", drained=drained)
        return drained

    def _note_stripe(self) -> None:
        s = self.settings
        if s.stripe_webhook_secret is None:
            note = (
                "off: BILLING_STRIPE_WEBHOOK_SECRET is not set, so relayed Stripe events are "
                "not consumed (they wait in their queue; nothing is accepted unverified)"
            )
            log.warning("stripe_consumer_off", reason=note)
        else:
            note = f"on: verifying with a {s.stripe_signature_tolerance_seconds}s tolerance"
        sync = (
            "on: closed invoices of Stripe-linked accounts are pushed to Stripe"
            if s.stripe_api_key is not None
            else "off: BILLING_STRIPE_API_KEY is not set, invoices stay in this database only"
        )
        if s.stripe_api_key is None:
            log.warning("stripe_invoice_sync_off", reason=sync)
        self.readiness.notes = {**self.readiness.notes, "stripe": note, "stripe_sync": sync}

    async def _within_startup_timeout(
        self, what: str, func: Callable[[str], object], arg: str
    ) -> None:
        """Run blocking ``func(arg)`` until the dependency answers or the startup timeout ends."""
        deadline = self.settings.startup_timeout_seconds
        try:
            async for attempt in AsyncRetrying(
                stop=stop_after_delay(deadline),
                wait=wait_exponential(multiplier=0.5, max=5),
                retry=retry_if_exception_type((OSError, OperationalError)),
                before_sleep=lambda state: log.warning(
                    "dependency_unreachable_retrying",
                    dependency=what,
                    error=str(state.outcome.exception() if state.outcome else None),
                ),
                reraise=True,
            ):
                with attempt:
                    await asyncio.to_thread(func, arg)
        except (OSError, OperationalError) as exc:
            raise StartupError(f"{what} not reachable after {deadline:g}s: {exc}") from exc

    async def _connect_broker(self) -> AbstractRobustConnection:
        s = self.settings
        deadline = time.monotonic() + s.startup_timeout_seconds
        while True:
            try:
                return await aio_pika.connect_robust(
                    s.amqp_url.get_secret_value(),
                    reconnect_interval=1,
                    client_properties={"connection_name": f"billing-worker {s.namespace}".strip()},
                )
            except (OSError, aio_pika.exceptions.AMQPError) as exc:
                if time.monotonic() > deadline:
                    raise StartupError(
                        f"broker not reachable after {s.startup_timeout_seconds:g}s: {exc}"
                    ) from exc
                log.warning("broker_unreachable_retrying", error=str(exc))
                await asyncio.sleep(1)

    async def _declare_topology(self) -> None:
        """Every queue and exchange, declared until it holds (see ``ensure_topology``)."""
        s = self.settings
        try:
            await ensure_topology(
                lambda: aio_pika.connect(s.amqp_url.get_secret_value(), timeout=10),
                topology_for(s),
                stripe=s.stripe_webhook_secret is not None,
                patience=s.startup_timeout_seconds,
            )
        except ChannelPreconditionFailed as exc:
            raise StartupError(
                f"broker topology mismatch: {exc}. A queue or exchange of that name exists "
                "with other arguments (a classic queue, say); delete it or set another "
                "BILLING_NAMESPACE"
            ) from exc
        except (OSError, aio_pika.exceptions.AMQPError) as exc:
            raise StartupError(
                f"could not declare the broker topology in {s.startup_timeout_seconds:g}s: {exc!r}"
            ) from exc

    async def _check_dependencies(self) -> None:
        connection, engine = self._connection, self._engine
        broker_ok = connection is not None and connection.connected.is_set()
        self.readiness.set("broker", broker_ok, "" if broker_ok else "not connected")
        self.metrics.up.labels(dependency="broker").set(1 if broker_ok else 0)
        db_ok, note = False, "no engine"
        if engine is not None:
            try:
                async with asyncio.timeout(PROBE_INTERVAL_SECONDS):
                    async with engine.connect() as conn:
                        await conn.execute(text("SELECT 1"))
                db_ok, note = True, ""
            except Exception as exc:  # noqa: BLE001 - any failure means "not ready", and says why
                note = f"unreachable: {type(exc).__name__}"
        self.readiness.set("database", db_ok, note)
        self.metrics.up.labels(dependency="database").set(1 if db_ok else 0)
        running = self._components is not None and self._components.usage_consumer.running
        subscribed = self._subscription is not None and self._subscription.subscribed
        note = "" if running and subscribed else ("not subscribed" if running else "not running")
        self.readiness.set("usage_consumer", running and subscribed, note)
        stripe = self._components.stripe_consumer if self._components is not None else None
        if stripe is not None and self._stripe_subscription is not None:
            ok = stripe.running and self._stripe_subscription.subscribed
            self.readiness.set("stripe_consumer", ok, "" if ok else "not subscribed")
        self.metrics.ready.set(1 if self.readiness.ready else 0)
        if broker_ok:
            await self._count_dead_letters()

    async def _count_dead_letters(self) -> None:
        """Ready messages of each DLQ, for ``billing_dead_letter_messages``: passive
        declares on a short-lived plain channel of the underlying connection. Not a robust
        channel: one whose declare fails would be reopened and restored by aio-pika, which
        disturbed the consumer's own recovery when its queue was deleted."""
        transport = self._connection.transport if self._connection is not None else None
        if transport is None:
            return
        topology = topology_for(self.settings)
        queues = [topology.usage_queue]
        if self._stripe_subscription is not None:
            queues.append(topology.stripe_queue)
        channel = None
        try:
            async with asyncio.timeout(PROBE_INTERVAL_SECONDS):
                channel = await transport.connection.channel()
                for queue in queues:
                    dlq = Topology.dead_letter_queue(queue)
                    declared = await channel.queue_declare(dlq, passive=True)
                    self.metrics.dead_letters.labels(queue=dlq).set(declared.message_count or 0)
        except (TimeoutError, OSError, RuntimeError, aio_pika.exceptions.AMQPError) as exc:
            # RuntimeError: aiormq's ChannelInvalidStateError. Counted again next probe.
            log.debug("dead_letter_count_failed", error=repr(exc))
        finally:
            if channel is not None and not channel.is_closed:
                with contextlib.suppress(Exception):
                    await channel.close()

    async def _publish_last_events(self, components: Components) -> None:
        """Publish what the drained batches wrote to the outbox, if the broker lets us."""
        try:
            async with asyncio.timeout(LAST_RELAY_SECONDS):
                while await components.relay.relay_once():
                    pass
        except Exception as exc:  # noqa: BLE001 - whatever is left goes out after restart
            log.warning("outbox_left_for_next_start", error=repr(exc))

    def _wake(self) -> None:
        if self._components is not None:
            self._components.relay.wake()

    def _engine_or_fail(self) -> AsyncEngine:
        if self._engine is None:
            raise RuntimeError("worker not started")
        return self._engine

    async def _probe_forever(self) -> None:
        while True:
            await asyncio.sleep(PROBE_INTERVAL_SECONDS)
            await self._check_dependencies()

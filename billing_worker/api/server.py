"""``billing-worker api``: the HTTP API as a process. Waits for a current schema (the
worker or ``migrate`` brings it), serves with uvicorn until SIGTERM/SIGINT, then finishes
the requests in flight and closes."""

from __future__ import annotations

import asyncio
import contextlib

import structlog
import uvicorn
from sqlalchemy.exc import OperationalError
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_exponential

from billing_worker import __version__
from billing_worker.adapters.amqp.declaring import ensure_topology
from billing_worker.adapters.amqp.topology import Topology
from billing_worker.adapters.postgres.api_keys import PostgresApiKeys
from billing_worker.adapters.postgres.database import (
    SchemaNotReady,
    check_schema,
    create_engine_for,
    redacted,
)
from billing_worker.api.app import create_app
from billing_worker.api.auth import KeyCheck
from billing_worker.api.context import ApiContext
from billing_worker.client.publisher import UsagePublisher
from billing_worker.config import Settings
from billing_worker.domain.pricebook import PriceBook
from billing_worker.entrypoints.signals import stop_on_signals

log = structlog.get_logger(__name__)

API_POOL_SIZE = 8


async def open_context(settings: Settings, book: PriceBook) -> ApiContext:
    """The API's resources: the database (its schema current), the key check, and the
    publisher for ingest (the API starts without a broker; ingest answers 503 then)."""
    url = settings.database_url.get_secret_value()
    async for attempt in AsyncRetrying(
        stop=stop_after_delay(settings.startup_timeout_seconds),
        wait=wait_exponential(multiplier=0.5, max=5),
        retry=retry_if_exception_type((SchemaNotReady, OperationalError, OSError)),
        reraise=True,
    ):
        with attempt:
            await asyncio.to_thread(check_schema, url)
    engine = create_engine_for(url, pool_size=API_POOL_SIZE)
    ctx = ApiContext(settings, book, engine, KeyCheck(PostgresApiKeys(engine)))
    try:
        amqp = settings.amqp_url.get_secret_value()
        await ensure_topology(
            lambda: __import__("aio_pika").connect(amqp, timeout=10),
            Topology(settings.namespace),
            stripe=False,
            patience=min(settings.startup_timeout_seconds, 10),
        )
        ctx.publisher = await UsagePublisher.connect(
            amqp, source="billing-worker-api", namespace=settings.namespace
        )
    except Exception as exc:  # noqa: BLE001 - reads go on without the broker; ingest says 503
        ctx.notes["broker"] = f"not connected at start ({type(exc).__name__}); ingest answers 503"
        log.warning("api_broker_unavailable", error=repr(exc))
    return ctx


async def close_context(ctx: ApiContext) -> None:
    """Close what ``open_context`` opened."""
    if ctx.publisher is not None:
        with contextlib.suppress(Exception):
            await ctx.publisher.close()
    await ctx.engine.dispose()


async def serve(settings: Settings, book: PriceBook) -> int:
    """Run the API until SIGTERM/SIGINT; 0 after a clean stop."""
    stop = stop_on_signals("api")
    try:
        ctx = await open_context(settings, book)
    except (SchemaNotReady, OperationalError, OSError) as exc:
        log.error("api_start_failed", error=str(exc))  # noqa: TRY400 - the message says it all
        return 1
    config = uvicorn.Config(
        create_app(ctx),
        host=settings.api_host,
        port=settings.api_port,
        log_config=None,
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=int(settings.shutdown_grace_seconds),
    )
    server = uvicorn.Server(config)
    # our own handlers drain; uvicorn's would re-raise the signal after its shutdown
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
    serving = asyncio.create_task(server.serve())
    try:
        while not server.started and not serving.done():  # noqa: ASYNC110 - uvicorn sets a flag
            await asyncio.sleep(0.05)
        if serving.done():
            await serving
            log.error("api_start_failed", error=f"cannot serve on port {settings.api_port}")
            return 1
        log.info(
            "api_started",
            version=__version__,
            port=_bound_port(server) or settings.api_port,
            database=redacted(settings.database_url.get_secret_value()),
            namespace=settings.namespace or None,
        )
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
        ctx.notes["draining"] = "shutting down"
        server.should_exit = True
        await serving
    finally:
        await close_context(ctx)
    log.info("api_stopped")
    return 0


def _bound_port(server: uvicorn.Server) -> int | None:
    for listener in server.servers:
        for sock in listener.sockets:
            return int(sock.getsockname()[1])
    return None

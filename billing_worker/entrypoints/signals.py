"""SIGTERM/SIGINT for long-running commands: the first asks to stop, a second exits now."""

from __future__ import annotations

import asyncio
import os
import signal

import structlog

log = structlog.get_logger(__name__)


def stop_on_signals(process: str) -> asyncio.Event:
    """An event set by the first SIGTERM or SIGINT; a second one exits the process at once
    (status 1), logging ``<process>_forced_exit``. Work not acknowledged is redone by
    whoever sent it (the broker redelivers, Stripe retries)."""
    stop = asyncio.Event()

    def on_signal() -> None:
        if stop.is_set():
            log.warning(f"{process}_forced_exit")
            os._exit(1)
        stop.set()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    return stop

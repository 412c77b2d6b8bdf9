"""The process lifecycle: a consumer loop that dies ends the process instead of hanging."""

from __future__ import annotations

import asyncio

from billing_worker.entrypoints.worker_process import _until_stopped


class StubWorker:
    """Just the surface `_until_stopped` uses."""

    def __init__(self) -> None:
        self.loop_task: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.stopped = False

    @property
    def consumers_finished(self) -> list[asyncio.Future[None]]:
        return [self.loop_task]

    async def stop(self) -> bool:
        self.stopped = True
        return True


async def test_dead_consumer_loop_exits_non_zero() -> None:
    """If the settling loop dies, the process exits 1 so its supervisor restarts it."""
    worker = StubWorker()
    worker.loop_task.set_exception(RuntimeError("boom"))
    assert await _until_stopped(worker, asyncio.Event()) == 1  # type: ignore[arg-type]


async def test_signal_drains_and_exits_zero() -> None:
    """A stop signal drains the worker and exits 0."""
    worker = StubWorker()
    stop = asyncio.Event()
    stop.set()
    assert await _until_stopped(worker, stop) == 0  # type: ignore[arg-type]
    assert worker.stopped

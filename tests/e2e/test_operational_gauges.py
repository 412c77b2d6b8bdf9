"""The gauges the alert rules need: readiness and dead-letter queue depth."""

from __future__ import annotations

from billing_worker.entrypoints.worker import Worker
from tests.e2e.conftest import Bus, StartWorker, wait_until


def gauge(worker: Worker, name: str, **labels: str) -> float | None:
    """The current value of a gauge sample of ``worker`` (None when absent)."""
    return worker.metrics.registry.get_sample_value(name, labels)


async def test_ready_gauge_follows_readyz(start_worker: StartWorker) -> None:
    """billing_ready is 1 while the worker is ready and 0 once it drains for shutdown."""
    worker = await start_worker()
    assert worker.readiness.ready
    assert gauge(worker, "billing_ready") == 1
    await worker.stop()
    assert gauge(worker, "billing_ready") == 0


async def test_dead_letter_gauge_counts_the_dlq(start_worker: StartWorker, bus: Bus) -> None:
    """billing_dead_letter_messages reports the DLQ's depth: 0, then 2 after two rejects,
    then 0 again once an operator has drained the queue."""
    worker = await start_worker()
    dlq = bus.name("billing-worker.usage.dlq")
    assert gauge(worker, "billing_dead_letter_messages", queue=dlq) == 0
    await bus.publish(b"not json")
    await bus.publish(b'{"specversion": "1.0"}')
    await wait_until(
        lambda: gauge(worker, "billing_dead_letter_messages", queue=dlq) == 2,
        what="the gauge to show two dead letters",
    )
    assert len(await bus.take_all("billing-worker.usage.dlq")) == 2
    await wait_until(
        lambda: gauge(worker, "billing_dead_letter_messages", queue=dlq) == 0,
        what="the gauge to show the drained queue",
    )

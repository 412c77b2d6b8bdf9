"""A scrape racing the settling of batches never shows outcomes without their receipts."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from billing_worker.adapters.observability.metrics import Metrics
from billing_worker.consumers.settlement import Settled, count_outcomes

OUTCOMES = (
    "billing_events_recorded_total",
    "billing_events_duplicate_total",
    "billing_events_rejected_total",
)


@pytest.fixture
def eager_thread_switches() -> Iterator[None]:
    """Switch threads as often as the interpreter can, so races show within a second."""
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(previous)


def scrape(metrics: Metrics) -> tuple[float, float]:
    """(received, recorded + duplicate + rejected) as one ``/metrics`` exposition shows them."""
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(generate_latest(metrics.registry).decode()):
        for sample in family.samples:
            totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
    return totals.get("billing_events_received_total", 0.0), sum(
        totals.get(name, 0.0) for name in OUTCOMES
    )


@pytest.mark.usefixtures("eager_thread_switches")
def test_scrape_during_settlement_never_shows_more_outcomes_than_receipts() -> None:
    """``received >= recorded + duplicate + rejected`` in every scrape, whatever the
    interleaving of the HTTP thread and the settling loop (the chaos runs check it on
    every scrape of every worker)."""
    metrics = Metrics()
    queue = metrics.for_queue("q")
    stop = threading.Event()

    def settle_batches() -> None:
        while not stop.is_set():
            count_outcomes(queue, {Settled.RECORDED: 3, Settled.DUPLICATE: 2}, [], set())

    settler = threading.Thread(target=settle_batches)
    settler.start()
    ahead = []
    try:
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            received, outcomes = scrape(metrics)
            if received < outcomes:
                ahead.append((received, outcomes))
    finally:
        stop.set()
        settler.join()
    assert not ahead, f"{len(ahead)} scrapes showed outcomes ahead of receipts, e.g. {ahead[0]}"

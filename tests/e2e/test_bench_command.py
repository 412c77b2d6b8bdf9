"""`billing-worker bench` runs end to end on small workloads and reports sane figures."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from tests.clock import child_env
from tests.conftest import AMQP_URL, database_url_for

pytestmark = pytest.mark.slow


def bench(*args: str) -> dict[str, Any]:
    env = child_env()
    env["BILLING_AMQP_URL"] = AMQP_URL
    env["BILLING_DATABASE_URL"] = database_url_for("billing_bench_test")
    result = subprocess.run(
        [sys.executable, "-m", "billing_worker", "bench", "--json", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def test_throughput_mode_reports_both_ceilings_and_the_worker() -> None:
    """Throughput mode measures two ceilings and the worker, and the ledger matches."""
    report = bench("--events", "400", "--duplicates", "0.1", "--runs", "1")
    (run,) = report["runs"]
    assert run["ceiling_events_per_second"] > 0
    assert run["raw_ceiling_events_per_second"] > 0
    assert run["worker_events_per_second"] > 0
    assert run["ledger_rows"] == report["distinct"] == 360
    assert 0 < run["worker_peak_rss_mb"] < 1000
    assert run["batches"] >= 1
    assert report["median"]["ratio"] == pytest.approx(
        run["worker_events_per_second"] / run["ceiling_events_per_second"]
    )


def test_latency_mode_reports_percentiles() -> None:
    """Latency mode publishes at a steady rate and reports ordered percentiles."""
    report = bench("--mode", "latency", "--rate", "200", "--duration", "2", "--runs", "1")
    (run,) = report["runs"]
    assert run["events"] >= 350
    assert 0 < run["p50_ms"] <= run["p95_ms"] <= run["p99_ms"] <= run["max_ms"]


def test_ledger_growth_mode_compares_empty_and_preloaded() -> None:
    """Ledger-growth mode measures before and after preloading rows."""
    report = bench(
        "--mode", "ledger-growth", "--events", "300", "--runs", "1", "--preload-rows", "5000"
    )
    assert report["preload_rows"] == 5000
    assert report["median"]["empty"] > 0
    assert report["median"]["preloaded"] > 0


def test_api_mode_reads_and_ingests_through_the_api_process() -> None:
    """API mode reads usage at a rate and ingests through a real API process: every read
    answered, every event accepted, percentiles in order."""
    report = bench(
        "--mode", "api", "--duration", "1", "--check-rate", "20", "--events", "60", "--runs", "1"
    )
    (run,) = report["runs"]
    assert run["reads"] >= 15
    assert run["read_errors"] == 0
    assert 0 < run["read_p50_ms"] <= run["read_p99_ms"] <= run["read_max_ms"]
    assert run["ingest_events_per_second"] > 0

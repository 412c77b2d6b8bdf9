"""The real worker as a child process, and what can be read off it from outside."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from prometheus_client.parser import text_string_to_metric_families

from billing_worker.adapters.clock import OFFSET_VARIABLE
from billing_worker.bench.scratch import Scratch


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True, slots=True)
class BatchStats:
    """Batch sizes as the worker's histogram saw them."""

    batches: int
    mean: float
    median_bound: float
    p95_bound: float


def spawn_worker(variables: dict[str, str], log: BinaryIO) -> subprocess.Popen[bytes]:
    """``billing-worker run`` in a child process with exactly these BILLING_* variables,
    on this process's clock (its BILLING_CLOCK_OFFSET_SECONDS, unless ``variables`` say)."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("BILLING_") or k == OFFSET_VARIABLE
    }
    env.update(variables)
    return subprocess.Popen(
        [sys.executable, "-m", "billing_worker", "run"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


class WorkerProcess:
    """``billing-worker run`` on a scratch place, with settings passed as BILLING_* variables."""

    def __init__(self, place: Scratch, settings: dict[str, str], log_path: Path) -> None:
        self.port = _free_port()
        self._log = log_path.open("ab")
        self.process = spawn_worker(
            {
                "BILLING_AMQP_URL": place.amqp_url,
                "BILLING_DATABASE_URL": place.database_url,
                "BILLING_NAMESPACE": place.topology.namespace,
                "BILLING_HTTP_HOST": "127.0.0.1",
                "BILLING_HTTP_PORT": str(self.port),
                "BILLING_LOG_LEVEL": "warning",
                **settings,
            },
            self._log,
        )

    def _get(self, path: str) -> tuple[int, str]:
        url = f"http://127.0.0.1:{self.port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return int(response.status), response.read().decode()
        except OSError:
            return 0, ""

    def wait_ready(self, timeout: float = 60) -> None:
        """Block until ``/readyz`` says ready; raise if the process dies or times out."""
        deadline = time.monotonic() + timeout
        while self._get("/readyz")[0] != 200:
            if self.process.poll() is not None:
                raise RuntimeError(f"worker exited with {self.process.returncode}")
            if time.monotonic() > deadline:
                raise TimeoutError("worker not ready")
            time.sleep(0.02)

    def peak_rss_mb(self) -> float:
        """The process's peak resident set (VmHWM), in MiB."""
        status = Path(f"/proc/{self.process.pid}/status").read_text(encoding="ascii")
        kib = next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))
        return int(kib) / 1024

    def batch_stats(self) -> BatchStats:
        """Batch-size statistics from the worker's own histogram."""
        _, text = self._get("/metrics")
        buckets: list[tuple[float, float]] = []
        total = count = 0.0
        for family in text_string_to_metric_families(text):
            if family.name != "billing_batch_size":
                continue
            for sample in family.samples:
                if sample.name.endswith("_bucket"):
                    buckets.append((float(sample.labels["le"]), sample.value))
                elif sample.name.endswith("_sum"):
                    total = sample.value
                elif sample.name.endswith("_count"):
                    count = sample.value

        def bound(q: float) -> float:
            for upper, cumulative in sorted(buckets):
                if count and cumulative >= q * count:
                    return upper
            return float("nan")

        return BatchStats(
            batches=int(count),
            mean=total / count if count else 0.0,
            median_bound=bound(0.5),
            p95_bound=bound(0.95),
        )

    def stop(self) -> int:
        """SIGTERM and wait; kill if it will not go."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return int(self.process.returncode)

"""A worker child process as a chaos run sees it: probes, counters, signals, its log."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO, Any

from prometheus_client.parser import text_string_to_metric_families

from billing_worker.bench.worker_process import spawn_worker
from billing_worker.chaos.counting import Incarnation, QueueCounts
from billing_worker.chaos.servers import free_port

COUNTERS = {
    "billing_events_received_total": "received",
    "billing_events_recorded_total": "recorded",
    "billing_events_duplicate_total": "duplicate",
    "billing_events_rejected_total": "rejected",
}
WORKER_DEFAULTS = {
    "BILLING_LOG_LEVEL": "info",
    "BILLING_REQUEUE_PAUSE_SECONDS": "0.5",
    "BILLING_SHUTDOWN_GRACE_SECONDS": "30",
    "BILLING_STARTUP_TIMEOUT_SECONDS": "60",
}


class ScenarioFailed(Exception):
    """A scenario could not go on (a wait ran out of patience, a worker died)."""


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - loopback URL
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode()
    except OSError:
        return 0, ""


class ChaosWorker:
    """``billing-worker run`` with its own HTTP port and log file."""

    def __init__(
        self,
        name: str,
        *,
        amqp_url: str,
        database_url: str,
        namespace: str,
        usage_queue: str,
        log_path: Path,
        settings: dict[str, str],
        patience: float,
    ) -> None:
        self.name = name
        self.patience = patience
        self.incarnation = Incarnation(name)
        self.port = free_port()
        self.log_path = log_path
        self._queue = usage_queue
        self._log: IO[bytes] = log_path.open("ab")
        self.process = spawn_worker(
            {
                **WORKER_DEFAULTS,
                "BILLING_AMQP_URL": amqp_url,
                "BILLING_DATABASE_URL": database_url,
                "BILLING_NAMESPACE": namespace,
                "BILLING_HTTP_HOST": "127.0.0.1",
                "BILLING_HTTP_PORT": str(self.port),
                **settings,
            },
            self._log,
        )

    @property
    def alive(self) -> bool:
        """Whether the process is still running."""
        return self.process.poll() is None

    async def readyz(self) -> int:
        """``/readyz``'s status (0 when nothing answers)."""
        status, _ = await asyncio.to_thread(_get, f"http://127.0.0.1:{self.port}/readyz")
        return status

    async def wait_ready(self) -> float:
        """Until ``/readyz`` says 200; the seconds it took. Fails if the process exits."""
        return await self.wait_readyz(200)

    async def wait_readyz(self, status: int) -> float:
        """Until ``/readyz`` answers ``status``; the seconds it took."""
        started = time.monotonic()
        try:
            async with asyncio.timeout(self.patience):
                while await self.readyz() != status:
                    if not self.alive:
                        raise ScenarioFailed(
                            f"worker {self.name} exited with {self.process.returncode}"
                        )
                    await asyncio.sleep(0.05)
        except TimeoutError as exc:
            raise ScenarioFailed(f"worker {self.name}: /readyz never answered {status}") from exc
        return time.monotonic() - started

    async def scrape(self) -> QueueCounts | None:
        """The usage queue's counters now (recorded in the incarnation); None if unreachable."""
        status, text = await asyncio.to_thread(_get, f"http://127.0.0.1:{self.port}/metrics")
        if status != 200:
            return None
        values = dict.fromkeys(COUNTERS.values(), 0.0)
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                field = COUNTERS.get(sample.name)
                if field is not None and sample.labels.get("queue") == self._queue:
                    values[field] += sample.value
        counts = QueueCounts(**{k: int(v) for k, v in values.items()})
        self.incarnation.scrapes.append(counts)
        return counts

    async def settle(self) -> None:
        """Scrape until two scrapes half a second apart agree: the process is at rest."""
        with contextlib.suppress(TimeoutError):  # never at rest: the identity check says so
            async with asyncio.timeout(self.patience):
                previous = await self.scrape()
                while True:
                    await asyncio.sleep(0.5)
                    current = await self.scrape()
                    if current is not None and current == previous:
                        self.incarnation.at_rest = True
                        return
                    previous = current

    def kill(self) -> None:
        """SIGKILL, no warning, and reap it."""
        if self.alive:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()
        self.incarnation.ended = "killed"

    def terminate(self) -> None:
        """SIGTERM: the worker drains and exits by itself."""
        self.process.send_signal(signal.SIGTERM)
        self.incarnation.ended = "terminated"

    async def wait_exit(self) -> int:
        """Until the process exits; its exit code."""
        try:
            async with asyncio.timeout(self.patience):
                while self.alive:  # noqa: ASYNC110 - another process's state, polled
                    await asyncio.sleep(0.05)
        except TimeoutError as exc:
            raise ScenarioFailed(f"worker {self.name} did not exit") from exc
        return int(self.process.returncode)

    def log_records(self) -> list[dict[str, Any]]:
        """The JSON log lines written so far (other lines, e.g. a traceback, as ``raw``)."""
        records = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                record = {"raw": line}
            records.append(record if isinstance(record, dict) else {"raw": line})
        return records

    def close(self) -> None:
        """Kill if still running; close the log."""
        if self.alive:
            self.process.kill()
            self.process.wait()
        self._log.close()

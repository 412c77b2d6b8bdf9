"""`billing-worker bench` shows progress on a terminal and stays silent off one."""

from __future__ import annotations

import fcntl
import io
import json
import os
import pty
import struct
import subprocess
import sys
import termios
import threading

import pytest

from billing_worker.bench.scratch import publish, scratch
from billing_worker.bench.workload import build_workload
from tests.clock import child_env
from tests.conftest import AMQP_URL, database_url_for

pytestmark = pytest.mark.slow

BENCH_ARGS = ("--events", "2000", "--runs", "1")


def read_all(fd: int, into: bytearray) -> None:
    """Read a pty's master side until the child closes it."""
    while True:
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # EIO: no writer left
            return
        if not chunk:
            return
        into.extend(chunk)


def test_bench_draws_bars_on_a_terminal_and_keeps_stdout_clean() -> None:
    """With stderr on a terminal, bench shows publishing and the worker draining the queue;
    stdout still carries only the report."""
    env = child_env()
    env.update(
        BILLING_AMQP_URL=AMQP_URL,
        BILLING_DATABASE_URL=database_url_for("billing_bench_test"),
    )
    master, terminal = pty.openpty()
    # A terminal of 24 rows by 120 columns (a fresh pty has none, and bars need room).
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
    seen = bytearray()
    reader = threading.Thread(target=read_all, args=(master, seen), daemon=True)
    reader.start()
    try:
        result = subprocess.run(
            [sys.executable, "-m", "billing_worker", "bench", "--json", *BENCH_ARGS],
            env=env,
            stdout=subprocess.PIPE,
            stderr=terminal,
            text=True,
            timeout=300,
            check=False,
        )
    finally:
        os.close(terminal)
        reader.join(timeout=10)
        os.close(master)
    shown = seen.decode(errors="replace")
    assert result.returncode == 0, shown[-3000:]
    assert "publishing" in shown
    assert "worker draining the queue" in shown
    assert json.loads(result.stdout)["runs"]


async def test_publishing_is_silent_off_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """Off a terminal (CI, a pipe) publishing draws no progress bar on stderr: whatever
    reaches it is whole JSON log lines (logging may be configured by an earlier test)."""
    captured = io.StringIO()
    monkeypatch.setattr(sys, "stderr", captured)
    workload = build_workload(300, 10, 0.0)
    async with scratch(AMQP_URL, database_url_for("postgres"), "quiet") as place:
        await publish(place.amqp_url, place.topology.usage_exchange, workload.bodies)
    written = captured.getvalue()
    assert "\r" not in written
    assert "publishing" not in written
    for line in written.splitlines():
        assert isinstance(json.loads(line), dict), line

"""The README's Python and Node.js examples, run exactly as written against the real broker
and a worker on this test's namespace."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path

import aio_pika
import psycopg
import pytest

from billing_worker.client import UsagePublisher
from tests.conftest import AMQP_URL
from tests.e2e.conftest import Bus, StartWorker, sample, wait_until
from tests.readme_examples import npm_install_spec, readme_example

STEP_TIMEOUT = 60.0
"""Generous bound for each step of a subprocess, so a hang fails instead of stalling CI."""


def required_tool(name: str) -> str:
    """The path of ``name``, or a failure saying it is needed (never a silent skip)."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not on PATH: the README's Node.js examples need Node.js and npm")
    return path


@pytest.fixture(scope="session")
def node_modules(request: pytest.FixtureRequest) -> Path:
    """amqplib as the README installs it, installed once into the pytest cache."""
    spec = npm_install_spec()
    cache = getattr(request.config, "cache", None)
    base = (
        cache.mkdir("readme-node")
        if cache is not None
        else Path(tempfile.gettempdir()) / "billing-worker-readme-node"
    )
    target = base / spec.replace("@", "-")
    modules = target / "node_modules"
    if not (modules / "amqplib" / "package.json").exists():
        target.mkdir(parents=True, exist_ok=True)
        npm = required_tool("npm")
        result = subprocess.run(
            [npm, "install", "--no-audit", "--no-fund", "--prefix", str(target), spec],
            capture_output=True,
            text=True,
            check=False,
            timeout=300,
        )
        if result.returncode != 0:
            pytest.fail(
                f"`npm install {spec}` failed (the test needs the npm registry):\n"
                f"{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
            )
    return modules


def example_env(namespace: str, **extra: str) -> dict[str, str]:
    """The environment an example runs in: this test's broker and namespace."""
    return {**os.environ, "BILLING_AMQP_URL": AMQP_URL, "BILLING_NAMESPACE": namespace, **extra}


@pytest.fixture
async def subscriber_queue(bus: Bus) -> AsyncIterator[str]:
    """The queue the subscriber examples declare on this namespace; deleted afterwards."""
    name = bus.name("chat-service.billing-events")
    yield name
    channel = await bus.connection.channel()
    with contextlib.suppress(aio_pika.exceptions.AMQPError):
        await channel.queue_delete(name)


async def test_python_publish_example_is_recorded(
    start_worker: StartWorker, namespace: str, sql: psycopg.Connection, tmp_path: Path
) -> None:
    """The Python example publishes a usage event the worker records under its key."""
    worker = await start_worker()
    script = tmp_path / "publish_usage.py"
    script.write_text(readme_example("python-publish-usage", "python"), encoding="utf-8")
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(script),
        env=example_env(namespace),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), STEP_TIMEOUT)
    assert process.returncode == 0, err.decode()
    assert out.decode().split() == ["published", "cmpl-8f2c41"]
    await wait_until(lambda: sample(worker, "billing_events_recorded_total") == 1)
    row = sql.execute(
        "SELECT account_id, quantity, event_source, dimensions FROM usage_ledger "
        "WHERE event_id = 'cmpl-8f2c41'"
    ).fetchone()
    assert row == ("acct_42", Decimal(1234), "chat-service", {"model": "gpt-4"})


@pytest.mark.slow
async def test_node_examples_publish_usage_and_receive_billing_events(
    start_worker: StartWorker,
    sql: psycopg.Connection,
    node_modules: Path,
    subscriber_queue: str,
    tmp_path: Path,
) -> None:
    """Node.js, as in the README: the publisher's event is recorded under its key, and the
    subscriber receives the quota.warning it causes (acct_42 goes past 80% of FREE's 100,000
    tokens), then stops cleanly on SIGTERM."""
    worker = await start_worker()
    namespace = worker.settings.namespace
    async with await UsagePublisher.connect(AMQP_URL, source="setup", namespace=namespace) as usage:
        await usage.publish("chat.tokens", "acct_42", 79_000, event_id="preload")
    await wait_until(lambda: sample(worker, "billing_events_recorded_total") == 1)

    node = required_tool("node")
    env = example_env(namespace, NODE_PATH=str(node_modules))
    publish_js, subscribe_js = tmp_path / "publish-usage.js", tmp_path / "billing-events.js"
    publish_js.write_text(readme_example("node-publish-usage", "js"), encoding="utf-8")
    subscribe_js.write_text(readme_example("node-subscribe", "js"), encoding="utf-8")

    subscriber = await asyncio.create_subprocess_exec(
        node, str(subscribe_js), env=env, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert subscriber.stdout is not None
        ready = await asyncio.wait_for(subscriber.stdout.readline(), STEP_TIMEOUT)
        assert ready.decode().strip() == f"waiting for billing events on {subscriber_queue}"

        publisher = await asyncio.create_subprocess_exec(
            node,
            str(publish_js),
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(publisher.communicate(), STEP_TIMEOUT)
        assert publisher.returncode == 0, err.decode()
        (published_id,) = out.decode().split()[1:]

        await wait_until(lambda: sample(worker, "billing_events_recorded_total") == 2)
        row = sql.execute(
            "SELECT account_id, quantity, event_source, event_type, dimensions FROM usage_ledger "
            "WHERE event_id = %s",
            (published_id,),
        ).fetchone()
        assert row == ("acct_42", Decimal(1234), "chat-service", "chat.tokens", {"model": "gpt-4"})

        line = await asyncio.wait_for(subscriber.stdout.readline(), STEP_TIMEOUT)
        event = json.loads(line)
        assert (event["type"], event["account"], event["data"]["threshold"]) == (
            "quota.warning",
            "acct_42",
            80,
        )
        assert event["data"]["used"] == "80234"
    finally:
        if subscriber.returncode is None:
            subscriber.terminate()
        exit_code = await asyncio.wait_for(subscriber.wait(), STEP_TIMEOUT)
    assert exit_code == 0

"""The ``billing-worker`` command line as an operator runs it, against a test's broker
namespace and database, next to a worker running in the test's event loop."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from billing_worker.entrypoints import cli
from tests.conftest import AMQP_URL

Cli = Callable[..., Awaitable[tuple[int, str, str]]]


def operator_cli(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    database_url: str,
    namespace: str,
) -> Cli:
    """``billing-worker ARGS`` (in a thread: it runs its own event loop) on this test's
    namespace and database with the built-in price book; returns (exit status, out, err)."""
    monkeypatch.setenv("BILLING_AMQP_URL", AMQP_URL)
    monkeypatch.setenv("BILLING_DATABASE_URL", database_url)
    monkeypatch.setenv("BILLING_NAMESPACE", namespace)
    monkeypatch.delenv("BILLING_PRICEBOOK", raising=False)

    async def run(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        status = await asyncio.to_thread(cli.main, list(argv))
        captured = capsys.readouterr()
        return status, captured.out, captured.err

    return run


async def cli_json(run_cli: Cli, *argv: str, status: int = 0) -> Any:
    """The command's ``--json`` report, after checking its exit status."""
    code, out, err = await run_cli(*argv, "--json")
    assert code == status, err
    return json.loads(out)

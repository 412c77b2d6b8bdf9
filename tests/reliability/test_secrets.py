"""Secrets never reach logs, metrics, health answers, dead letters or error output.

The worker and the Stripe relay run as real processes with a database password, a broker
password, a Stripe API key and a webhook signing secret in their environment, and are made
to fail every way that logs: a forged webhook, a Stripe API that echoes the key back in its
error, a database that is not there, a role that does not exist, a wrong broker password,
configuration that does not validate. Every byte they print, and every metric, health
answer, dead letter and stored sync error, is then searched for each secret.
"""

# ruff: noqa: F811 - the e2e fixtures are imported, then named as test parameters

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import sys
import threading
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import psycopg
import pytest
import structlog
from sqlalchemy import make_url

from billing_worker.adapters.observability.logging import configure_logging
from billing_worker.config import Settings
from billing_worker.entrypoints import cli
from tests import stripe_payloads as sp
from tests.e2e.conftest import (  # noqa: F401 - fixtures used by the tests below
    Bus,
    bus,
    free_port,
    http_get,
    wait_until,
)
from tests.reliability.hostile_support import ChildProcess, base_event, broker_user, dumps


@dataclass(frozen=True)
class Secrets:
    """Fresh secret values; ``forms`` are the ways each could show up."""

    db_password: str
    amqp_password: str
    api_key: str
    webhook_secret: str

    @property
    def forms(self) -> list[str]:
        values = [self.db_password, self.amqp_password, self.api_key, self.webhook_secret]
        return values + [urllib.parse.quote(v, safe="") for v in values]

    def assert_absent(self, where: str, text: str) -> None:
        for form in self.forms:
            assert form not in text, f"a secret ({form[:6]}...) appears in {where}"


@pytest.fixture
def keys() -> Secrets:
    # URL-unsafe characters on purpose: a secret must not leak in its quoted form either
    return Secrets(
        db_password=f"db-pw/{secrets.token_hex(8)}@#",
        amqp_password=f"mq-pw:{secrets.token_hex(8)}%",
        api_key=f"sk_test_{secrets.token_hex(16)}",
        webhook_secret=f"whsec_{secrets.token_hex(16)}",
    )


@pytest.fixture
def amqp_url(namespace: str, keys: Secrets) -> Iterator[str]:
    """A broker user with a password, confined to this test's namespace."""
    user = f"secrets-{namespace}"
    own = rf"^{namespace}\..*"
    with broker_user(
        user, keys.amqp_password, permissions=(own, rf"^(amq\.default|{namespace}\..*)$", own)
    ):
        quoted = urllib.parse.quote(keys.amqp_password, safe="")
        yield f"amqp://{user}:{quoted}@127.0.0.1:5672/"


def with_password(database_url: str, password: str, **changes: object) -> str:
    url = make_url(database_url).set(password=password, **changes)  # type: ignore[arg-type]
    return url.render_as_string(hide_password=False)


def environment(keys: Secrets, **variables: str) -> dict[str, str]:
    """The secrets every process gets, plus ``variables``."""
    return {
        "BILLING_STRIPE_API_KEY": keys.api_key,
        "BILLING_STRIPE_WEBHOOK_SECRET": keys.webhook_secret,
        "BILLING_HTTP_HOST": "127.0.0.1",
        "BILLING_STRIPE_RELAY_HOST": "127.0.0.1",
        "BILLING_LOG_LEVEL": "debug",
        **variables,
    }


class _EchoingStripe(BaseHTTPRequestHandler):
    """A Stripe API that refuses every call, quoting the key it was given in full."""

    def _refuse(self) -> None:
        key = self.headers.get("Authorization", "").removeprefix("Bearer ")
        body = json.dumps(
            {"error": {"type": "invalid_request_error", "message": f"Invalid API Key: {key}"}}
        ).encode()
        self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _refuse  # noqa: N815 - http.server's names

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib name
        """Quiet."""


@pytest.fixture
def echoing_stripe() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _EchoingStripe)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


def seed_invoice_to_sync(sql: psycopg.Connection) -> None:
    """An open invoice of an account linked to a Stripe customer: the sync pushes it at
    start."""
    (version,) = sql.execute("SELECT version FROM pricebooks ORDER BY version").fetchone() or ("",)
    sql.execute("INSERT INTO accounts (account_id, plan) VALUES ('acct_sync', 'FREE')")
    sql.execute("INSERT INTO stripe_customers VALUES ('cus_sync', 'acct_sync')")
    sql.execute(
        "INSERT INTO invoices (invoice_id, account_id, period_start, period_end, status, plan,"
        " currency, subtotal, credits_applied, total, pricebook_version) VALUES ('inv_sync',"
        " 'acct_sync', '2026-10-01Z', '2026-11-01Z', 'open', 'FREE', 'usd', 1, 0, 1, %s)",
        (version,),
    )
    sql.execute(
        "INSERT INTO invoice_lines (invoice_id, line_no, kind, description, quantity, included,"
        " free_quantity, billable, price, amount, unrounded, entries) VALUES ('inv_sync', 1,"
        " 'plan_fee', 'Plan', 1, 0, 0, 1, '1', 1, 1, 0)"
    )


def post_webhook(port: int, body: bytes, signature: str) -> int:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/stripe/webhook",
        data=body,
        headers={"Stripe-Signature": signature, "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
        return int(response.status)


async def test_running_worker_and_relay_never_show_secrets(
    *,
    bus: Bus,
    database_url: str,
    namespace: str,
    amqp_url: str,
    keys: Secrets,
    echoing_stripe: str,
    sql: psycopg.Connection,
    tmp_path: Path,
) -> None:
    """A worker and a relay at debug level, through a forged webhook (relayed, refused as
    bad_signature), a genuine one, a bad usage event, and an invoice sync refused by a
    Stripe API that echoes the key: their logs, /metrics, /readyz, the dead letters and the
    sync error stored on the invoice hold none of the secrets."""
    seed_invoice_to_sync(sql)
    worker_port, relay_port = free_port(), free_port()
    common = {"BILLING_AMQP_URL": amqp_url, "BILLING_NAMESPACE": namespace}
    worker = ChildProcess(
        "run",
        environment(
            keys,
            **common,
            BILLING_DATABASE_URL=with_password(database_url, keys.db_password),
            BILLING_HTTP_PORT=str(worker_port),
            BILLING_STRIPE_API_BASE=echoing_stripe,
        ),
        tmp_path / "worker.log",
    )
    relay = ChildProcess(
        "stripe-relay",
        environment(keys, **common, BILLING_STRIPE_RELAY_PORT=str(relay_port)),
        tmp_path / "relay.log",
    )
    try:
        await worker.wait_ready(worker_port)
        await relay.wait_ready(relay_port)
        event = sp.event("customer.created", sp.customer("cus_s", account_id="acct_s"), created=1)
        body = sp.encode(event)
        forged = sp.sign(body, "whsec_someone_else")
        assert await asyncio.to_thread(post_webhook, relay_port, body, forged) == 200
        genuine = sp.sign(body, keys.webhook_secret)
        assert await asyncio.to_thread(post_webhook, relay_port, body, genuine) == 200
        await bus.publish(dumps(base_event("bad", data={"quantity": -1})))

        def settled() -> bool:
            synced = sql.execute(
                "SELECT stripe_sync_error FROM invoices WHERE invoice_id = 'inv_sync'"
            ).fetchone()
            linked = sql.execute("SELECT 1 FROM stripe_customers WHERE customer_id = 'cus_s'")
            return bool(synced and synced[0]) and linked.fetchone() is not None

        await wait_until(settled, what="the sync refused and the genuine webhook applied")
        scraped = {
            f"{name} {path}": http_get(f"http://127.0.0.1:{port}{path}")[1]
            for name, port in (("worker", worker_port), ("relay", relay_port))
            for path in ("/metrics", "/readyz", "/healthz")
        }
        assert await relay.stop() == 0
        assert await worker.stop() == 0
    finally:
        relay.kill()
        worker.kill()

    letters = await bus.take_all("billing-worker.stripe.dlq")
    letters += await bus.take_all("billing-worker.usage.dlq")
    assert sorted(str(m.headers["x-billing-reason"]) for m in letters) == [
        "bad_signature",
        "schema_violation",
    ]
    (stored_error,) = sql.execute(
        "SELECT stripe_sync_error FROM invoices WHERE invoice_id = 'inv_sync'"
    ).fetchone() or (None,)
    assert "Invalid API Key" in stored_error  # the echo really came back through
    assert "stripe_sync_failed" in worker.output()
    keys.assert_absent("the worker's output", worker.output())
    keys.assert_absent("the relay's output", relay.output())
    for where, text in scraped.items():
        keys.assert_absent(where, text)
    for letter in letters:
        keys.assert_absent("a dead letter", f"{letter.headers} {letter.body!r}")
    keys.assert_absent("the stored sync error", stored_error)


async def test_failing_to_start_never_shows_secrets(
    database_url: str, namespace: str, amqp_url: str, keys: Secrets, tmp_path: Path
) -> None:
    """A database that is not listening, a role that does not exist, a wrong broker
    password (worker and relay), and ``migrate`` against a missing server: each process
    exits non-zero saying what failed, and prints none of the secrets."""
    closed = free_port()
    wrong_amqp = amqp_url.replace(urllib.parse.quote(keys.amqp_password, safe=""), "wrong")
    assert wrong_amqp != amqp_url
    quick = {"BILLING_NAMESPACE": namespace, "BILLING_STARTUP_TIMEOUT_SECONDS": "1"}
    good_db = with_password(database_url, keys.db_password)
    runs = {
        "no database server": (
            "run",
            {
                "BILLING_DATABASE_URL": with_password(database_url, keys.db_password, port=closed),
                "BILLING_AMQP_URL": amqp_url,
            },
            "worker_start_failed",
        ),
        "no such role": (
            "run",
            {
                "BILLING_DATABASE_URL": with_password(
                    database_url, keys.db_password, username="no_such_role"
                ),
                "BILLING_AMQP_URL": amqp_url,
            },
            "worker_start_failed",
        ),
        "wrong broker password": (
            "run",
            {"BILLING_DATABASE_URL": good_db, "BILLING_AMQP_URL": wrong_amqp},
            "worker_start_failed",
        ),
        "relay, wrong broker password": (
            "stripe-relay",
            {"BILLING_AMQP_URL": wrong_amqp, "BILLING_STRIPE_RELAY_PORT": str(free_port())},
            "stripe_relay_start_failed",
        ),
        "migrate, no database server": (
            "migrate",
            {"BILLING_DATABASE_URL": with_password(database_url, keys.db_password, port=closed)},
            "onnection refused",
        ),
    }
    processes = {
        name: ChildProcess(
            command,
            environment(keys, **quick, **variables, BILLING_HTTP_PORT=str(free_port())),
            tmp_path / f"{index}.log",
        )
        for index, (name, (command, variables, _)) in enumerate(runs.items())
    }
    try:
        for name, process in processes.items():
            assert await process.wait_exit() != 0, name
            output = process.output()
            assert runs[name][2] in output, f"{name} did not say why:\n{output[-2000:]}"
            keys.assert_absent(f"the output of {name!r}", output)
    finally:
        for process in processes.values():
            process.kill()


@pytest.mark.usefixtures("restore_logging")
def test_invalid_configuration_never_shows_secrets(
    keys: Secrets, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Configuration that does not validate, including secrets pasted into the wrong
    variables, stops the command with exit 2 naming each variable, and echoes no value."""
    monkeypatch.setenv("BILLING_DATABASE_URL", f"mysql://u:{keys.db_password}@db/billing")
    monkeypatch.setenv("BILLING_AMQP_URL", f"http://u:{keys.amqp_password}@mq/")
    monkeypatch.setenv("BILLING_STRIPE_SIGNATURE_TOLERANCE_SECONDS", keys.webhook_secret)
    monkeypatch.setenv("BILLING_HTTP_PORT", keys.api_key)
    monkeypatch.setenv("BILLING_STRIPE_API_KEY", keys.api_key)
    for command in (["run"], ["migrate"], ["stripe-relay"], ["account", "show", "a"]):
        assert cli.main(command) == 2
        captured = capsys.readouterr()
        for variable in (
            "BILLING_DATABASE_URL",
            "BILLING_AMQP_URL",
            "BILLING_STRIPE_SIGNATURE_TOLERANCE_SECONDS",
            "BILLING_HTTP_PORT",
        ):
            assert variable in captured.err
        keys.assert_absent(f"billing-worker {command[0]}", captured.out + captured.err)


@pytest.mark.usefixtures("restore_logging")
def test_log_lines_mask_secrets_whoever_writes_them(
    keys: Secrets, capsys: pytest.CaptureFixture[str]
) -> None:
    """With logging configured from the settings, a secret quoted by a library (a log
    message, an exception's text, a structured field, URL-quoted or not) is masked; the
    settings name every secret they hold, the URL passwords unquoted."""
    settings = Settings(
        database_url=f"postgresql://u:{urllib.parse.quote(keys.db_password, safe='')}@h/db",
        amqp_url=f"amqp://u:{urllib.parse.quote(keys.amqp_password, safe='')}@h/",
        stripe_api_key=keys.api_key,
        stripe_webhook_secret=keys.webhook_secret,
    )
    assert sorted(settings.secret_values) == sorted(
        [keys.db_password, keys.amqp_password, keys.api_key, keys.webhook_secret]
    )
    configure_logging("info", sys.stdout, secrets=settings.secret_values)
    library = logging.getLogger("some.library")
    library.warning("connecting to %s", f"amqp://u:{keys.amqp_password}@h/")
    refused = RuntimeError(f"refused: {urllib.parse.quote(keys.db_password, safe='')}")
    library.error("failed", exc_info=refused)
    structlog.get_logger("billing").warning("echoed", detail=f"key {keys.api_key}")
    out = capsys.readouterr().out
    keys.assert_absent("the log", out)
    assert out.count("[redacted]") >= 3

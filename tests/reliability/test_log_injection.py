"""Injection-looking strings through the real worker process: stored verbatim, logged as data.

Account ids, sources, event ids and dimension values that look like SQL, forged log lines,
terminal escapes or format strings are ordinary text to the worker: PostgreSQL gets them as
bound parameters and gives them back byte for byte, and the JSON log lines carry them as
escaped strings, so no forged record, control character or escape sequence reaches the log.
"""

# ruff: noqa: F811 - the e2e fixtures are imported, then named as test parameters

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aio_pika
import psycopg

from tests import stripe_payloads as sp
from tests.clock import unix_now
from tests.conftest import AMQP_URL
from tests.e2e.conftest import (  # noqa: F401 - fixtures used by the tests below
    Bus,
    bus,
    free_port,
    http_get,
    wait_until,
)
from tests.reliability.hostile_support import ChildProcess, base_event, dumps

FORGED = '\n{"level": "critical", "event": "forged", "timestamp": "2026-01-01T00:00:00Z"}\n'
INJECTIONS = [
    "'; DROP TABLE usage_ledger; --",
    'acct" OR "1"="1',
    FORGED,
    '\r\n{"level":"error","event":"forged"}\r\n',
    "\x1b[31mred\x1b[0m\x1b]0;window title\x07\x1b[2J",
    "\u202eevil\u202c \u200b zero-width",
    "%s %n %(x)s {0} {event} ${jndi:ldap://x/a} {{7*7}}",
    "\\u0000 \\x00 \\n (backslashes, not escapes)",
    "\x7f\x08\x0c\t\x0b control characters",
    "</script><script>alert(1)</script>",
    "💳 Ω é \U0001d54f",
    "x" * 256,
]


def logged_records(output: str) -> list[dict[str, Any]]:
    """Every line of the log as a JSON object (fails the test on any other line)."""
    records = []
    for number, line in enumerate(output.splitlines(), 1):
        record = json.loads(line)  # raises, naming the line, if it is not JSON
        assert isinstance(record, dict), f"line {number} is not a JSON object: {line!r}"
        records.append(record)
    return records


def holds(record: dict[str, Any], text: str) -> bool:
    return any(isinstance(v, str) and text in v for v in record.values())


async def publish_usage(bus: Bus, body: bytes) -> None:
    exchange = await bus.channel.get_exchange(bus.name("billing.usage"))
    message = aio_pika.Message(
        body, content_type="application/json", delivery_mode=aio_pika.DeliveryMode.PERSISTENT
    )
    await exchange.publish(message, routing_key="usage.injection.chat.tokens")


async def relay_stripe(bus: Bus, event: dict[str, Any]) -> None:
    body = sp.encode(event)
    now = unix_now()
    headers = {"stripe-signature": sp.sign(body, sp.WEBHOOK_SECRET, timestamp=now)}
    exchange = await bus.channel.get_exchange(bus.name("billing.stripe"))
    await exchange.publish(
        aio_pika.Message(body, headers={**headers, "x-relayed-at": now}), routing_key=""
    )


def metric(port: int, name: str) -> float:
    _, text = http_get(f"http://127.0.0.1:{port}/metrics")
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


async def test_injection_strings_are_stored_verbatim_and_logged_as_data(
    bus: Bus, database_url: str, namespace: str, sql: psycopg.Connection, tmp_path: Path
) -> None:
    """Usage events whose source, id, account and dimensions are SQL, forged JSON log lines,
    ANSI and bidi escapes, format strings or control characters are recorded, and read back
    from PostgreSQL exactly as sent; quota checks and Stripe events that make the worker log
    such strings (a correlation id, a checkout session id, an invoice id) leave a log in
    which every line is one JSON object, pure ASCII, with no forged record among them."""
    port = free_port()
    worker = ChildProcess(
        "run",
        {
            "BILLING_AMQP_URL": AMQP_URL,
            "BILLING_DATABASE_URL": database_url,
            "BILLING_NAMESPACE": namespace,
            "BILLING_HTTP_HOST": "127.0.0.1",
            "BILLING_HTTP_PORT": str(port),
            "BILLING_LOG_LEVEL": "debug",
            "BILLING_STRIPE_WEBHOOK_SECRET": sp.WEBHOOK_SECRET,
        },
        tmp_path / "worker.log",
    )
    try:
        await worker.wait_ready(port)
        sent = {}
        for i, text in enumerate(INJECTIONS):
            event = base_event(
                text[:250] + f"#{i}", source=text, subject=text, data={"model": text, "n": i}
            )
            event["data"][text[:64]] = "dimension name"
            sent[(event["source"], event["id"])] = event
            await publish_usage(bus, dumps(event))
        await bus.channel.default_exchange.publish(
            aio_pika.Message(b'{"account": "a", "meter": "tokens"}', correlation_id=FORGED),
            routing_key=bus.name("billing.quota.check"),
        )
        unpaid = sp.checkout_session(
            FORGED, mode="payment", client_reference_id=FORGED, payment_status="unpaid"
        )
        await relay_stripe(bus, sp.event("checkout.session.completed", unpaid, created=1))
        invoice = sp.invoice(
            "in_inj",
            customer="cus_inj",
            status="paid",
            amount_due=990,
            amount_paid=990,
            billing_invoice_id=INJECTIONS[4],
        )
        invoice["metadata"]["account_id"] = INJECTIONS[0]
        await relay_stripe(bus, sp.event("invoice.paid", invoice, created=2))

        await wait_until(
            lambda: (
                metric(port, "billing_events_recorded_total") >= len(INJECTIONS) + 2
                and metric(port, 'billing_quota_checks_total{answer="unanswerable"}') == 1
            ),
            what="every event recorded and the quota check answered",
        )
        assert await worker.stop() == 0
    finally:
        worker.kill()

    rows = sql.execute(
        "SELECT event_source, event_id, account_id, dimensions FROM usage_ledger"
    ).fetchall()
    assert len(rows) == len(INJECTIONS)
    for source, event_id, account, dimensions in rows:
        event = sent[(source, event_id)]
        assert account == event["subject"]
        assert dimensions == {k: v for k, v in event["data"].items() if k != "quantity"}
    accounts = {a for (a,) in sql.execute("SELECT account_id FROM accounts").fetchall()}
    assert set(INJECTIONS) <= accounts
    objects = {o for (o,) in sql.execute("SELECT object_id FROM stripe_objects").fetchall()}
    assert FORGED in objects

    raw = worker.log_path.read_bytes()
    assert raw.isascii(), "non-ASCII bytes reached the log"
    assert not any(c < 0x20 and c != 0x0A for c in raw), "a control character reached the log"
    records = logged_records(raw.decode())
    assert not [r for r in records if r.get("event") == "forged"]
    assert any(
        r.get("event") == "quota_check_without_reply_to" and holds(r, FORGED) for r in records
    )
    assert any(r.get("event") == "checkout_not_paid_yet" and holds(r, FORGED) for r in records)
    assert any(holds(r, INJECTIONS[4]) for r in records)  # the ANSI one, as data

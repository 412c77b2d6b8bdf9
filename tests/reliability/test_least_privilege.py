"""The least-privilege accounts of README.md, created exactly as written there, run the
worker, the Stripe relay and a producer end to end; what they are not granted is refused.

The rabbitmqctl commands and the SQL are read from the README's examples (role, user,
vhost and database names swapped for this test's own), so the documentation can't drift
from what is tested.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import shlex
import urllib.request
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import aio_pika
import psycopg
import pytest
from aio_pika.abc import AbstractChannel, AbstractRobustConnection
from aiormq.exceptions import ChannelAccessRefused
from pydantic import SecretStr

from billing_worker.adapters.postgres.database import prepare_database
from billing_worker.adapters.pricebook_file import load_pricebook
from billing_worker.entrypoints import cli
from billing_worker.entrypoints.stripe_relay import WEBHOOK_PATH, StripeRelay
from billing_worker.entrypoints.worker import StartupError, Worker
from tests import stripe_payloads as sp
from tests.clock import now
from tests.conftest import admin, database_url_for, drop_database, libpq_url
from tests.e2e.conftest import wait_until, worker_settings
from tests.readme_examples import readme_example
from tests.reliability.hostile_support import base_event, dumps, rabbitmqctl

SUFFIX_CHARS = 10


# -- the accounts, as the README writes them ----------------------------------------------


def broker_permissions() -> dict[str, tuple[str, str, str]]:
    """User -> (configure, write, read), from the README's rabbitmqctl commands."""
    script = readme_example("least-privilege-rabbitmq", "sh").replace("\\\n", " ")
    permissions = {}
    for line in script.splitlines():
        words = shlex.split(line)
        if words[:2] == ["rabbitmqctl", "set_permissions"]:
            assert words[2:4] == ["-p", "billing"], line
            permissions[words[4]] = (words[5], words[6], words[7])
    assert set(permissions) == {"billing-worker", "billing-stripe-relay", "chat-service"}
    return permissions


def sql_statements(name: str, renames: dict[str, str]) -> list[str]:
    """The statements of a README SQL example, with names swapped word for word."""
    script = readme_example(name, "sql")
    script = "\n".join(line for line in script.splitlines() if not line.startswith("--"))
    for old, new in renames.items():
        script = re.sub(rf"\b{re.escape(old)}\b", new, script)
    return [s.strip() for s in script.split(";") if s.strip()]


def rabbitmqctl_all(*commands: tuple[str, ...]) -> None:
    """Several rabbitmqctl commands at once (each one starts a VM: that is the slow part)."""
    with ThreadPoolExecutor(len(commands)) as pool:
        list(pool.map(lambda command: rabbitmqctl(*command), commands))


@dataclass(frozen=True)
class Vhost:
    """A fresh vhost with the README's users on it, and an administrator's URL."""

    name: str
    urls: dict[str, str]  # README user name -> AMQP URL of this test's user
    admin_url: str


@pytest.fixture(scope="module")
def vhost() -> Iterator[Vhost]:
    """One vhost for the module (users are slow to make); each test has its own database."""
    suffix = uuid.uuid4().hex[:SUFFIX_CHARS]
    name = f"lp-{suffix}"
    permissions = broker_permissions()
    users = {readme: (f"{readme}-{suffix}", secrets.token_hex(12)) for readme in permissions}
    rabbitmqctl_all(("add_vhost", name), *(("add_user", u, p) for u, p in users.values()))
    try:
        rabbitmqctl_all(
            ("set_permissions", "-p", name, "guest", ".*", ".*", ".*"),
            *(
                ("set_permissions", "-p", name, user, *permissions[readme])
                for readme, (user, _) in users.items()
            ),
        )
        yield Vhost(
            name,
            {r: f"amqp://{u}:{p}@127.0.0.1:5672/{name}" for r, (u, p) in users.items()},
            f"amqp://guest:guest@127.0.0.1:5672/{name}",
        )
    finally:
        rabbitmqctl_all(("delete_vhost", name), *(("delete_user", u) for u, _ in users.values()))


@dataclass(frozen=True)
class Database:
    """A database owned by the README's owner role, granted as the README says."""

    owner_url: str
    runtime_url: str


@pytest.fixture
def roles() -> Iterator[Database]:
    suffix = uuid.uuid4().hex[:SUFFIX_CHARS]
    owner, runtime, name = f"bwt_lp_owner_{suffix}", f"bwt_lp_worker_{suffix}", f"bwt_lp_{suffix}"
    password = secrets.token_hex(12)
    renames = {"billing_owner": owner, "billing_worker": runtime, "billing": name}
    statements = sql_statements("least-privilege-postgres-superuser", renames)
    assert statements[0].startswith(f"CREATE ROLE {owner}")
    try:
        with admin() as conn:
            for statement in statements:
                conn.execute(re.sub(r"PASSWORD '[^']*'", f"PASSWORD '{password}'", statement))
        server = database_url_for(name)
        urls = Database(
            owner_url=server.replace("postgres@", f"{owner}:{password}@", 1),
            runtime_url=server.replace("postgres@", f"{runtime}:{password}@", 1),
        )
        prepare_database(urls.owner_url)  # `billing-worker migrate` as the owner
        with psycopg.connect(libpq_url(urls.owner_url), autocommit=True) as conn:
            for statement in sql_statements("least-privilege-postgres-owner", renames):
                conn.execute(statement)
        yield urls
    finally:
        drop_database(name)
        with admin() as conn:
            conn.execute(f"DROP ROLE IF EXISTS {runtime}")
            conn.execute(f"DROP ROLE IF EXISTS {owner}")


# -- helpers ------------------------------------------------------------------------------


async def refused(url: str, attempt: Any) -> bool:
    """Whether ``attempt(channel)`` is refused by the broker (ACCESS_REFUSED, 403)."""
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        try:
            await attempt(channel)
        except ChannelAccessRefused:
            return True
        return False
    finally:
        await connection.close()


def post_webhook(port: int, event: dict[str, Any]) -> int:
    body = sp.encode(event)
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{WEBHOOK_PATH}",
        data=body,
        headers={"Stripe-Signature": sp.sign(body, sp.WEBHOOK_SECRET)},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - loopback
        return int(response.status)


async def ask_quota(channel: AbstractChannel, account: str) -> dict[str, Any]:
    """A quota check over direct reply-to."""
    reply: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
    replies = await channel.get_queue("amq.rabbitmq.reply-to", ensure=False)

    async def on_reply(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        if not reply.done():
            reply.set_result(json.loads(message.body))

    await replies.consume(on_reply, no_ack=True)
    await channel.default_exchange.publish(
        aio_pika.Message(
            json.dumps({"account": account, "meter": "tokens", "quantity": 1}).encode(),
            correlation_id="lp-1",
            reply_to="amq.rabbitmq.reply-to",
        ),
        routing_key="billing.quota.check",
    )
    return await asyncio.wait_for(reply, 10)


def counted(worker: Worker, name: str, queue: str = "billing-worker.usage") -> float:
    return worker.metrics.registry.get_sample_value(name, {"queue": queue}) or 0.0


def last_month() -> str:
    first = now().replace(day=1, hour=12, minute=0, second=0, microsecond=0)
    return (first - timedelta(days=15)).isoformat()


# -- the tests ----------------------------------------------------------------------------


async def test_worker_relay_and_producer_run_with_the_documented_rights(
    vhost: Vhost, roles: Database
) -> None:
    """As the README's broker users and runtime role: a producer's usage is recorded (a
    quota crossing and credits included), a bad event is dead-lettered and announced,
    Stripe webhooks pass the relay and are applied, a quota check is answered, a past
    period is closed into an invoice, billing events go out, and nothing is requeued."""
    settings = worker_settings(
        roles.runtime_url,
        "",
        amqp_url=vhost.urls["billing-worker"],
        stripe_webhook_secret=sp.WEBHOOK_SECRET,
        close_interval_seconds=0.2,
        close_grace_seconds=0,
    )
    worker = Worker(settings, load_pricebook(None))
    relay = StripeRelay(
        settings.model_copy(
            update={
                "amqp_url": SecretStr(vhost.urls["billing-stripe-relay"]),
                "stripe_relay_host": "127.0.0.1",
                "stripe_relay_port": 0,
            }
        )
    )
    watcher: AbstractRobustConnection = await aio_pika.connect_robust(vhost.admin_url)
    producer = await aio_pika.connect(vhost.urls["chat-service"])
    await worker.start()
    try:
        await relay.start()
        assert relay.connecting is not None
        await relay.connecting
        channel = await watcher.channel()
        events = await channel.declare_queue(exclusive=True)
        await events.bind("billing.events", routing_key="#")

        usage = await (await producer.channel(publisher_confirms=True)).get_exchange(
            "billing.usage", ensure=False
        )
        bodies = [
            dumps(base_event("lp-1", subject="acct_lp", data={"quantity": 100_000})),
            dumps(base_event("lp-2", subject="acct_lp", type="api.call", data={})),
            dumps(base_event("lp-3", subject="acct_lp", time=last_month(), data={})),
            dumps(base_event("lp-bad", data={"quantity": -1})),
        ]
        for body in bodies:
            await usage.publish(aio_pika.Message(body), routing_key="usage.chat.tokens")
        customer = sp.customer("cus_lp", account_id="acct_lp")
        assert (
            await asyncio.to_thread(
                post_webhook, relay.port, sp.event("customer.created", customer, created=1)
            )
            == 200
        )
        await wait_until(lambda: counted(worker, "billing_events_received_total") >= 4)
        reply = await ask_quota(await producer.channel(), "acct_lp")  # as the product service
        assert (reply["used"], reply["allowed"]) == ("100000", False)

        with psycopg.connect(libpq_url(roles.owner_url), autocommit=True) as sql:

            def closed_and_linked() -> bool:
                invoices = sql.execute("SELECT count(*) FROM invoices").fetchone()
                linked = sql.execute("SELECT count(*) FROM stripe_customers").fetchone()
                return invoices == (1,) and linked == (1,)

            await wait_until(closed_and_linked, what="an invoice closed and a customer linked")
            assert sql.execute("SELECT count(*) FROM usage_ledger").fetchone() == (3,)
            assert sql.execute("SELECT count(*) FROM credit_ledger").fetchone() != (0,)
        seen: set[str] = set()

        async def published() -> bool:
            while (message := await events.get(no_ack=True, fail=False)) is not None:
                seen.add(str(message.routing_key))
            return {"quota.exceeded", "usage.rejected"} <= seen

        await wait_until(published, what="billing events out")
        letters = await (await channel.get_queue("billing-worker.usage.dlq")).get(no_ack=True)
        assert letters.headers["x-billing-reason"] == "schema_violation"
        assert counted(worker, "billing_events_requeued_total") == 0
        assert worker.readiness.ready
    finally:
        await relay.stop()
        await worker.stop()
        await producer.close()
        await watcher.close()


async def test_what_is_not_granted_is_refused(vhost: Vhost, roles: Database) -> None:
    """The runtime role can't delete, update or truncate the ledger, create tables
    (temporary ones included), drop what it uses or move the schema's version; the broker
    users can't publish usage (worker, relay), read a DLQ (worker) or declare, read and
    publish outside their names."""
    worker = Worker(
        worker_settings(roles.runtime_url, "", amqp_url=vhost.urls["billing-worker"]),
        load_pricebook(None),
    )
    await worker.start()  # declares the topology, as the worker account
    await worker.stop()
    with psycopg.connect(libpq_url(roles.runtime_url), autocommit=True) as conn:
        for statement in (
            "DELETE FROM usage_ledger",
            "UPDATE usage_ledger SET quantity = 0",
            "TRUNCATE usage_ledger",
            "DELETE FROM accounts",
            "CREATE TABLE planted (x int)",
            "CREATE TEMP TABLE planted (x int)",
            "DROP TABLE outbox",
            "ALTER TABLE accounts ADD COLUMN planted int",
            "UPDATE alembic_version SET version_num = 'planted'",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)

    async def publish_usage(channel: AbstractChannel) -> None:
        exchange = await channel.get_exchange("billing.usage", ensure=False)
        await exchange.publish(aio_pika.Message(b"{}"), routing_key="usage.x")

    async def read_dlq(channel: AbstractChannel) -> None:
        queue = await channel.get_queue("billing-worker.usage.dlq", ensure=False)
        await queue.get(no_ack=False, fail=False)

    async def declare_other(channel: AbstractChannel) -> None:
        await channel.declare_queue("not-billing", durable=True)

    async def publish_events(channel: AbstractChannel) -> None:
        exchange = await channel.get_exchange("billing.events", ensure=False)
        await exchange.publish(aio_pika.Message(b"{}"), routing_key="invoice.ready")

    worker_url = vhost.urls["billing-worker"]
    relay_url, producer_url = vhost.urls["billing-stripe-relay"], vhost.urls["chat-service"]
    assert await refused(worker_url, publish_usage)
    assert await refused(worker_url, read_dlq)
    assert await refused(worker_url, declare_other)
    assert await refused(relay_url, publish_usage)
    assert await refused(relay_url, publish_events)
    assert await refused(producer_url, publish_events)
    assert await refused(producer_url, declare_other)
    assert await refused(producer_url, read_dlq)
    assert not await refused(producer_url, publish_usage)  # what it is for


@pytest.mark.usefixtures("restore_logging")
async def test_runtime_role_refuses_to_start_on_a_schema_behind(
    vhost: Vhost, roles: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the schema is behind the code, the runtime role neither half-migrates nor
    crashes: the worker stops at start saying which revisions and what to run, and
    ``billing-worker migrate`` as that role exits 1 the same way."""
    with psycopg.connect(libpq_url(roles.owner_url), autocommit=True) as conn:
        conn.execute("DELETE FROM alembic_version")  # as if nothing were migrated
    worker = Worker(
        worker_settings(roles.runtime_url, "", amqp_url=vhost.urls["billing-worker"]),
        load_pricebook(None),
    )
    with pytest.raises(StartupError, match=r"run `billing-worker migrate` as the database owner"):
        await worker.start()
    await worker.stop()
    monkeypatch.setenv("BILLING_DATABASE_URL", roles.runtime_url)
    assert await asyncio.to_thread(cli.main, ["migrate"]) == 1

"""``billing-worker dlq``: dead letters listed and shown by reason without losing or
reordering them, replayed through the normal path after a fix, and purged only on --yes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aio_pika
import psycopg
import pytest

from tests import stripe_payloads as sp
from tests.conftest import AMQP_URL
from tests.e2e.conftest import Bus, StartWorker, encode, event, sample, wait_until
from tests.e2e.operator_cli import Cli, cli_json, operator_cli
from tests.pricebooks import FEATURES_TOML

DLQ = "billing-worker.usage.dlq"
SEAT_KEY = "usage.seat-service.seat.active"


@pytest.fixture
def run_cli(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    database_url: str,
    namespace: str,
    restore_logging: None,
) -> Cli:
    """The command line on this test's namespace and database."""
    return operator_cli(monkeypatch, capsys, database_url, namespace)


def seat(event_id: str, user: str) -> bytes:
    return encode(
        event(
            event_id,
            source="seat-service",
            type="seat.active",
            subject="acct_seats",
            data={"user_id": user},
        )
    )


async def reasons(run_cli: Cli) -> dict[str, int]:
    listed = await cli_json(run_cli, "dlq", "list")
    return {r["reason"]: r["count"] for r in listed["reasons"]}


async def fill_dlq(bus: Bus) -> None:
    """Two events of a type the built-in price book lacks, an unreadable and an invalid one."""
    await bus.publish(seat("s1", "u1"), routing_key=SEAT_KEY)
    await bus.publish(b"{not json")
    await bus.publish(seat("s2", "u2"), routing_key=SEAT_KEY)
    await bus.publish(encode(event("bad", subject="")))
    await wait_until(lambda: _depth_is(bus, 4), what="four dead letters")


async def _depth_is(bus: Bus, n: int) -> bool:
    return await bus.depth(DLQ) == n


class TestListAndShow:
    async def test_counts_by_reason_and_routing_key_then_shows_the_messages(
        self, start_worker: StartWorker, bus: Bus, run_cli: Cli
    ) -> None:
        """list counts each reason and route with its oldest and newest; show gives reason,
        detail, headers and body, filtered by reason and limited; the table names them too."""
        await start_worker()
        await fill_dlq(bus)
        listed = await cli_json(run_cli, "dlq", "list")
        assert listed["total"] == 4
        assert {r["reason"]: r["count"] for r in listed["reasons"]} == {
            "unknown_event_type": 2,
            "invalid_json": 1,
            "schema_violation": 1,
        }
        routes = {(r["reason"], r["routing_key"]): r["count"] for r in listed["routing_keys"]}
        assert routes[("unknown_event_type", SEAT_KEY)] == 2
        assert listed["oldest"] <= listed["newest"]
        status, table, _ = await run_cli("dlq", "list")
        assert status == 0
        assert "unknown_event_type  2" in table
        assert SEAT_KEY in table

        shown = await cli_json(run_cli, "dlq", "show", "--reason", "unknown_event_type")
        assert [json.loads(m["body"])["id"] for m in shown] in (["s1", "s2"], ["s2", "s1"])
        assert all("seat.active" in m["detail"] for m in shown)
        assert all(m["headers"]["x-billing-routing-key"] == SEAT_KEY for m in shown)
        assert len(await cli_json(run_cli, "dlq", "show", "--limit", "1")) == 1
        status, text, _ = await run_cli("dlq", "show", "--reason", "invalid_json")
        assert status == 0
        assert "{not json" in text
        assert "body is not UTF-8 JSON" in text

    async def test_reading_neither_loses_nor_reorders_dead_letters(
        self, start_worker: StartWorker, bus: Bus, run_cli: Cli
    ) -> None:
        """After list and show (with and without a limit) the DLQ holds the same messages in
        the same order as before."""
        await start_worker()
        await fill_dlq(bus)
        before = await cli_json(run_cli, "dlq", "show")
        await cli_json(run_cli, "dlq", "list")
        await cli_json(run_cli, "dlq", "show", "--limit", "2")
        await cli_json(run_cli, "dlq", "show", "--reason", "schema_violation")
        after = await cli_json(run_cli, "dlq", "show")
        assert [m["body"] for m in after] == [m["body"] for m in before]
        taken = await bus.take_all(DLQ)
        assert [m.body.decode() for m in taken] == [m["body"] for m in before]


class TestReplay:
    async def test_replay_after_the_price_book_gains_the_meter_records_the_events(
        self,
        start_worker: StartWorker,
        bus: Bus,
        run_cli: Cli,
        sql: psycopg.Connection,
        tmp_path: Path,
    ) -> None:
        """Events dead-lettered as unknown_event_type by a worker on an old price book are
        recorded once replayed to a worker whose book meters them; the others stay."""
        old = await start_worker()
        await fill_dlq(bus)
        await old.stop()
        book = tmp_path / "features.toml"
        book.write_text(FEATURES_TOML)
        await start_worker(pricebook=book)

        status, out, _ = await run_cli("dlq", "replay", "--reason", "unknown_event_type")
        assert status == 0
        assert "replayed 2 of 4" in out
        assert "skipped 2 (other reason: 2)" in out

        def seats() -> Any:
            return sql.execute(
                "SELECT quantity, event_count FROM usage_aggregates WHERE meter = 'seats'"
            ).fetchone()

        await wait_until(lambda: seats() == (2, 2), what="the replayed seats")
        assert await reasons(run_cli) == {"invalid_json": 1, "schema_violation": 1}
        status, _, _ = await run_cli("verify")
        assert status == 0

    async def test_replayed_event_already_recorded_is_a_duplicate(
        self, start_worker: StartWorker, bus: Bus, run_cli: Cli, sql: psycopg.Connection
    ) -> None:
        """A recorded event the broker dead-lettered later (x-death, a producer's retry
        rejected) goes back to the usage exchange with its routing key and is counted as a
        duplicate: the ledger still has it once."""
        worker = await start_worker()
        body = encode(event("once"))
        await bus.publish(body)
        await wait_until(
            lambda: sample(worker, "billing_events_recorded_total") == 1, what="the event"
        )
        await worker.stop()
        await bus.publish(body)  # a producer's retry, sitting in the queue
        await _broker_rejects_one(bus)
        await wait_until(lambda: _depth_is(bus, 1), what="the broker's dead letter")
        listed = await cli_json(run_cli, "dlq", "list")
        assert listed["reasons"][0]["reason"] == "broker:rejected"

        worker = await start_worker()
        status, out, _ = await run_cli("dlq", "replay")
        assert status == 0
        assert "replayed 1 of 1" in out
        await wait_until(
            lambda: sample(worker, "billing_events_duplicate_total") == 1, what="the duplicate"
        )
        assert sql.execute("SELECT count(*) FROM usage_ledger").fetchone() == (1,)
        assert await bus.depth(DLQ) == 0

    async def test_still_bad_message_comes_back_with_its_reason(
        self, start_worker: StartWorker, bus: Bus, run_cli: Cli
    ) -> None:
        """Replaying without fixing anything: the worker dead-letters the message again, with
        the same reason and fresh headers, and nothing else changes."""
        await start_worker()
        await bus.publish(seat("s1", "u1"), routing_key=SEAT_KEY)
        await wait_until(lambda: _depth_is(bus, 1), what="the dead letter")
        first = (await cli_json(run_cli, "dlq", "show"))[0]

        status, out, _ = await run_cli("dlq", "replay", "--limit", "5")
        assert status == 0
        assert "replayed 1 of 1" in out
        await wait_until(lambda: _depth_is(bus, 1), what="the dead letter back")
        again = await cli_json(run_cli, "dlq", "show")
        assert len(again) == 1
        assert again[0]["reason"] == "unknown_event_type"
        assert again[0]["body"] == first["body"]
        assert again[0]["rejected_at"] >= first["rejected_at"]
        assert "x-death" not in again[0]["headers"]

    async def test_unroutable_replay_is_not_confirmed_and_stays(
        self, start_worker: StartWorker, bus: Bus, run_cli: Cli
    ) -> None:
        """A dead letter first sent straight to the queue (default exchange) has a routing
        key the usage exchange does not route: its copy is returned, not confirmed, so the
        dead letter stays in place and the command exits 1."""
        await start_worker()
        await bus.channel.default_exchange.publish(
            aio_pika.Message(seat("s1", "u1"), delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
            routing_key=bus.name("billing-worker.usage"),
        )
        await wait_until(lambda: _depth_is(bus, 1), what="the dead letter")
        status, out, _ = await run_cli("dlq", "replay")
        assert status == 1
        assert "replayed 0 of 1" in out
        assert "not confirmed: 1" in out
        shown = await cli_json(run_cli, "dlq", "show")
        assert [m["reason"] for m in shown] == ["unknown_event_type"]

    async def test_dry_run_changes_nothing(
        self, start_worker: StartWorker, bus: Bus, run_cli: Cli
    ) -> None:
        """--dry-run says what it would replay and leaves every dead letter in place."""
        await start_worker()
        await fill_dlq(bus)
        report = await cli_json(run_cli, "dlq", "replay", "--dry-run", "--reason", "invalid_json")
        assert (report["replayed"], report["skipped"], report["dry_run"]) == (1, 3, True)
        assert await bus.depth(DLQ) == 4

    async def test_stripe_event_replays_once_its_customer_is_linked(
        self, start_worker: StartWorker, bus: Bus, run_cli: Cli, sql: psycopg.Connection
    ) -> None:
        """A subscription for a customer no account claims yet is dead-lettered as
        unknown_account; once customer.created links it, replaying it to the Stripe
        exchange (--queue stripe) applies it."""
        await start_worker(stripe_webhook_secret=sp.WEBHOOK_SECRET)
        created = sp.event(
            "customer.subscription.created",
            sp.subscription(
                "sub_r",
                customer="cus_r",
                price_id="price_pro_monthly",
                status="active",
                current_period_start=1_795_000_000,
                current_period_end=1_795_000_000 + 30 * 86_400,
            ),
            created=1_795_000_001,
        )
        await _deliver_stripe(bus, created)
        await wait_until(
            lambda: _depth_is_of(bus, "billing-worker.stripe.dlq", 1), what="the dead letter"
        )
        listed = await cli_json(run_cli, "dlq", "list", "--queue", "stripe")
        assert [r["reason"] for r in listed["reasons"]] == ["unknown_account"]
        customer = sp.customer("cus_r", account_id="acct_r")
        await _deliver_stripe(bus, sp.event("customer.created", customer, created=1_795_000_000))
        await wait_until(
            lambda: (
                sql.execute("SELECT 1 FROM accounts WHERE account_id = 'acct_r'").fetchone()
                is not None
            ),
            what="the linked customer",
        )

        status, out, _ = await run_cli("dlq", "replay", "--queue", "stripe")
        assert status == 0
        assert "replayed 1 of 1" in out
        await wait_until(
            lambda: (
                sql.execute("SELECT plan FROM accounts WHERE account_id = 'acct_r'").fetchone()
                == ("PRO",)
            ),
            what="the subscription applied",
        )


class TestPurgeAndMistakes:
    async def test_purge_needs_yes_and_deletes_only_the_reason_given(
        self, start_worker: StartWorker, bus: Bus, run_cli: Cli
    ) -> None:
        """Without --yes nothing is deleted and the refusal says how many it would delete;
        with it, only the selected reason goes and the count is printed."""
        await start_worker()
        await fill_dlq(bus)
        status, _, err = await run_cli("dlq", "purge", "--reason", "unknown_event_type")
        assert status == 2
        assert "--yes" in err
        assert "delete 2 of the 4" in err
        assert await bus.depth(DLQ) == 4
        status, out, _ = await run_cli("dlq", "purge", "--reason", "unknown_event_type", "--yes")
        assert status == 0
        assert "purged 2 dead letter(s) with reason unknown_event_type" in out
        assert await reasons(run_cli) == {"invalid_json": 1, "schema_violation": 1}

    async def test_bad_input_and_a_missing_broker_are_explained(
        self, start_worker: StartWorker, run_cli: Cli, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """An unknown queue, an unknown reason and an unreachable broker: exit 2 with a
        message naming the problem (and the setting); a malformed reason is a usage error."""
        await start_worker()
        status, _, err = await run_cli("dlq", "list", "--queue", "nosuch")
        assert status == 2
        assert "no dead-letter queue" in err
        assert "BILLING_NAMESPACE" in err
        status, _, err = await run_cli("dlq", "show", "--reason", "no_such_reason")
        assert status == 2
        assert "unknown reason 'no_such_reason'" in err
        with pytest.raises(SystemExit) as usage:
            await run_cli("dlq", "list", "--reason", "Not A Reason")
        assert usage.value.code == 2
        monkeypatch.setenv("BILLING_AMQP_URL", "amqp://guest:guest@127.0.0.1:1/")
        status, _, err = await run_cli("dlq", "list")
        assert status == 2
        assert "cannot reach the broker (BILLING_AMQP_URL=" in err


async def _depth_is_of(bus: Bus, queue: str, n: int) -> bool:
    return await bus.depth(queue) == n


async def _broker_rejects_one(bus: Bus) -> None:
    """Take one message off the usage queue and reject it: the broker dead-letters it."""
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(bus.name("billing-worker.usage"), passive=True)
        message = await queue.get(no_ack=False, timeout=5)
        assert message is not None
        await message.reject(requeue=False)


async def _deliver_stripe(bus: Bus, evt: dict[str, Any]) -> None:
    body = sp.encode(evt)
    exchange = await bus.channel.get_exchange(bus.name("billing.stripe"))
    await exchange.publish(
        aio_pika.Message(
            body,
            headers={"stripe-signature": sp.sign(body, sp.WEBHOOK_SECRET)},
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        ),
        routing_key="",
    )

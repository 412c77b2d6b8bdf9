"""The schema: created from nothing, safe to migrate concurrently, and the ledger append-only."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

import psycopg
import pytest
from alembic import command
from sqlalchemy import make_url

from billing_worker.adapters.postgres.database import (
    alembic_config,
    head_revision,
    prepare_database,
)
from tests.conftest import libpq_url


def tables_of(url: str) -> set[str]:
    with psycopg.connect(libpq_url(url)) as conn:
        rows = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
        ).fetchall()
    return {r[0] for r in rows}


class TestMigrations:
    def test_up_from_nothing_creates_database_and_schema(self, empty_database_url: str) -> None:
        """With no database at all, prepare creates it and migrates to head."""
        assert prepare_database(empty_database_url) == head_revision()
        assert {
            "accounts",
            "idempotency_keys",
            "usage_ledger",
            "usage_aggregates",
            "outbox",
            "alembic_version",
        } <= tables_of(empty_database_url)

    def test_second_run_is_a_no_op(self, empty_database_url: str) -> None:
        """Migrating an up-to-date database changes nothing and succeeds."""
        prepare_database(empty_database_url)
        assert prepare_database(empty_database_url) == head_revision()

    def test_replicas_starting_together(self, empty_database_url: str) -> None:
        """Several replicas creating and migrating the same database at once all succeed."""
        errors: list[BaseException] = []

        def start() -> None:
            try:
                prepare_database(empty_database_url)
            except BaseException as exc:  # noqa: BLE001 - collected and asserted below
                errors.append(exc)

        threads = [threading.Thread(target=start) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert errors == []
        with psycopg.connect(libpq_url(empty_database_url)) as conn:
            versions = conn.execute("SELECT version_num FROM alembic_version").fetchall()
        assert versions == [(head_revision(),)]

    def test_downgrade_and_upgrade_round_trip(self, empty_database_url: str) -> None:
        """Every migration can be undone and redone on an empty database."""
        prepare_database(empty_database_url)
        config = alembic_config(make_url(empty_database_url))
        command.downgrade(config, "base")
        assert "usage_ledger" not in tables_of(empty_database_url)
        command.upgrade(config, "head")
        assert "usage_ledger" in tables_of(empty_database_url)

    def test_no_floating_point_columns(self, sql: psycopg.Connection) -> None:
        """Money and quantities are numeric; no column anywhere is float."""
        floats = sql.execute(
            "SELECT table_name, column_name FROM information_schema.columns "
            "WHERE table_schema = 'public' AND data_type IN ('real', 'double precision')"
        ).fetchall()
        assert floats == []
        quantity_types = sql.execute(
            "SELECT DISTINCT data_type FROM information_schema.columns "
            "WHERE table_schema = 'public' AND column_name = 'quantity'"
        ).fetchall()
        assert quantity_types == [("numeric",)]


class TestAppendOnlyLedger:
    @pytest.fixture
    def entry_id(self, sql: psycopg.Connection) -> int:
        """One ledger row to try to rewrite."""
        sql.execute("INSERT INTO accounts (account_id, plan) VALUES ('acct_1', 'FREE')")
        t = datetime(2026, 11, 5, tzinfo=UTC)
        row = sql.execute(
            "INSERT INTO usage_ledger (account_id, meter, quantity, event_source, event_id, "
            "event_type, occurred_at, period_start, period_end) VALUES "
            "('acct_1', 'tokens', 10, 's', 'e1', 'chat.tokens', %s, %s, %s) RETURNING entry_id",
            (t, datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC)),
        ).fetchone()
        assert row is not None
        return int(row[0])

    @pytest.mark.parametrize(
        "statement",
        [
            "UPDATE usage_ledger SET quantity = 0 WHERE entry_id = %s",
            "DELETE FROM usage_ledger WHERE entry_id = %s",
        ],
    )
    def test_update_and_delete_are_refused(
        self, sql: psycopg.Connection, entry_id: int, statement: str
    ) -> None:
        """The database itself refuses to change or remove a ledger row."""
        with pytest.raises(psycopg.errors.RestrictViolation, match="append-only"):
            sql.execute(statement, (entry_id,))
        row = sql.execute(
            "SELECT quantity FROM usage_ledger WHERE entry_id = %s", (entry_id,)
        ).fetchone()
        assert row == (10,)

    def test_truncate_is_refused(self, sql: psycopg.Connection, entry_id: int) -> None:
        """TRUNCATE, which skips row triggers, is refused too."""
        with pytest.raises(psycopg.errors.RestrictViolation, match="append-only"):
            sql.execute("TRUNCATE usage_ledger CASCADE")
        assert sql.execute("SELECT count(*) FROM usage_ledger").fetchone() == (1,)

    def test_entry_outside_its_period_is_refused(self, sql: psycopg.Connection) -> None:
        """A ledger row must fall inside the period it is booked to."""
        sql.execute("INSERT INTO accounts (account_id, plan) VALUES ('acct_2', 'FREE')")
        with pytest.raises(psycopg.errors.CheckViolation):
            sql.execute(
                "INSERT INTO usage_ledger (account_id, meter, quantity, event_source, event_id, "
                "event_type, occurred_at, period_start, period_end) VALUES "
                "('acct_2', 'tokens', 1, 's', 'e2', 'chat.tokens', %s, %s, %s)",
                (
                    datetime(2026, 10, 5, tzinfo=UTC),
                    datetime(2026, 11, 1, tzinfo=UTC),
                    datetime(2026, 12, 1, tzinfo=UTC),
                ),
            )

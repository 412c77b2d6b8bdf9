"""Read commands as an operator's script runs them: stdout holds the JSON report and nothing
else, and a database that is missing or behind is reported, never created or migrated."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from alembic import command
from sqlalchemy import make_url

import billing_worker as billing_worker_package
from billing_worker.adapters.postgres.database import alembic_config, head_revision
from tests.clock import child_env
from tests.conftest import admin, libpq_url

DEFAULT_PRICEBOOK = Path(billing_worker_package.__file__).parent / "pricebooks" / "default.toml"
SEED = ["credits", "grant", "acct_r", "40", "--key", "seed"]


def billing_worker(database_url: str, *argv: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``billing-worker ARGV`` in a child process, its logs at info level (the default)."""
    return subprocess.run(
        [sys.executable, "-m", "billing_worker", *argv],
        env=child_env(BILLING_DATABASE_URL=database_url, **env),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def revision_of(url: str) -> str | None:
    with psycopg.connect(libpq_url(url)) as conn:
        row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    return None if row is None else str(row[0])


@pytest.mark.parametrize(
    "argv",
    [
        ["account", "show", "acct_r", "--json"],
        ["report", "--period", "2026-11", "--json"],
        ["verify", "--json"],
        ["pricebook", "check", str(DEFAULT_PRICEBOOK), "--json"],
    ],
    ids=["account-show", "report", "verify", "pricebook-check"],
)
def test_json_reports_are_alone_on_stdout(database_url: str, argv: list[str]) -> None:
    """With logging on and the clock shifted, stdout is exactly one JSON document."""
    assert billing_worker(database_url, *SEED).returncode == 0
    done = billing_worker(database_url, *argv, BILLING_CLOCK_OFFSET_SECONDS="86400")
    assert done.returncode == 0, done.stderr
    assert isinstance(json.loads(done.stdout), dict)


def test_a_database_behind_is_reported_and_left_as_it_is(empty_database_url: str) -> None:
    """Against a schema one revision behind, read and write commands exit 2 naming both
    revisions and `billing-worker migrate`; the schema stays where it was until migrate."""
    config = alembic_config(make_url(empty_database_url))
    with admin() as conn:
        conn.execute(f'CREATE DATABASE "{make_url(empty_database_url).database}"')
    command.upgrade(config, "0004_invoices")
    for argv in (
        ["account", "show", "acct_r", "--json"],
        ["invoice", "show", "inv-202611-acct_r"],
        ["report", "--period", "2026-11"],
        ["verify"],
        SEED,
    ):
        done = billing_worker(empty_database_url, *argv)
        assert done.returncode == 2, (argv, done.stdout, done.stderr)
        assert done.stdout == ""
        assert "revision 0004_invoices" in done.stderr
        assert head_revision() in done.stderr
        assert "billing-worker migrate" in done.stderr
        assert revision_of(empty_database_url) == "0004_invoices"
    assert billing_worker(empty_database_url, "migrate").returncode == 0
    assert revision_of(empty_database_url) == head_revision()
    assert billing_worker(empty_database_url, *SEED).returncode == 0


def test_a_missing_database_is_not_created_by_a_read(empty_database_url: str) -> None:
    """`account show` against a database that does not exist exits 2 saying so, and the
    database still does not exist afterwards."""
    done = billing_worker(empty_database_url, "account", "show", "acct_r")
    assert done.returncode == 2
    name = make_url(empty_database_url).database
    assert f"database {name!r} does not exist" in done.stderr
    with admin() as conn:
        found = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
    assert found is None


def test_a_shifted_clock_is_announced_by_the_services_only(empty_database_url: str) -> None:
    """With BILLING_CLOCK_OFFSET_SECONDS set, migrate (a service: its log is its output)
    says the clock is shifted and by how much; a report command's stderr stays quiet."""
    shifted = {"BILLING_CLOCK_OFFSET_SECONDS": "86400"}
    done = billing_worker(empty_database_url, "migrate", **shifted)
    assert done.returncode == 0, done.stderr
    assert '"offset_seconds": 86400.0' in done.stdout
    assert "clock_shifted" in done.stdout
    report = billing_worker(empty_database_url, "report", "--period", "2026-11", **shifted)
    assert report.returncode == 0, report.stderr
    assert "clock_shifted" not in report.stderr

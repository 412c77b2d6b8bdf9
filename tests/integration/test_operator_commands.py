"""The operator commands end to end through the CLI: set-plan, credits grant, account show,
and the start-up checks on the price book."""

from __future__ import annotations

import json
from pathlib import Path

import psycopg
import pytest

from billing_worker.adapters.postgres.database import create_engine_for
from billing_worker.adapters.postgres.pricebooks import (
    PriceBookVersionConflict,
    register_pricebook,
)
from billing_worker.adapters.pricebook_file import default_pricebook_text, parse_pricebook
from billing_worker.entrypoints import cli
from tests.pricebooks import DEFAULT_BOOK


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, database_url: str, restore_logging: None) -> None:
    """Point the CLI at this test's database with the built-in price book."""
    monkeypatch.setenv("BILLING_DATABASE_URL", database_url)
    monkeypatch.delenv("BILLING_PRICEBOOK", raising=False)


@pytest.mark.usefixtures("env")
def test_set_plan_grant_and_show(
    capsys: pytest.CaptureFixture[str], sql: psycopg.Connection
) -> None:
    """set-plan moves the account (ledger entry + subscription.changed), credits grant adds
    a promotional grant once per key, and account show reports both, as a table and JSON."""
    assert cli.main(["account", "set-plan", "acct_7", "PLUS"]) == 0
    assert "(new) -> PLUS" in capsys.readouterr().out
    assert cli.main(["account", "set-plan", "acct_7", "PRO"]) == 0
    assert "PLUS -> PRO" in capsys.readouterr().out
    grant = ["credits", "grant", "acct_7", "250", "--key", "welcome", "--note", "launch promo"]
    assert cli.main(grant) == 0
    assert "granted 250 credits" in capsys.readouterr().out
    assert cli.main(grant) == 0
    assert "granted before" in capsys.readouterr().out

    assert cli.main(["account", "show", "acct_7"]) == 0
    table = capsys.readouterr().out
    assert "plan PRO (active)" in table
    assert "tokens" in table
    assert "5000000" in table  # the PRO limit on tokens
    assert "promotional" in table

    assert cli.main(["account", "show", "acct_7", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["plan"], shown["status"]) == ("PRO", "active")
    # moving from PLUS to PRO ended PLUS's period grant (never allocated: no credit usage
    # yet) and granted PRO's 5,000 for the period
    assert shown["credit_balance"] == "5250"
    assert [(g["source"], g["remaining"]) for g in shown["grants"]] == [
        ("promotional", "250"),
        ("plan", "5000"),
    ]
    tokens = next(m for m in shown["meters"] if m["meter"] == "tokens")
    assert (tokens["used"], tokens["limit"]) == ("0", "5000000")
    kinds = [e["what"].split()[0] for e in shown["recent_entries"]]
    assert kinds.count("plan_changed") == 2
    assert "grant" in kinds
    assert all(e["pricebook_version"] == DEFAULT_BOOK.version for e in shown["recent_entries"])
    changed = sql.execute(
        "SELECT payload->'data'->>'previous_plan', payload->'data'->>'plan' FROM outbox "
        "WHERE event_type = 'subscription.changed' ORDER BY outbox_id"
    ).fetchall()
    assert changed == [(None, "PLUS"), ("PLUS", "PRO")]


@pytest.mark.usefixtures("env")
def test_operator_mistakes_are_explained(capsys: pytest.CaptureFixture[str]) -> None:
    """Unknown account, unknown plan and a bad amount: a clear message and a non-zero exit."""
    assert cli.main(["account", "show", "nobody"]) == 1
    assert "no account 'nobody'" in capsys.readouterr().err
    assert cli.main(["account", "set-plan", "acct_1", "GOLD"]) == 1
    assert "no plan 'GOLD'" in capsys.readouterr().err
    assert cli.main(["credits", "grant", "acct_1", "-5"]) == 1
    assert "must be positive" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["credits", "grant", "acct_1", "lots"])
    assert "not a number" in capsys.readouterr().err


def test_broken_price_book_stops_run_with_file_and_key(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    restore_logging: None,
) -> None:
    """`billing-worker run` with a broken BILLING_PRICEBOOK exits 2 naming the file and key."""
    broken = tmp_path / "prices.toml"
    broken.write_text(
        default_pricebook_text().replace('price = "9.90"', 'price = "lots"'), encoding="utf-8"
    )
    monkeypatch.setenv("BILLING_PRICEBOOK", str(broken))
    assert cli.main(["run"]) == 2
    err = capsys.readouterr().err
    assert str(broken) in err
    assert "plans.PLUS.price" in err
    assert "'lots'" in err


async def test_one_version_cannot_mean_two_price_books(database_url: str) -> None:
    """Registering an edited book under a version already recorded is refused; the same
    book again is fine."""
    engine = create_engine_for(database_url, pool_size=1)
    try:
        await register_pricebook(engine, DEFAULT_BOOK)
        edited = parse_pricebook(
            default_pricebook_text().replace('price = "9.90"', 'price = "10.90"'), "edited.toml"
        )
        with pytest.raises(PriceBookVersionConflict, match="new `version`"):
            await register_pricebook(engine, edited)
    finally:
        await engine.dispose()


@pytest.mark.usefixtures("env")
def test_close_show_explain_void_and_report(
    capsys: pytest.CaptureFixture[str], database_url: str, sql: psycopg.Connection
) -> None:
    """close-periods --as-of closes October; invoice show prints the table, --explain the
    ledger entries behind each line, --json the same data; void moves it; report sums
    the month."""
    import asyncio  # noqa: PLC0415
    from datetime import UTC, datetime  # noqa: PLC0415
    from decimal import Decimal  # noqa: PLC0415

    from billing_worker.adapters.postgres.unit_of_work import PostgresUnitOfWork  # noqa: PLC0415
    from billing_worker.domain.usage import UsageRecord  # noqa: PLC0415
    from billing_worker.service.record_usage import record_usage_batch  # noqa: PLC0415

    async def seed() -> None:
        engine = create_engine_for(database_url, pool_size=1)
        at = datetime(2026, 10, 3, tzinfo=UTC)
        records = [
            UsageRecord("web", f"w{i}", "generator.website_generated", "acct_9", at, Decimal(1))
            for i in range(3)
        ]
        await record_usage_batch(
            lambda: PostgresUnitOfWork(engine), DEFAULT_BOOK, records, clock=lambda: at
        )
        await engine.dispose()

    asyncio.run(seed())
    assert cli.main(["close-periods", "--as-of", "2026-11-02T00:00:00Z"]) == 0
    assert "inv-202610-acct_9" in capsys.readouterr().out
    assert cli.main(["invoice", "show", "inv-202610-acct_9"]) == 0
    shown = capsys.readouterr().out
    assert "TOTAL (usd)" in shown
    assert "1.50" in shown
    assert cli.main(["invoice", "show", "inv-202610-acct_9", "--explain"]) == 0
    explained = capsys.readouterr().out
    assert explained.count("web/w") == 3
    assert "rounded once to 1.50" in explained
    assert cli.main(["invoice", "show", "inv-202610-acct_9", "--json"]) == 0
    as_json = json.loads(capsys.readouterr().out)
    assert (as_json["total"], as_json["status"]) == ("1.50", "open")
    assert cli.main(["report", "--period", "2026-10", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["by_plan"] == [
        {"plan": "FREE", "currency": "usd", "invoices": 1, "revenue": "1.50"}
    ]
    assert report["active_accounts"] == 1
    assert cli.main(["invoice", "void", "inv-202610-acct_9"]) == 0
    assert "open -> void" in capsys.readouterr().out
    assert cli.main(["invoice", "show", "nope"]) == 1
    assert sql.execute("SELECT status FROM invoices").fetchone() == ("void",)


@pytest.mark.usefixtures("env")
def test_review_then_finalize(
    capsys: pytest.CaptureFixture[str],
    database_url: str,
    sql: psycopg.Connection,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With BILLING_INVOICE_REVIEW=true close-periods writes a draft; `invoice finalize`
    moves it to open; finalizing twice is a no-op; an unknown invoice exits 1."""
    import asyncio  # noqa: PLC0415
    from datetime import UTC, datetime  # noqa: PLC0415
    from decimal import Decimal  # noqa: PLC0415

    from billing_worker.adapters.postgres.unit_of_work import PostgresUnitOfWork  # noqa: PLC0415
    from billing_worker.domain.usage import UsageRecord  # noqa: PLC0415
    from billing_worker.service.record_usage import record_usage_batch  # noqa: PLC0415

    async def seed() -> None:
        engine = create_engine_for(database_url, pool_size=1)
        at = datetime(2026, 10, 3, tzinfo=UTC)
        record = UsageRecord("web", "w1", "generator.website_generated", "acct_7", at, Decimal(1))
        await record_usage_batch(
            lambda: PostgresUnitOfWork(engine), DEFAULT_BOOK, [record], clock=lambda: at
        )
        await engine.dispose()

    asyncio.run(seed())
    monkeypatch.setenv("BILLING_INVOICE_REVIEW", "true")
    assert cli.main(["close-periods", "--as-of", "2026-11-02T00:00:00Z"]) == 0
    capsys.readouterr()
    assert sql.execute("SELECT status FROM invoices").fetchone() == ("draft",)
    assert cli.main(["invoice", "finalize", "inv-202610-acct_7"]) == 0
    assert "draft -> open" in capsys.readouterr().out
    assert cli.main(["invoice", "finalize", "inv-202610-acct_7"]) == 0
    assert "open -> open" in capsys.readouterr().out
    assert sql.execute(
        "SELECT count(*) FROM outbox WHERE event_type = 'invoice.ready'"
    ).fetchone() == (1,)
    assert cli.main(["invoice", "finalize", "inv-nope"]) == 1

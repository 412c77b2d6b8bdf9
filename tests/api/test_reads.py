"""The API's reads give what the CLI gives, page without losing or repeating anything,
bucket usage by the meter's aggregation, and preview the close exactly."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from billing_worker.adapters.clock import SystemClock
from billing_worker.adapters.postgres.account_summary import account_summary
from billing_worker.adapters.postgres.invoice_document import invoice_document
from billing_worker.domain.pricebook import CreditSource
from billing_worker.domain.usage import UsageRecord
from billing_worker.service.accounts import change_plan, grant_credits
from billing_worker.service.invoices import close_due_periods
from billing_worker.service.record_usage import record_usage_batch
from tests.api.conftest import Api
from tests.pricebooks import DEFAULT_BOOK

NOV_3 = datetime(2026, 11, 3, 9, 30, tzinfo=UTC)
_ids = iter(range(1, 10**9))


def usage(
    account: str, at: datetime, quantity: str, event_type: str = "chat.tokens", **dims: Any
) -> UsageRecord:
    return UsageRecord("svc", f"r{next(_ids)}", event_type, account, at, Decimal(quantity), dims)


async def record(api: Api, records: list[UsageRecord], now: datetime) -> None:
    await record_usage_batch(api.uow, DEFAULT_BOOK, records, clock=lambda: now)


def at_clock(api: Api, moment: datetime) -> None:
    """Make the API's clock read ``moment`` (the tests fix the day they are about)."""
    api.ctx.settings = api.ctx.settings.model_copy(
        update={"clock_offset_seconds": (moment - SystemClock()()).total_seconds()}
    )


async def test_the_account_is_the_clis_document(api: Api) -> None:
    """GET /v1/accounts/{a} is account show --json, built by the same code."""
    await record(api, [usage("acct_1", NOV_3, "1200")], NOV_3)
    at_clock(api, NOV_3 + timedelta(hours=1))
    response = await api.get("/v1/accounts/acct_1")
    assert response.status_code == 200
    async with api.ctx.engine.connect() as conn:
        expected = await account_summary(
            conn, DEFAULT_BOOK, "acct_1", now=api.ctx.settings.clock(), entries=15
        )
    assert response.json() == json.loads(json.dumps(expected))
    assert (await api.get("/v1/accounts/nobody")).status_code == 404


async def test_usage_buckets_by_hour_day_and_period(api: Api) -> None:
    """Tokens at 09:30 and 10:10 on Nov 3 and 12:00 on Nov 5: hour buckets of Nov 3 put
    100 and 50 in their hours; day buckets 150 and 25; the period bucket is the month's 175."""
    await record(
        api,
        [
            usage("acct_u", NOV_3, "100"),
            usage("acct_u", NOV_3 + timedelta(minutes=40), "50"),
            usage("acct_u", datetime(2026, 11, 5, 12, tzinfo=UTC), "25"),
        ],
        datetime(2026, 11, 5, 13, tzinfo=UTC),
    )
    day = datetime(2026, 11, 3, tzinfo=UTC)
    hours = await api.get(
        "/v1/accounts/acct_u/usage",
        params={"from": day.isoformat(), "to": (day + timedelta(days=1)).isoformat(),
                "meter": "tokens", "granularity": "hour"},
    )  # fmt: skip
    assert hours.status_code == 200, hours.text
    (tokens,) = hours.json()["meters"]
    assert tokens["used"] == "150"
    assert len(tokens["buckets"]) == 24
    non_zero = [
        (b["start"][11:16], b["quantity"]) for b in tokens["buckets"] if b["quantity"] != "0"
    ]
    assert non_zero == [("09:00", "100"), ("10:00", "50")]
    days = await api.get(
        "/v1/accounts/acct_u/usage",
        params={"from": day.isoformat(), "to": "2026-11-06T00:00:00Z", "meter": "tokens"},
    )
    (tokens,) = days.json()["meters"]
    assert [(b["start"][:10], b["quantity"]) for b in tokens["buckets"]] == [
        ("2026-11-03", "150"),
        ("2026-11-04", "0"),
        ("2026-11-05", "25"),
    ]
    period = await api.get(
        "/v1/accounts/acct_u/usage",
        params={"from": day.isoformat(), "to": "2026-11-06T00:00:00Z", "granularity": "period",
                "meter": "tokens"},
    )  # fmt: skip
    (tokens,) = period.json()["meters"]
    assert tokens["used"] == "175"
    assert tokens["buckets"] == [
        {
            "start": "2026-11-01T00:00:00+00:00",
            "end": "2026-12-01T00:00:00+00:00",
            "quantity": "175",
        }
    ]


async def test_usage_refuses_what_it_cannot_answer(api: Api) -> None:
    """An unknown meter, a range the wrong way round, a time without a zone or too many
    buckets: 422 saying which."""
    await record(api, [usage("acct_v", NOV_3, "1")], NOV_3)
    for params, fragment in [
        ({"meter": "bananas"}, "no meter 'bananas'"),
        ({"from": "2026-11-05T00:00:00Z", "to": "2026-11-04T00:00:00Z"}, "must be before"),
        ({"from": "2026-11-05T00:00:00", "to": "2026-11-06T00:00:00Z"}, "time zone"),
        ({"from": "2020-01-01T00:00:00Z", "to": "2026-01-01T00:00:00Z", "granularity": "hour"},
         "at most"),
    ]:  # fmt: skip
        response = await api.get("/v1/accounts/acct_v/usage", params=params)
        assert response.status_code == 422, params
        assert fragment in response.json()["detail"]


async def test_ledger_pages_cover_everything_once_newest_first(api: Api) -> None:
    """Seven usage entries and a grant, three a page: every entry exactly once, each page
    newest first, the last page without next_cursor; a forged cursor is a 422."""
    await record(api, [usage("acct_p", NOV_3 + timedelta(minutes=i), "1") for i in range(7)], NOV_3)
    await grant_credits(api.uow, DEFAULT_BOOK, account="acct_p", amount=Decimal(5),
                        source=CreditSource.PROMOTIONAL, key="p", note="", now=NOV_3)  # fmt: skip
    await change_plan(api.uow, DEFAULT_BOOK, account="acct_p", plan="PLUS", cause="test",
                      change_id="c", now=NOV_3)  # fmt: skip
    seen: list[tuple[str, int]] = []
    cursor = None
    for _ in range(10):
        params = {"limit": 3, **({"cursor": cursor} if cursor else {})}
        page = (await api.get("/v1/accounts/acct_p/ledger", params=params)).json()
        times = [e["recorded_at"] for e in page["entries"]]
        assert times == sorted(times, reverse=True)
        seen += [(e["ledger"], e["entry_id"]) for e in page["entries"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == len(set(seen))
    kinds = sorted(k for k, _ in seen)
    assert kinds[0] == "account"
    assert kinds.count("usage") == 7
    assert "credits" in kinds
    bad = await api.get("/v1/accounts/acct_p/ledger", params={"cursor": "bm90LWEtY3Vyc29y"})
    assert bad.status_code == 422


async def test_upcoming_is_what_the_close_then_writes(api: Api) -> None:
    """Mid-November the upcoming invoice of acct_c; November closed with nothing more
    recorded: the stored invoice has the same lines and totals, and the upcoming call
    wrote nothing."""
    await record(
        api,
        [usage("acct_c", NOV_3, "150000"), usage("acct_c", NOV_3, "3", "api.call"),
         usage("acct_c", NOV_3, "40", "ai.inference", model="gpt-4", tokens=1000)],
        NOV_3,
    )  # fmt: skip
    at_clock(api, datetime(2026, 11, 20, tzinfo=UTC))
    upcoming = (await api.get("/v1/accounts/acct_c/invoices/upcoming")).json()
    async with api.ctx.engine.connect() as conn:
        count = (await conn.exec_driver_sql("SELECT count(*) FROM invoices")).scalar_one()
    assert count == 0
    await close_due_periods(
        api.uow, DEFAULT_BOOK, as_of=datetime(2026, 12, 2, tzinfo=UTC), grace=timedelta(hours=1)
    )
    async with api.ctx.engine.connect() as conn:
        stored = await invoice_document(conn, DEFAULT_BOOK, "inv-202611-acct_c", explain=False)
    assert stored is not None
    keys = ("kind", "description", "meter", "quantity", "billable", "price", "amount")
    assert [[line[k] for k in keys] for line in upcoming["lines"]] == [
        [line[k] for k in keys] for line in stored["lines"]
    ]
    for total in ("subtotal", "credits_applied", "credits_shortfall", "total", "currency"):
        assert upcoming[total] == stored[total]
    fetched = (await api.get("/v1/invoices/inv-202611-acct_c")).json()
    assert fetched == stored


async def test_invoices_page_newest_first(api: Api) -> None:
    """Three months invoiced, two a page: Jan, Dec, then Nov; ids as the invoices'."""
    await record(api, [usage("acct_i", datetime(2026, 11, 2, tzinfo=UTC), "1")], NOV_3)
    await close_due_periods(
        api.uow, DEFAULT_BOOK, as_of=datetime(2027, 2, 2, tzinfo=UTC), grace=timedelta(hours=1)
    )
    first = (await api.get("/v1/accounts/acct_i/invoices", params={"limit": 2})).json()
    assert [i["id"] for i in first["invoices"]] == ["inv-202701-acct_i", "inv-202612-acct_i"]
    rest = (
        await api.get(
            "/v1/accounts/acct_i/invoices", params={"limit": 2, "cursor": first["next_cursor"]}
        )
    ).json()
    assert [i["id"] for i in rest["invoices"]] == ["inv-202611-acct_i"]
    assert rest["next_cursor"] is None


async def test_plans_and_reports(api: Api) -> None:
    """/v1/plans lists the book's plans; /v1/reports/YYYY-MM is report --json; a month
    that is not one is 422."""
    plans = (await api.get("/v1/plans")).json()
    assert [p["name"] for p in plans["plans"]] == list(DEFAULT_BOOK.plans)
    report = await api.get("/v1/reports/2026-11")
    assert report.status_code == 200
    assert set(report.json()) >= {"by_plan", "by_meter", "credits", "invoices"}
    assert (await api.get("/v1/reports/2026-13")).status_code == 422


@pytest.mark.parametrize("path", ["/v1/accounts/" + "x" * 300, "/v1/accounts/%00%ff"])
async def test_odd_paths_are_clear_4xx(api: Api, path: str) -> None:
    """An account id too long or of odd bytes: a 4xx problem, never a 500."""
    response = await api.get(path)
    assert 400 <= response.status_code < 500
    assert response.headers["content-type"] == "application/problem+json"


async def test_metrics_count_route_templates(api: Api) -> None:
    """Requests are counted by route template and status, never by account."""
    await api.get("/v1/accounts/acct_zz")
    await asyncio.sleep(0)
    text = (await api.client.get("/metrics")).text
    assert 'route="/v1/accounts/{account}",status="404"' in text
    assert "acct_zz" not in text

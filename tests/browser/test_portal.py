"""What a customer sees on ``/portal`` in Chromium: the API's own numbers for their token,
invoices with PDFs fetched by the token, clear messages for bad links, and a page that
fits a phone."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest
from playwright.sync_api import Page, Request, Route

from tests.browser.conftest import ACCOUNT, Portal

DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}
EXPIRED = "This link has expired — ask for a new one"
INVALID = "This link is not valid — ask for a new one"


def open_portal(page: Page, portal: Portal, token: str | None) -> None:
    page.goto(portal.page_url(token))
    page.wait_for_selector("body[data-state]", timeout=15_000)


def texts(page: Page, selector: str) -> list[str]:
    return [text.strip() for text in page.locator(selector).all_text_contents()]


def shoot(page: Page, portal: Portal, name: str) -> None:
    page.screenshot(path=str(portal.artifacts / f"{name}.png"), full_page=True)


class TestThePage:
    """The page itself: served without a key, locked down by its headers."""

    def test_served_without_auth_under_a_strict_policy(self, portal: Portal) -> None:
        """GET /portal, its script and its styles answer without a key, each with a CSP
        allowing this origin only (no inline code, no framing by default), nosniff and
        no referrer; an unknown file is a 404."""
        for path, kind in [("/portal", "text/html"), ("/portal/portal.js", "text/javascript"),
                           ("/portal/portal.css", "text/css")]:  # fmt: skip
            response = httpx.get(portal.url + path, timeout=10)
            assert response.status_code == 200, path
            assert response.headers["content-type"].startswith(kind)
            csp = response.headers["content-security-policy"]
            assert "default-src 'none'" in csp
            assert "script-src 'self'" in csp
            assert "unsafe" not in csp
            assert "frame-ancestors 'none'" in csp
            assert response.headers["x-content-type-options"] == "nosniff"
            assert response.headers["referrer-policy"] == "no-referrer"
        assert httpx.get(portal.url + "/portal/secrets.txt", timeout=10).status_code == 404


class TestWhatTheCustomerSees:
    """With a good token, every number on the page is the API's for that token."""

    def test_plan_usage_credits_invoices_and_upcoming(self, page: Page, portal: Portal) -> None:
        """The plan, each meter's used and limit, the daily numbers, the credit balance and
        expiry, the invoices with their PDF links and the upcoming total are what the API
        answers the same token; the token is gone from the address bar."""
        page.set_viewport_size(DESKTOP)
        open_portal(page, portal, portal.token)
        assert page.evaluate("document.body.dataset.state") == "ready"
        assert page.evaluate("location.hash") == ""
        base = f"/v1/accounts/{ACCOUNT}"
        account, usage = portal.api(base), portal.api(f"{base}/usage?granularity=day")
        grants, upcoming = portal.api(f"{base}/credits"), portal.api(f"{base}/invoices/upcoming")
        invoices = portal.api(f"{base}/invoices?limit=12")["invoices"]

        assert page.inner_text("#plan-name") == account["plan"] == "PLUS"
        assert page.inner_text("#account-id") == ACCOUNT
        for meter in account["meters"]:
            card = page.locator(f'article[data-meter="{meter["meter"]}"]')
            assert card.locator(".used").inner_text() == meter["used"]
            if meter["limit"] is not None:
                assert card.locator(".limit").inner_text() == meter["limit"]
                bar = card.get_by_role("progressbar")
                now = float(bar.get_attribute("aria-valuenow") or "nan")
                assert now == min(float(meter["used_percent"]), 100)
            daily = {b["quantity"] for m in usage["meters"] if m["meter"] == meter["meter"]
                     for b in m["buckets"] if b["quantity"] != "0"}  # fmt: skip
            assert set(texts(card.page, f'article[data-meter="{meter["meter"]}"] .daily td.num')) \
                == daily  # fmt: skip
        tokens = page.locator('article[data-meter="tokens"]')
        assert tokens.locator(".used").inner_text() == "551750"
        assert tokens.locator("svg rect.day, svg rect.future").count() == 30

        assert page.inner_text("#credit-balance").split()[0] == grants["balance"] == "250.5"
        (grant,) = grants["grants"]
        row = page.locator(f'tr[data-grant="{grant["grant_id"]}"]')
        assert row.locator(".remaining").inner_text() == grant["remaining"]
        assert row.locator("time").get_attribute("datetime") == grant["expires_at"]

        assert page.inner_text("#upcoming-total") == f"{upcoming['total']} USD" == "11.00 USD"
        rows = page.locator("table.invoices tbody tr")
        assert [r.get_attribute("data-invoice") for r in rows.all()] == [i["id"] for i in invoices]
        assert [a.get_attribute("href") for a in page.locator("a.pdf").all()] == [
            f"/v1/invoices/{i['id']}/pdf" for i in invoices
        ]
        assert texts(page, "table.invoices td.num") == [f"{i['total']} USD" for i in invoices]
        shoot(page, portal, "portal-desktop")

    def test_tables_and_bars_speak_to_assistive_technology(
        self, page: Page, portal: Portal
    ) -> None:
        """Every table has a caption and scoped headers, every bar says its value, the
        chart has a text summary, and Tab reaches the PDF links."""
        open_portal(page, portal, portal.token)
        for table in page.locator("table").all():
            assert table.locator("caption").count() == 1
            assert all(th.get_attribute("scope") in {"col", "row"}
                       for th in table.locator("th").all())  # fmt: skip
        for bar in page.get_by_role("progressbar").all():
            for name in ("aria-valuenow", "aria-valuemin", "aria-valuemax", "aria-valuetext"):
                assert bar.get_attribute(name), name
        for chart in page.locator("svg.chart").all():
            label = chart.get_attribute("aria-labelledby")
            assert page.inner_text(f"#{label}").strip()
        reached = set()
        for _ in range(40):
            page.keyboard.press("Tab")
            reached.add(page.evaluate("document.activeElement.className"))
        assert "pdf" in reached

    def test_fits_a_phone(self, page: Page, portal: Portal) -> None:
        """At 390 and 360 pixels wide nothing scrolls sideways."""
        for width in (390, 360):
            page.set_viewport_size({"width": width, "height": PHONE["height"]})
            open_portal(page, portal, portal.token)
            wide = page.evaluate("document.documentElement.scrollWidth")
            assert wide <= width, (width, wide)
        page.set_viewport_size(PHONE)
        open_portal(page, portal, portal.token)
        shoot(page, portal, "portal-phone")

    def test_a_pdf_is_fetched_with_the_token_and_opened(self, page: Page, portal: Portal) -> None:
        """Following an invoice's PDF link fetches it with the token as a bearer header
        (never in the URL) and opens it from memory in a new tab."""
        seen: list[dict[str, Any]] = []

        def pdf(route: Route, request: Request) -> None:
            seen.append({"url": request.url, "auth": request.headers.get("authorization")})
            route.fulfill(status=200, content_type="application/pdf", body=b"%PDF-1.4\n%%EOF\n")

        page.route("**/v1/invoices/*/pdf", pdf)
        open_portal(page, portal, portal.token)
        first = page.locator("a.pdf").first
        with page.expect_popup() as popup:
            first.click()
        deadline = time.monotonic() + 10
        while not popup.value.url.startswith("blob:") and time.monotonic() < deadline:
            page.wait_for_timeout(50)
        assert popup.value.url.startswith("blob:")
        popup.value.close()
        assert seen == [
            {"url": portal.url + first.get_attribute("href"), "auth": f"Bearer {portal.token}"}
        ]


class TestBadLinks:
    """A link that can't be used says so in words a customer understands."""

    def test_an_expired_link(self, page: Page, portal: Portal) -> None:
        """A genuine token past its time: the expiry message, and nothing else shown."""
        open_portal(page, portal, portal.expired_token)
        assert page.inner_text("#problem-title") == EXPIRED
        assert page.is_hidden("#content")
        assert page.evaluate("location.hash") == ""
        page.set_viewport_size(PHONE)
        shoot(page, portal, "portal-expired")

    @pytest.mark.parametrize(
        "which", ["foreign_token", "unknown_account_token", "bwp_garbage.x", "bwk_a_b", "x"]
    )
    def test_an_invalid_link(self, page: Page, portal: Portal, which: str) -> None:
        """Another secret's token, a token for no account, garbage or an API key: the
        invalid-link message."""
        open_portal(page, portal, getattr(portal, which, which))
        assert page.inner_text("#problem-title") == INVALID
        assert page.is_hidden("#content")

    def test_no_token_at_all(self, page: Page, portal: Portal) -> None:
        """Without a fragment: a message saying to open billing from the product."""
        open_portal(page, portal, None)
        assert page.inner_text("#problem-title") == "No billing link"
        assert page.locator("#problem").get_attribute("role") == "alert"

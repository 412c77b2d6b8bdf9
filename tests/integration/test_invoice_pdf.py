"""Invoice PDFs from stored invoices on real PostgreSQL: every line, tier and total is on
the page (read back with pdftotext), amounts in each currency's own minor unit with its
code, the status stamped, the seller from the settings, the same bytes every time; and the
HTTP route and the CLI command that serve them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from sqlalchemy.ext.asyncio import AsyncEngine

from billing_worker.adapters.invoice_pdf import Seller, money, render_invoice_pdf
from billing_worker.adapters.postgres.database import create_engine_for
from billing_worker.adapters.postgres.invoice_document import invoice_document
from billing_worker.adapters.postgres.pricebooks import register_pricebook
from billing_worker.adapters.postgres.unit_of_work import PostgresUnitOfWork
from billing_worker.adapters.pricebook_file import parse_pricebook
from billing_worker.domain.pricebook import PriceBook
from billing_worker.domain.usage import UsageRecord
from billing_worker.service.accounts import change_plan
from billing_worker.service.invoices import close_due_periods, move_invoice
from billing_worker.service.record_usage import record_usage_batch
from tests.clock import child_env

NOV = datetime(2026, 11, 1, tzinfo=UTC)
DEC = datetime(2026, 12, 1, tzinfo=UTC)
ACCOUNT = "acct_pdf"
INVOICE = f"inv-202611-{ACCOUNT}"
SELLER = Seller("Example Platform GmbH", ("Hauptstrasse 1", "10115 Berlin"), "DE123456789")
ARTIFACTS = Path(os.environ.get("BILLING_TEST_ARTIFACTS", "test-artifacts"))
BOOK_TOML = """
version = "pdf-{currency}"
currency = "{currency}"
default_plan = "PLUS"

[meters.websites]
event_types = ["site.built"]
unit = "website"

[meters.tokens]
event_types = ["chat.tokens"]
unit = "token"

[meters.api_calls]
event_types = ["api.call"]

[plans.PLUS]
price = "{fee}"
credit_grant = 100
[plans.PLUS.meters.tokens]
included = 1000

[prices.websites]
model = "per_unit"
unit_price = "{site}"

[prices.tokens]
model = "graduated"
tiers = [{{ up_to = 1000, unit_price = "{tier1}" }}, {{ unit_price = "{tier2}" }}]

[credit_costs]
api_calls = 10
"""


def book_in(currency: str) -> PriceBook:
    """A book whose amounts come out whole in yen and with three places in dinars."""
    figures = {
        "usd": {"fee": "9.90", "site": "0.50", "tier1": "0.01", "tier2": "0.005"},
        "jpy": {"fee": "1500", "site": "75", "tier1": "2", "tier2": "1"},
        "bhd": {"fee": "3.750", "site": "0.125", "tier1": "0.002", "tier2": "0.001"},
    }[currency]
    return parse_pricebook(BOOK_TOML.format(currency=currency, **figures), f"{currency}.toml")


def pdftotext(pdf: bytes) -> str:
    """The PDF's text as poppler reads it, in the order it is drawn (``-raw``: a table
    row's cells, and a wrapped cell's lines, one after another)."""
    tool = shutil.which("pdftotext")
    assert tool, "pdftotext (Debian's poppler-utils) is needed; .ci/run installs it"
    args = [tool, "-raw", "-", "-"]
    done = subprocess.run(args, input=pdf, capture_output=True, check=True)
    return done.stdout.decode()


def a_logo() -> Path:
    """A small PNG to print as the seller's logo."""
    logo = ARTIFACTS / "logo.png"
    logo.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (120, 40), (30, 90, 160)).save(logo)
    return logo


def words(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    eng = create_engine_for(database_url, pool_size=2)
    yield eng
    await eng.dispose()


async def closed_november(engine: AsyncEngine, book: PriceBook) -> dict[str, Any]:
    """acct_pdf on PLUS: 3 websites, 2,500 tokens (1,000 included, then two tiers) and 4
    api calls paid by credits, in November; closed; its invoice document."""
    await register_pricebook(engine, book)
    uow = lambda: PostgresUnitOfWork(engine)  # noqa: E731
    await change_plan(uow, book, account=ACCOUNT, plan="PLUS", change_id="p", now=NOV)
    at = NOV + timedelta(days=3)
    records = [
        *(UsageRecord("s", f"w{i}", "site.built", ACCOUNT, at, Decimal(1)) for i in range(3)),
        UsageRecord("s", "t1", "chat.tokens", ACCOUNT, at, Decimal(2500)),
        *(UsageRecord("s", f"a{i}", "api.call", ACCOUNT, at, Decimal(1)) for i in range(4)),
    ]
    await record_usage_batch(uow, book, records, clock=lambda: at)
    await close_due_periods(uow, book, as_of=DEC + timedelta(hours=2), grace=timedelta(hours=1))
    async with engine.connect() as conn:
        document = await invoice_document(conn, book, INVOICE, explain=False)
    assert document is not None
    return document


async def test_every_line_tier_and_total_is_on_the_page(engine: AsyncEngine) -> None:
    """Each line's description, price and amount, the token tiers, the credits applied,
    the subtotal and total, the seller block and the invoice facts are all in the text."""
    document = await closed_november(engine, book_in("usd"))
    text = words(pdftotext(render_invoice_pdf(document, SELLER)))
    for line in document["lines"]:
        assert words(line["description"]) in text, line["description"]
        assert words(f"{line['price']} {money(line['amount'], 'usd')}") in text, line
    assert "tier 1: 1,000 units at 0.01 = 10.00" in text
    assert "tier 2: 500 units at 0.005 = 2.500" in text
    assert f"Subtotal {money(document['subtotal'], 'usd')}" in text
    assert f"Total (USD) {money(document['total'], 'usd')}" in text
    assert "Prepaid credits applied 40" in text
    assert "Example Platform GmbH Hauptstrasse 1 10115 Berlin Tax ID: DE123456789" in text
    assert f"Invoice {INVOICE} Issued 2026-12-01" in text  # closed at 02:00 on Dec 1
    assert "Period 2026-11-01 to 2026-12-01" in text
    assert f"Account {ACCOUNT}" in text
    assert "VOID" not in text  # an open invoice carries no stamp


@pytest.mark.parametrize(
    ("currency", "total"), [("usd", "USD 23.90"), ("jpy", "JPY 4,225"), ("bhd", "BHD 6.625")]
)
async def test_amounts_are_in_the_currencys_minor_unit(
    engine: AsyncEngine, currency: str, total: str
) -> None:
    """Fee + 3 websites + 1,500 billable tokens in two tiers (9.90 + 1.50 + 12.50; 1,500 +
    225 + 2,500; 3.750 + 0.375 + 2.500): 2 places in dollars, none in yen, 3 in dinars,
    each with its code and never another currency's symbol."""
    document = await closed_november(engine, book_in(currency))
    text = words(pdftotext(render_invoice_pdf(document, SELLER)))
    assert f"Total ({currency.upper()}) {total}" in text
    assert "$" not in text
    assert "¥" not in text


async def test_a_void_invoice_is_stamped_void(engine: AsyncEngine) -> None:
    """Voided, the same invoice is stamped VOID on its first page and says so."""
    book = book_in("usd")
    await closed_november(engine, book)
    uow = lambda: PostgresUnitOfWork(engine)  # noqa: E731
    await move_invoice(uow, book, invoice_id=INVOICE, status="void", cause="t", now=DEC)
    async with engine.connect() as conn:
        document = await invoice_document(conn, book, INVOICE, explain=False)
    assert document is not None
    text = words(pdftotext(render_invoice_pdf(document, SELLER)))
    assert "VOID" in text
    assert "Status void" in text


async def test_the_same_invoice_gives_the_same_bytes(engine: AsyncEngine) -> None:
    """Two renders, with a logo, are byte for byte equal; the creation date is the
    invoice's close, not the time of rendering."""
    document = await closed_november(engine, book_in("usd"))
    logo = a_logo()
    seller = Seller(SELLER.name, SELLER.address, SELLER.tax_id, logo)
    first = render_invoice_pdf(document, seller)
    assert first == render_invoice_pdf(dict(document), seller)
    closed = datetime.fromisoformat(document["closed_at"]).astimezone(UTC)
    assert f"/CreationDate (D:{closed:%Y%m%d%H%M%S}".encode() in first


async def test_non_latin_text_never_breaks_the_pdf(engine: AsyncEngine) -> None:
    """An account name in another script renders (as ?), dashes and arrows as ASCII."""
    document = await closed_november(engine, book_in("usd"))
    document = {**document, "account": "acct_日本 — café →"}
    text = pdftotext(render_invoice_pdf(document, SELLER))
    assert "Account acct_?? - café ->" in text


def picture_of_page_one(pdf_bytes: bytes) -> Path:
    """Page 1 as a PNG under the test artifacts (and the PDF beside it), by pdftoppm."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    pdf = ARTIFACTS / "invoice.pdf"
    pdf.write_bytes(pdf_bytes)
    tool = shutil.which("pdftoppm")
    assert tool, "pdftoppm (Debian's poppler-utils) is needed; .ci/run installs it"
    subprocess.run(
        [tool, "-png", "-r", "80", "-f", "1", "-l", "1", "-singlefile", pdf, ARTIFACTS / "invoice"],
        check=True,
    )
    return ARTIFACTS / "invoice.png"


async def test_page_one_renders_to_a_picture(engine: AsyncEngine) -> None:
    """pdftoppm turns page 1 into a PNG (kept under the test artifacts to look at)."""
    document = await closed_november(engine, book_in("usd"))
    with Image.open(picture_of_page_one(render_invoice_pdf(document, SELLER))) as page:
        assert page.size == (662, 936)  # A4 (210 x 297 mm) at 80 dpi
        assert page.getextrema() != ((255, 255), (255, 255), (255, 255))  # not blank


async def test_the_cli_writes_the_pdf_and_nothing_on_stdout(
    engine: AsyncEngine, database_url: str, tmp_path: Path
) -> None:
    """`invoice pdf ID -o FILE` writes the PDF and says so on stderr; an unknown id exits
    1 naming it."""
    await closed_november(engine, book_in("usd"))
    out = tmp_path / "inv.pdf"

    def cli(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "billing_worker", "invoice", "pdf", *argv],
            env=child_env(BILLING_DATABASE_URL=database_url, BILLING_SELLER_NAME="Seller Ltd"),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    done = cli(INVOICE, "-o", str(out))
    assert (done.returncode, done.stdout) == (0, ""), done.stderr
    assert f"wrote {out}" in done.stderr
    assert out.read_bytes().startswith(b"%PDF-")
    assert "Seller Ltd" in pdftotext(out.read_bytes())
    missing = cli("inv-nope", "-o", str(tmp_path / "x.pdf"))
    assert missing.returncode == 1
    assert "no invoice 'inv-nope'" in missing.stderr

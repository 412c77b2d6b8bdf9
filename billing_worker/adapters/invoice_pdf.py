"""An invoice as a PDF, rendered in-process with fpdf2 from the invoice document (the one
``invoice show --json`` prints): seller, bill-to, lines with their tiers, credits,
adjustments, totals, who bills what, and the status stamped on it.

The same invoice and seller give the same bytes, always: the document's creation date is
the invoice's ``closed_at``, the producer is fixed, nothing else varies. Text is set in
the PDF core font Helvetica (no font file to ship); characters outside Latin-1 are
written as close ASCII where there is one (dashes, arrows, quotes) and ``?`` otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fpdf import FPDF
from fpdf.fonts import FontFace

from billing_worker.domain.rating import minor_unit_places

if TYPE_CHECKING:
    from billing_worker.config import Settings

PRODUCER = "billing-worker"
STAMPS = {
    "void": ("VOID", (190, 30, 45)),
    "uncollectible": ("UNCOLLECTIBLE", (190, 30, 45)),
    "draft": ("DRAFT", (120, 120, 120)),
    "paid": ("PAID", (20, 130, 70)),
}
"""Statuses written across the page (an open invoice carries none)."""
ASCII = str.maketrans(
    {
        "\u2014": "-",  # em dash
        "\u2013": "-",  # en dash
        "\u2192": "->",  # arrow
        "\u2026": "...",
        "\u2018": "'",
        "\u2019": "'",
        "\u201c": '"',
        "\u201d": '"',
        "\u00d7": "x",  # multiplication sign (in Latin-1, but read better as x)
    }
)
INK, MUTED, RULE = (30, 30, 30), (110, 110, 110), (200, 200, 200)
COLUMNS = (104, 44, 26)  # description, price, amount (mm; the A4 page less its margins)


@dataclass(frozen=True, slots=True)
class Seller:
    """Who issues the invoices (``BILLING_SELLER_*``)."""

    name: str = ""
    address: tuple[str, ...] = ()
    tax_id: str = ""
    logo: Path | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> Seller:
        """The seller the settings name."""
        return cls(
            settings.seller_name,
            settings.seller_address_lines,
            settings.seller_tax_id,
            settings.seller_logo,
        )


def latin(text: object) -> str:
    """``text`` as the core font can write it."""
    return str(text).translate(ASCII).encode("latin-1", "replace").decode("latin-1")


def money(amount: object, currency: str) -> str:
    """``USD 1,234.50``: the currency's own minor unit (0 places for JPY, 3 for BHD), its
    code, never a symbol."""
    places = minor_unit_places(currency)
    value = Decimal(str(amount)).quantize(Decimal(1).scaleb(-places))
    return f"{currency.upper()} {value:,.{places}f}"


def quantity(value: object) -> str:
    """A quantity with thousands separators, exact (no rounding, no exponent)."""
    number = Decimal(str(value))
    whole, _, fraction = f"{number:f}".partition(".")
    sign = "-" if whole.startswith("-") else ""
    grouped = f"{int(whole.lstrip('-') or 0):,}"
    return sign + grouped + (f".{fraction}" if fraction else "")


def render_invoice_pdf(
    document: Mapping[str, Any], seller: Seller, *, customer: str | None = None
) -> bytes:
    """The PDF of ``document`` (``invoice_document()``'s output), billed to its account and
    ``customer``, the account's Stripe customer when it has one."""
    pdf = _Page(document)
    pdf.add_page()
    _header(pdf, document, seller, customer)
    _lines(pdf, document)
    _totals(pdf, document)
    pdf.page = 1  # the stamp goes over the first page, on top of everything
    _stamp(pdf, str(document["status"]))
    return bytes(pdf.output())


class _Page(FPDF):
    """A4 portrait, fixed metadata, a footer naming the invoice and page."""

    def __init__(self, document: Mapping[str, Any]) -> None:
        super().__init__(orientation="portrait", unit="mm", format="A4")
        self.document = document
        self.set_margins(18, 18, 18)
        self.set_auto_page_break(auto=True, margin=20)
        self.set_creation_date(datetime.fromisoformat(str(document["closed_at"])))
        self.set_producer(PRODUCER)
        self.set_creator(PRODUCER)
        self.set_title(latin(f"Invoice {document['invoice_id']}"))
        self.set_font("helvetica", size=9)

    def footer(self) -> None:
        self.set_y(-14)
        self.set_font("helvetica", size=7)
        self.set_text_color(*MUTED)
        words = (
            f"Invoice {self.document['invoice_id']} - price book "
            f"{self.document['pricebook_version']} - page {self.page_no()}/{{nb}}"
        )
        self.cell(0, 5, latin(words), align="C")


def _header(pdf: _Page, document: Mapping[str, Any], seller: Seller, customer: str | None) -> None:
    top = pdf.get_y()
    if seller.logo is not None:
        pdf.image(str(seller.logo), x=pdf.l_margin, y=top, h=14)
        pdf.set_y(top + 16)
    pdf.set_text_color(*INK)
    pdf.set_font("helvetica", style="B", size=12)
    pdf.cell(90, 6, latin(seller.name or "(seller not configured)"), new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("helvetica", size=9)
    for line in seller.address:
        pdf.cell(90, 4.5, latin(line), new_x="LMARGIN", new_y="NEXT")
    if seller.tax_id:
        pdf.cell(90, 4.5, latin(f"Tax ID: {seller.tax_id}"), new_x="LMARGIN", new_y="NEXT")
    below_seller = pdf.get_y()
    period = document["period"]
    facts = [
        *([("Number", document["number"])] if document.get("number") else []),
        ("Invoice", document["invoice_id"]),
        ("Issued", str(document["closed_at"])[:10]),
        ("Period", f"{period['start'][:10]} to {period['end'][:10]}"),
        ("Status", document["status"]),
        ("Plan", document["plan"]),
    ]
    pdf.set_xy(118, top)
    pdf.set_font("helvetica", style="B", size=20)
    pdf.cell(74, 10, "INVOICE", align="R", new_x="LEFT", new_y="NEXT")
    pdf.set_font("helvetica", size=9)
    for label, value in facts:
        pdf.set_x(118)
        pdf.set_text_color(*MUTED)
        pdf.cell(22, 5, label)
        pdf.set_text_color(*INK)
        pdf.cell(52, 5, latin(value), align="R", new_x="LEFT", new_y="NEXT")
    pdf.set_y(max(below_seller, pdf.get_y()) + 6)
    pdf.set_font("helvetica", style="B", size=9)
    pdf.cell(0, 5, "Bill to", new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("helvetica", size=9)
    pdf.cell(0, 5, latin(f"Account {document['account']}"), new_x="LMARGIN", new_y="NEXT")
    if customer:
        pdf.cell(0, 5, latin(f"Stripe customer {customer}"), new_x="LMARGIN", new_y="NEXT")
    if document.get("stripe_invoice_id"):
        pdf.set_text_color(*MUTED)
        words = f"Charged through Stripe invoice {document['stripe_invoice_id']}"
        pdf.cell(0, 5, latin(words), new_x="LMARGIN", new_y="NEXT")
        pdf.set_text_color(*INK)
    pdf.ln(4)


def _stamp(pdf: _Page, status: str) -> None:
    """The status across the top of the page, large, for anything but ``open``."""
    if status not in STAMPS:
        return
    words, color = STAMPS[status]
    with pdf.local_context():
        pdf.set_text_color(*color)
        pdf.set_draw_color(*color)
        pdf.set_line_width(0.8)
        pdf.set_font("helvetica", style="B", size=22)
        width = pdf.get_string_width(words) + 10
        with pdf.rotation(12, x=88, y=32):
            pdf.set_xy(88 - width / 2, 26)
            pdf.cell(width, 12, words, border=1, align="C")


def _lines(pdf: _Page, document: Mapping[str, Any]) -> None:
    currency = str(document["currency"])
    heading = FontFace(emphasis="BOLD", color=INK, fill_color=(242, 242, 242))
    with pdf.table(
        col_widths=COLUMNS,
        text_align=("LEFT", "LEFT", "RIGHT"),
        borders_layout="HORIZONTAL_LINES",
        headings_style=heading,
        line_height=5,
        padding=1.2,
        first_row_as_headings=True,
    ) as table:
        table.row(("Description", "Price", "Amount"))
        for line in document["lines"]:
            row = table.row()
            row.cell(latin(_description(line)))
            row.cell(latin(line.get("price") or ""))
            row.cell(money(line["amount"], currency))
            for tier in _tiers(line):
                sub = table.row()
                sub.cell(latin(tier), style=FontFace(size_pt=7.5, color=MUTED))
                sub.cell("")
                sub.cell("")
    pdf.ln(3)


def _description(line: Mapping[str, Any]) -> str:
    words = str(line["description"])
    refers = line.get("refers_to_start")
    if line.get("kind") == "adjustment" and refers and str(refers)[:10] not in words:
        words += f" (corrects the period from {str(refers)[:10]})"
    return words


def _tiers(line: Mapping[str, Any]) -> Sequence[str]:
    tiers = line.get("tiers") or []
    if len(tiers) < 2:
        return []
    return [
        f"    tier {int(t['tier']) + 1}: {quantity(t['units'])} units at {t['unit_price']}"
        + (f" + {t['flat_fee']} flat" if Decimal(str(t.get("flat_fee") or 0)) else "")
        + f" = {t['amount']}"
        for t in tiers
    ]


def _totals(pdf: _Page, document: Mapping[str, Any]) -> None:
    currency = str(document["currency"])
    rows: list[tuple[str, str, bool]] = [("Subtotal", money(document["subtotal"], currency), False)]
    if Decimal(str(document["credits_applied"])):
        rows.append(("Prepaid credits applied", quantity(document["credits_applied"]), False))
    if Decimal(str(document.get("credits_shortfall") or 0)):
        rows.append(
            ("Credits not covered by a grant", quantity(document["credits_shortfall"]), False)
        )
    rows.append((f"Total ({currency.upper()})", money(document["total"], currency), True))
    by_subscription = Decimal(str(document.get("billed_by_subscription") or 0))
    if by_subscription:
        rows.append(("  billed by Stripe subscription", money(by_subscription, currency), False))
        rows.append(("  billed by us", money(document["billed_by_worker"], currency), False))
    if document.get("tax") is not None:
        rows.append(("Tax computed by Stripe", money(document["tax"], currency), False))
    for label, value, strong in rows:
        pdf.set_x(pdf.l_margin + COLUMNS[0])
        pdf.set_font("helvetica", style="B" if strong else "", size=10 if strong else 9)
        pdf.cell(COLUMNS[1], 6, latin(label))
        pdf.cell(COLUMNS[2], 6, latin(value), align="R", new_x="LMARGIN", new_y="NEXT")

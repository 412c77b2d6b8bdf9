"""Every projection of the append-only ledgers, recomputed and compared with what is stored.

The ledgers are the truth; these tables only cache what follows from them:

- ``usage_aggregates``: each (account, meter, period) total, folded from ``usage_ledger``
  by the total's aggregation (``sum``/``count`` add, ``max`` keeps the largest, ``latest``
  the value with the latest event time, ties to the entry recorded last, ``unique_count``
  counts the distinct values below), with its event count and period end;
- ``meter_unique_values``: the distinct values of a ``unique_count`` meter's field, read
  from each ledger row's dimensions with the meter as the row's price-book version
  defined it;
- ``credit_grants.remaining``: the sum of the grant's ``credit_ledger`` entries;
- ``invoices``: subtotal and total are the sum of the invoice's lines, the status is the
  last ``invoice_status`` move in ``account_ledger`` (until one, as issued: ``open``, or
  ``draft`` when held for review);
- ``accounts``: plan, status and ``plan_changed_at`` of the last ``plan_changed`` entry,
  for accounts that have one.

Each check is one SQL statement returning only the rows that differ, so a verify of a
large ledger is a few scans done by the server. The checks are built as SQLAlchemy text
clauses with their parameters bound, so the test suite runs the very same statements on
its plain psycopg connections (``tests/ledger_checks.py``).

A distinct value is stored as the JSON text the worker wrote (``json.dumps`` of the
value); the ledger keeps dimensions as ``jsonb``, which spells numbers its own way
(``1e-05`` becomes ``0.00001``), so stored numbers are compared in ``jsonb`` spelling.
``jsonb`` can't tell a float such as ``1e+16`` from the integer it equals: a missing value
of that kind is restored as the integer (beyond 64 bits, where the contract has no
integers, as the float).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

import orjson
from sqlalchemy import TextClause, text
from sqlalchemy.ext.asyncio import AsyncConnection

from billing_worker.adapters.postgres.projection_sql import (
    ACCOUNT_DIFFERENCES,
    AGGREGATE_DIFFERENCES,
    CHECKED_ROWS,
    GRANT_DIFFERENCES,
    INVOICE_DIFFERENCES,
    PRICEBOOK_SOURCES,
    UNIQUE_VALUE_DIFFERENCES,
)
from billing_worker.adapters.pricebook_file import PriceBookError, parse_pricebook
from billing_worker.domain.pricebook import PriceBook
from schemas.events import format_decimal

USAGE_AGGREGATES = "usage_aggregates"
UNIQUE_VALUES = "meter_unique_values"
CREDIT_GRANTS = "credit_grants"
INVOICES = "invoices"
ACCOUNTS = "accounts"
PROJECTIONS = (USAGE_AGGREGATES, UNIQUE_VALUES, CREDIT_GRANTS, INVOICES, ACCOUNTS)

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
"""The integers a dimension may hold (``schemas.usage``); larger numbers arrive as floats."""


@dataclass(frozen=True, slots=True)
class MeterTerms:
    """How each price-book version defines each meter: its aggregation and, for
    ``unique_count``, the field whose values are counted."""

    rows: tuple[tuple[str, str, str, str | None], ...]
    """(version, meter, aggregation, value field)."""
    fallback: str | None = None
    """The version assumed for ledger rows that name none (written before versions)."""

    def as_json(self) -> str:
        """The rows as the JSON document the checks unpack."""
        return orjson.dumps([{"v": v, "m": m, "g": g, "f": f} for v, m, g, f in self.rows]).decode()


def meter_terms(sources: Iterable[Sequence[str]], current: PriceBook | None = None) -> MeterTerms:
    """Meter terms of every recorded price book (``(version, source)`` rows).

    A version whose stored text no longer parses is read as ``current`` defines its
    meters (the meters a ledger row names rarely change meaning); ``current`` also stands
    for ledger rows without a version.
    """
    rows: list[tuple[str, str, str, str | None]] = []
    versions = set()
    for version, source in sources:
        try:
            book: PriceBook | None = parse_pricebook(source, f"pricebook {version}")
        except PriceBookError:
            book = current
        if book is not None:
            versions.add(version)
            rows.extend(_terms_of(version, book))
    if current is not None and current.version not in versions:
        rows.extend(_terms_of(current.version, current))
    return MeterTerms(tuple(rows), current.version if current is not None else None)


def _terms_of(version: str, book: PriceBook) -> list[tuple[str, str, str, str | None]]:
    return [(version, m.name, m.aggregation.value, m.value_field) for m in book.meters.values()]


@dataclass(frozen=True, slots=True)
class Difference:
    """A projection row that is not what the ledger says: ``stored`` is None for a missing
    row, ``expected`` None for a row the ledger does not back."""

    projection: str
    account: str
    key: Mapping[str, Any]
    stored: Mapping[str, Any] | None
    expected: Mapping[str, Any] | None

    def changes(self) -> list[tuple[str, Any, Any]]:
        """(field, stored, expected) of each field that differs; ``row`` for a whole row."""
        if self.stored is None or self.expected is None:
            return [
                (
                    "row",
                    "missing" if self.stored is None else "present",
                    "present" if self.expected is not None else "absent",
                )
            ]
        return [
            (name, self.stored.get(name), wanted)
            for name, wanted in self.expected.items()
            if wanted is not None and self.stored.get(name) != wanted
        ]

    def as_json(self) -> dict[str, Any]:
        """JSON-ready: decimals and times as strings."""
        return {
            "projection": self.projection,
            "account": self.account,
            "key": {k: _plain(v) for k, v in self.key.items()},
            "stored": None
            if self.stored is None
            else {k: _plain(v) for k, v in self.stored.items()},
            "expected": (
                None if self.expected is None else {k: _plain(v) for k, v in self.expected.items()}
            ),
        }


def _plain(value: Any) -> Any:
    if isinstance(value, Decimal):
        return format_decimal(value)
    if isinstance(value, datetime):
        return value.isoformat()
    return value


Rows = Sequence[Sequence[Any]]


@dataclass(frozen=True, slots=True)
class Check:
    """One projection's check: a statement with its parameters bound, and how to read it."""

    projection: str
    statement: TextClause
    read: Callable[[Rows], list[Difference]] = field(repr=False)


def projection_checks(terms: MeterTerms, account: str | None = None) -> list[Check]:
    """Every projection's check, over all accounts or only ``account``."""
    params = {"account": account, "terms": terms.as_json(), "fallback": terms.fallback}

    def bound(sql: str, *names: str) -> TextClause:
        return text(sql).bindparams(**{name: params[name] for name in names})

    usage = ("account", "terms", "fallback")
    return [
        Check(USAGE_AGGREGATES, bound(AGGREGATE_DIFFERENCES, *usage), _aggregates),
        Check(UNIQUE_VALUES, bound(UNIQUE_VALUE_DIFFERENCES, *usage), _unique_values),
        Check(CREDIT_GRANTS, bound(GRANT_DIFFERENCES, "account"), _grants),
        Check(INVOICES, bound(INVOICE_DIFFERENCES, "account"), _invoices),
        Check(ACCOUNTS, bound(ACCOUNT_DIFFERENCES, "account"), _accounts),
    ]


def checked_rows_statement(account: str | None = None) -> TextClause:
    """Row counts of each projection table (what a verify looked at)."""
    return text(CHECKED_ROWS).bindparams(account=account)


def _aggregates(rows: Rows) -> list[Difference]:
    found = []
    for account, meter, start, has_row, g, end, q, n, at, backed, eg, eend, eq, en, eat in rows:
        found.append(
            Difference(
                USAGE_AGGREGATES,
                account,
                {"meter": meter, "period_start": start},
                {
                    "aggregation": g,
                    "period_end": end,
                    "quantity": q,
                    "event_count": n,
                    "latest_at": at,
                }
                if has_row
                else None,
                {
                    "aggregation": eg,
                    "period_end": eend,
                    "quantity": eq,
                    "event_count": en,
                    "latest_at": eat,
                }
                if backed
                else None,
            )
        )
    return found


def _unique_values(rows: Rows) -> list[Difference]:
    return [
        Difference(
            UNIQUE_VALUES,
            account,
            {
                "meter": meter,
                "period_start": start,
                "value": stored if stored is not None else worker_spelling(derived),
            },
            None if stored is None else {"value": stored},
            None if derived is None else {"value": derived},
        )
        for account, meter, start, stored, derived in rows
    ]


def _grants(rows: Rows) -> list[Difference]:
    return [
        Difference(
            CREDIT_GRANTS,
            account,
            {"grant_id": grant},
            {"remaining": stored},
            {"remaining": expected},
        )
        for account, grant, stored, expected in rows
    ]


def _invoices(rows: Rows) -> list[Difference]:
    return [
        Difference(
            INVOICES,
            account,
            {"invoice_id": invoice},
            {"subtotal": subtotal, "total": total, "status": status},
            {"subtotal": lines, "total": lines_total, "status": last_status},
        )
        for account, invoice, subtotal, total, status, lines, lines_total, last_status in rows
    ]


def _accounts(rows: Rows) -> list[Difference]:
    return [
        Difference(
            ACCOUNTS,
            account,
            {},
            {"plan": plan, "status": status, "plan_changed_at": changed_at},
            {"plan": last_plan, "status": last_status, "plan_changed_at": last_at},
        )
        for account, plan, status, changed_at, last_plan, last_status, last_at in rows
    ]


def worker_spelling(jsonb_text: str) -> str:
    """A distinct value as the worker stores it (``json.dumps`` of the parsed value, the
    way ``domain.usage`` keys unique values), from its ``jsonb`` text.

    ``jsonb`` writes a float without a fraction as an integer; beyond 64 bits, where the
    wire contract has no integers, it was a float and is spelled as one.
    """
    value = json.loads(jsonb_text)
    if type(value) is int and not INT64_MIN <= value <= INT64_MAX:
        value = float(value)
    return json.dumps(value, ensure_ascii=False)


async def load_meter_terms(conn: AsyncConnection, current: PriceBook | None) -> MeterTerms:
    """Meter terms of every price-book version the database recorded."""
    result = await conn.execute(text(PRICEBOOK_SOURCES))
    return meter_terms([(str(v), str(s)) for v, s in result], current)


async def find_differences(
    conn: AsyncConnection, terms: MeterTerms, account: str | None = None
) -> list[Difference]:
    """Every difference between the projections and the ledgers (of ``account``, if given).

    Run it in one REPEATABLE READ transaction for a consistent picture while the worker
    writes: a batch commits its ledger rows and totals together.
    """
    found: list[Difference] = []
    for check in projection_checks(terms, account):
        rows = (await conn.execute(check.statement)).all()
        found.extend(check.read([tuple(row) for row in rows]))
    return found


async def checked_rows(conn: AsyncConnection, account: str | None = None) -> dict[str, int]:
    """How many rows of each projection table there are (to say what was checked)."""
    row = (await conn.execute(checked_rows_statement(account))).one()
    names = (USAGE_AGGREGATES, UNIQUE_VALUES, CREDIT_GRANTS, INVOICES, ACCOUNTS)
    return {name: int(count) for name, count in zip(names, row, strict=True)}

"""What the commands share: output (tables, JSON, errors), argument types, the price book,
and the database a command may read or write. Imports no command."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any, TextIO

from billing_worker.config import Settings
from schemas.events import format_decimal

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from billing_worker.domain.pricebook import PriceBook


class CommandFailed(Exception):
    """A command cannot go on; ``main`` prints the message on stderr and exits ``code``."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


def fail(message: str, code: int = 2) -> int:
    """Say what is wrong on stderr; return ``code``."""
    sys.stderr.write(f"billing-worker: {message}\n")
    return code


def write_json(out: TextIO, report: object) -> None:
    """One indented JSON document; decimals in plain notation, times in RFC 3339."""
    out.write(json.dumps(report, indent=2, default=json_value) + "\n")


def json_value(value: object) -> object:
    """What ``json`` can't write itself: a decimal as a plain string (never ``5E-7``), a
    time in ISO 8601."""
    if isinstance(value, Decimal):
        return format_decimal(value)
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON")


def table(out: TextIO, headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """A plain aligned text table."""
    cells = [[str(c) for c in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    render: Callable[[list[str]], str] = lambda row: "  ".join(  # noqa: E731
        cell.ljust(width) for cell, width in zip(row, widths, strict=True)
    ).rstrip()
    out.write(render(cells[0]) + "\n")
    out.write("  ".join("-" * w for w in widths) + "\n")
    for row in cells[1:]:
        out.write(render(row) + "\n")


def iso_time(text: str) -> datetime:
    """An argparse type: an ISO 8601 time with a zone, in UTC."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {text!r}") from None
    if moment.tzinfo is None:
        raise argparse.ArgumentTypeError(f"give a time zone (e.g. Z or +00:00): {text!r}")
    return moment.astimezone(UTC)


def finite_decimal(text: str) -> Decimal:
    """An argparse type: a finite decimal number."""
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value.is_finite():
        raise argparse.ArgumentTypeError(f"not a finite number: {text!r}")
    return value


def event_loop_run(main: Coroutine[Any, Any, int]) -> int:
    """Run ``main`` on uvloop where it is installed, plain asyncio elsewhere."""
    try:
        import uvloop  # noqa: PLC0415 - optional speed-up
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


def configured_pricebook(settings: Settings) -> PriceBook:
    """The price book BILLING_PRICEBOOK names (or the built-in one)."""
    from billing_worker.adapters.pricebook_file import (  # noqa: PLC0415 - keep --help fast
        PriceBookError,
        load_pricebook,
    )

    try:
        return load_pricebook(settings.pricebook)
    except PriceBookError as exc:
        raise CommandFailed(f"invalid price book (BILLING_PRICEBOOK): {exc}") from exc


@asynccontextmanager
async def command_database(
    settings: Settings, book: PriceBook, *, writes: bool
) -> AsyncIterator[AsyncEngine]:
    """An engine on the configured database, for one command.

    The schema must be current: only ``run`` and ``migrate`` create or migrate the database,
    so a command against a database that is missing or behind says so and changes nothing.
    A command that ``writes`` records the price-book version its entries name first.
    """
    from sqlalchemy.exc import OperationalError  # noqa: PLC0415 - keep --help fast

    from billing_worker.adapters.postgres.database import (  # noqa: PLC0415
        SchemaNotReady,
        check_schema,
        create_engine_for,
        redacted,
    )
    from billing_worker.adapters.postgres.pricebooks import (  # noqa: PLC0415
        PriceBookVersionConflict,
        register_pricebook,
    )

    url = settings.database_url.get_secret_value()
    try:
        await asyncio.to_thread(check_schema, url)
    except SchemaNotReady as exc:
        raise CommandFailed(str(exc)) from exc
    except OperationalError as exc:
        first = str(exc.orig or exc).strip().splitlines()[0]
        raise CommandFailed(
            f"cannot reach the database (BILLING_DATABASE_URL={redacted(url)}): {first}"
        ) from exc
    engine = create_engine_for(url, pool_size=1)
    try:
        if writes:
            try:
                await register_pricebook(engine, book)
            except PriceBookVersionConflict as exc:
                raise CommandFailed(str(exc)) from exc
        yield engine
    finally:
        await engine.dispose()

"""Record the price-book version a worker runs with; refuse one version with two contents."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from billing_worker.domain.pricebook import PriceBook

REGISTER = text("""
    INSERT INTO pricebooks (version, digest, source) VALUES (:version, :digest, :source)
    ON CONFLICT (version) DO NOTHING
""")
DIGEST = text("SELECT digest FROM pricebooks WHERE version = :version")


class PriceBookVersionConflict(Exception):
    """The database knows this version with other content."""


async def register_pricebook(engine: AsyncEngine, book: PriceBook) -> None:
    """Store the book under its version (first time), or check it is the same book.

    Ledger rows name the version they were rated with, so a version must mean one
    content for ever: an edited file must carry a new version.
    """
    async with engine.begin() as conn:
        await conn.execute(
            REGISTER, {"version": book.version, "digest": book.digest, "source": book.source}
        )
        stored = (await conn.execute(DIGEST, {"version": book.version})).scalar_one()
    if stored != book.digest:
        raise PriceBookVersionConflict(
            f"price book version {book.version!r} is already recorded with different content "
            f"(sha256 {stored[:12]}..., this file {book.digest[:12]}...): give the edited price "
            "book a new `version`"
        )

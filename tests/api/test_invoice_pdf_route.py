"""GET /v1/invoices/{id}/pdf: the invoice's PDF for a read key and for its account's
portal token, a problem document otherwise."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from billing_worker.adapters.postgres.database import create_engine_for
from tests.api.conftest import Api
from tests.integration.test_invoice_pdf import ACCOUNT, INVOICE, book_in, closed_november


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    eng = create_engine_for(database_url, pool_size=2)
    yield eng
    await eng.dispose()


async def test_the_api_serves_the_pdf_to_its_readers_only(engine: AsyncEngine, api: Api) -> None:
    """GET /v1/invoices/{id}/pdf: the PDF inline for a read key and for the account's
    portal token; 404 for another account's token and for an unknown invoice."""
    await closed_november(engine, book_in("usd"))
    path = f"/v1/invoices/{INVOICE}/pdf"
    answer = await api.get(path)
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "application/pdf"
    assert answer.headers["content-disposition"] == f'inline; filename="{INVOICE}.pdf"'
    assert answer.content.startswith(b"%PDF-")
    for account, status in ((ACCOUNT, 200), ("acct_other", 404)):
        token = (await api.post(f"/v1/accounts/{account}/portal-tokens")).json()["token"]
        got = await api.client.get(path, headers={"Authorization": f"Bearer {token}"})
        assert got.status_code == status
    unknown = await api.get("/v1/invoices/inv-nope/pdf")
    assert (unknown.status_code, unknown.headers["content-type"]) == (
        404,
        "application/problem+json",
    )

"""Pushing invoices to Stripe with the official SDK, against a local fake of the Stripe API
(``tests/fake_stripe.py``) that honours idempotency keys the way Stripe documents them."""

from __future__ import annotations

import asyncio
import time
import traceback
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, Literal

import pytest
import stripe
from stripe.params import InvoiceCreateParams

from billing_worker.adapters.stripe_api import (
    PermanentStripeError,
    StripeInvoiceSync,
    StripeSyncError,
    SyncInvoice,
    SyncLine,
    TransientStripeError,
    finalize_key,
    invoice_key,
    line_key,
)
from tests.fake_stripe import FakeStripe

CUSTOMER = "cus_42"
INVOICE_ID = "inv_acct42_202611"
PERIOD_START = datetime(2026, 11, 1, tzinfo=UTC)
PERIOD_END = datetime(2026, 12, 1, tzinfo=UTC)
LINES = (
    SyncLine(1, "API calls: 12,000 x $0.001", 1200),
    SyncLine(2, "Storage: 35 GB-months", 350),
    SyncLine(3, "Goodwill credit", -100),
)

CREATE = "POST /v1/invoices"
LIST = "GET /v1/invoices"
ITEM = "POST /v1/invoiceitems"
FINALIZE = "POST /v1/invoices/{id}/finalize"


def make_invoice(
    invoice_id: str = INVOICE_ID,
    *,
    customer: str = CUSTOMER,
    lines: tuple[SyncLine, ...] = LINES,
) -> SyncInvoice:
    return SyncInvoice(invoice_id, customer, "usd", lines, PERIOD_START, PERIOD_END)


@pytest.fixture
def fake() -> Iterator[FakeStripe]:
    with FakeStripe(customers={CUSTOMER}) as server:
        yield server


@pytest.fixture
def sync(fake: FakeStripe) -> StripeInvoiceSync:
    return StripeInvoiceSync(fake.api_key, api_base=fake.base_url, timeout=5)


def ours(fake: FakeStripe, invoice_id: str = INVOICE_ID) -> list[dict[str, Any]]:
    """The fake's invoices that carry ``invoice_id`` in their metadata."""
    return [i for i in fake.invoices if i["metadata"].get("billing_invoice_id") == invoice_id]


def items_of(fake: FakeStripe, stripe_invoice_id: str) -> list[dict[str, Any]]:
    return [i for i in fake.invoice_items if i["invoice"] == stripe_invoice_id]


def post_keys(fake: FakeStripe) -> list[str | None]:
    """The idempotency key of every POST the fake received, in order."""
    return [r.idempotency_key for r in fake.requests if r.method == "POST"]


def expected_keys(invoice: SyncInvoice) -> set[str]:
    keys = {invoice_key(invoice.invoice_id), finalize_key(invoice.invoice_id)}
    return keys | {line_key(invoice.invoice_id, line.line_no) for line in invoice.billable_lines}


def assert_pushed_once(fake: FakeStripe, invoice: SyncInvoice, stripe_id: str) -> None:
    """Stripe holds exactly one finalized invoice for ``invoice``, ``stripe_id``, with one
    item per non-zero line, each with the right amount, currency and metadata."""
    found = ours(fake, invoice.invoice_id)
    assert [i["id"] for i in found] == [stripe_id]
    stripe_invoice = found[0]
    assert stripe_invoice["status"] == "open"
    assert stripe_invoice["customer"] == invoice.customer_id
    items = items_of(fake, stripe_id)
    by_line = Counter(int(i["metadata"]["line_no"]) for i in items)
    assert by_line == Counter(line.line_no for line in invoice.billable_lines), "each line once"
    for line in invoice.billable_lines:
        (item,) = [i for i in items if i["metadata"]["line_no"] == str(line.line_no)]
        assert item["amount"] == line.amount_minor
        assert item["currency"] == invoice.currency
        assert item["customer"] == invoice.customer_id
        assert item["description"] == line.description
        assert item["metadata"] == {
            "billing_invoice_id": invoice.invoice_id,
            "line_no": str(line.line_no),
        }
    total = sum(line.amount_minor for line in invoice.billable_lines)
    assert stripe_invoice["total"] == total
    assert stripe_invoice["amount_due"] == total


async def test_push_creates_one_finalized_invoice_with_one_item_per_nonzero_line(
    fake: FakeStripe, sync: StripeInvoiceSync
) -> None:
    """One push: a lookup, one draft (charge automatically, not auto-advanced, pending items
    excluded, our id in metadata, the period in the description), one item per line with
    its amount in minor units, then finalize with auto_advance; every write keyed by our ids."""
    invoice = make_invoice()

    stripe_id = await sync.push(invoice)

    assert stripe_id.startswith("in_")
    assert_pushed_once(fake, invoice, stripe_id)
    assert fake.invoices[0]["auto_advance"] is True  # set by the finalize, not the create
    (lookup,) = fake.requests_to(LIST)
    assert lookup.params == {"customer": CUSTOMER, "limit": "100"}
    (create,) = fake.requests_to(CREATE)
    assert create.params == {
        "customer": CUSTOMER,
        "currency": "usd",
        "collection_method": "charge_automatically",
        "auto_advance": "false",
        "pending_invoice_items_behavior": "exclude",
        "description": "Usage 2026-11-01 00:00 to 2026-12-01 00:00 UTC",
        "metadata": {"billing_invoice_id": INVOICE_ID},
    }
    item_posts = fake.requests_to(ITEM)
    assert [r.params["amount"] for r in item_posts] == ["1200", "350", "-100"]
    assert {r.params["invoice"] for r in item_posts} == {stripe_id}
    (finalize,) = fake.requests_to(FINALIZE)
    assert finalize.path == f"/v1/invoices/{stripe_id}/finalize"
    assert finalize.params == {"auto_advance": "true"}
    assert post_keys(fake) == [
        "billing-worker:inv_acct42_202611:invoice",
        "billing-worker:inv_acct42_202611:line:1",
        "billing-worker:inv_acct42_202611:line:2",
        "billing-worker:inv_acct42_202611:line:3",
        "billing-worker:inv_acct42_202611:finalize",
    ]
    assert [r.method for r in fake.requests] == ["GET", "POST", "POST", "POST", "POST", "POST"]


async def test_pushes_leave_no_connection_open(fake: FakeStripe, sync: StripeInvoiceSync) -> None:
    """The fake keeps connections alive like Stripe; after pushes, successful and failed,
    every client connection is closed (urllib3 would close a forgotten pool's sockets
    silently on garbage collection, so no ResourceWarning would reveal a leak)."""
    await sync.push(make_invoice())
    fake.fail(ITEM, when="after", status=None)
    with pytest.raises(TransientStripeError):
        await sync.push(make_invoice("inv_acct42_202612"))

    deadline = time.monotonic() + 5
    while fake.open_connections:
        assert time.monotonic() < deadline, f"{fake.open_connections} connections left open"
        await asyncio.sleep(0.01)


async def test_zero_amount_lines_are_skipped(fake: FakeStripe, sync: StripeInvoiceSync) -> None:
    """A line of zero gets no invoice item (and no request); negative adjustments do; an
    invoice whose lines are all zero is still created and finalized, empty (paid at 0)."""
    invoice = make_invoice(
        lines=(
            SyncLine(1, "Calls", 500),
            SyncLine(2, "Unused meter", 0),
            SyncLine(3, "Credit", -50),
        )
    )

    stripe_id = await sync.push(invoice)

    assert_pushed_once(fake, invoice, stripe_id)
    assert sorted(i["metadata"]["line_no"] for i in items_of(fake, stripe_id)) == ["1", "3"]
    assert line_key(INVOICE_ID, 2) not in post_keys(fake)

    empty = make_invoice("inv_acct42_202612", lines=(SyncLine(1, "Unused meter", 0),))
    empty_id = await sync.push(empty)
    assert items_of(fake, empty_id) == []
    (stripe_empty,) = ours(fake, "inv_acct42_202612")
    assert (stripe_empty["status"], stripe_empty["total"]) == ("paid", 0)


@pytest.mark.parametrize(
    ("route", "skip", "step"),
    [
        (CREATE, 0, "create invoice"),
        (ITEM, 1, "create item for line 2"),
        (FINALIZE, 0, "finalize invoice"),
    ],
)
async def test_lost_response_is_retried_with_the_same_keys_and_creates_nothing_twice(
    fake: FakeStripe, sync: StripeInvoiceSync, route: str, skip: int, step: str
) -> None:
    """Stripe performs a write but the answer is lost (the connection drops): the push is
    transient, naming the step; the retry sends only the same deterministic keys (never an
    SDK-made random one), finds what was done (by metadata, then the draft's items) instead
    of redoing it, and Stripe ends with ONE invoice holding each item once."""
    invoice = make_invoice()
    fake.fail(route, skip=skip, when="after", status=None)

    with pytest.raises(TransientStripeError) as failed:
        await sync.push(invoice)

    assert failed.value.step == step
    assert step in failed.value.detail
    assert "APIConnectionError" in failed.value.detail
    assert len(ours(fake)) == 1, "Stripe did the write whose answer was lost"

    stripe_id = await sync.push(invoice)

    assert_pushed_once(fake, invoice, stripe_id)
    keys = post_keys(fake)
    assert None not in keys
    assert set(keys) <= expected_keys(invoice)
    assert keys.count(invoice_key(INVOICE_ID)) == 1
    assert all(count == 1 for count in Counter(keys).values()), "no write was performed twice"


async def test_racing_pushes_share_the_key_and_make_one_invoice(
    fake: FakeStripe, sync: StripeInvoiceSync
) -> None:
    """Two workers push the same invoice at once: both miss it in the lookup, both create
    with the same key; the one arriving while the first is in flight is refused (409,
    transient), Stripe makes ONE invoice, and the loser's retry returns that invoice."""
    invoice = make_invoice()
    release = fake.hold(CREATE)

    first = asyncio.create_task(sync.push(invoice))
    second = asyncio.create_task(sync.push(invoice))
    deadline = time.monotonic() + 10
    # One create is parked in flight; wait until the other has been answered.
    while not any(r.status is not None for r in fake.requests_to(CREATE)):
        assert time.monotonic() < deadline, "the second create should be refused meanwhile"
        await asyncio.sleep(0.01)
    release.set()
    results = await asyncio.gather(first, second, return_exceptions=True)

    winners = [r for r in results if isinstance(r, str)]
    losers = [r for r in results if isinstance(r, BaseException)]
    assert len(winners) == 1
    assert len(losers) == 1
    assert isinstance(losers[0], TransientStripeError)
    assert losers[0].http_status == 409
    assert {r.idempotency_key for r in fake.requests_to(CREATE)} == {invoice_key(INVOICE_ID)}
    assert await sync.push(invoice) == winners[0]
    assert_pushed_once(fake, invoice, winners[0])


@pytest.mark.parametrize("when", ["before", "after"])
async def test_500_on_an_item_is_transient_and_the_next_push_completes(
    fake: FakeStripe, sync: StripeInvoiceSync, when: Literal["before", "after"]
) -> None:
    """A 500 on line 2's item is transient and names the step. Whether Stripe failed before
    adding it or after (then Stripe saves the 500 under the key and would replay it for a
    day), the next push completes: line 1 and line 2 are not added again, line 3 is added,
    the invoice is finalized, nothing is duplicated."""
    invoice = make_invoice()
    fake.fail(ITEM, skip=1, when=when, status=500)

    with pytest.raises(TransientStripeError) as failed:
        await sync.push(invoice)

    assert failed.value.step == "create item for line 2"
    assert failed.value.http_status == 500
    assert "create item for line 2" in failed.value.detail
    assert "HTTP 500" in failed.value.detail
    (draft,) = ours(fake)
    assert draft["status"] == "draft"
    expected_lines = {"1", "2"} if when == "after" else {"1"}
    assert {i["metadata"]["line_no"] for i in items_of(fake, draft["id"])} == expected_lines

    stripe_id = await sync.push(invoice)

    assert stripe_id == draft["id"]
    assert_pushed_once(fake, invoice, stripe_id)
    keys = post_keys(fake)
    assert keys.count(line_key(INVOICE_ID, 1)) == 1
    assert keys.count(line_key(INVOICE_ID, 2)) == (1 if when == "after" else 2)


@pytest.mark.parametrize(("status", "sdk_error"), [(429, "RateLimitError"), (503, "APIError")])
async def test_rate_limits_and_server_errors_are_transient(
    fake: FakeStripe, sync: StripeInvoiceSync, status: int, sdk_error: str
) -> None:
    """429 and 5xx (here on the lookup) are transient, with the status and the SDK's error
    named; nothing was written."""
    fake.fail(LIST, status=status)

    with pytest.raises(TransientStripeError) as failed:
        await sync.push(make_invoice())

    assert (failed.value.step, failed.value.http_status) == ("look up invoice", status)
    assert sdk_error in failed.value.detail
    assert fake.invoices == []


async def test_unknown_customer_is_permanent_and_names_the_step(
    fake: FakeStripe, sync: StripeInvoiceSync
) -> None:
    """A customer Stripe does not know is a permanent error (400 resource_missing) naming
    the step and the customer; nothing is created."""
    with pytest.raises(PermanentStripeError) as failed:
        await sync.push(make_invoice(customer="cus_missing"))

    error = failed.value
    assert error.step == "look up invoice"
    assert error.detail.startswith(f"Stripe look up invoice for {INVOICE_ID} failed")
    assert "No such customer: 'cus_missing'" in error.detail
    assert (error.http_status, error.code) == (400, "resource_missing")
    assert fake.invoices == []
    assert post_keys(fake) == []


@pytest.mark.parametrize("echoed", [False, True], ids=["masked-like-stripe", "echoed-whole"])
async def test_bad_api_key_is_permanent_and_never_shown(fake: FakeStripe, echoed: bool) -> None:
    """A wrong API key is permanent (401) and the key appears nowhere: not in the message,
    the detail, the repr, nor the formatted traceback, even when the server's error quotes
    it whole (the SDK's exception is then not chained)."""
    bad_key = "sk_test_wrong_0123456789abcdefXYZW"
    fake.echo_api_key_in_errors = echoed
    sync = StripeInvoiceSync(bad_key, api_base=fake.base_url, timeout=5)

    with pytest.raises(PermanentStripeError) as failed:
        await sync.push(make_invoice())

    error = failed.value
    assert (error.step, error.http_status) == ("look up invoice", 401)
    assert "AuthenticationError" in error.detail
    shown = [str(error), error.detail, repr(error), "".join(traceback.format_exception(error))]
    assert not any(bad_key in text for text in shown)
    assert bad_key not in repr(sync)
    assert error.__cause__ is None
    assert fake.invoices == []


async def test_after_keys_are_forgotten_a_finished_invoice_is_found_not_recreated(
    fake: FakeStripe, sync: StripeInvoiceSync
) -> None:
    """Past Stripe's 24 hours the keys are gone; pushing again finds the finalized invoice
    by metadata and returns it without a single write."""
    invoice = make_invoice()
    stripe_id = await sync.push(invoice)
    writes = len(post_keys(fake))
    fake.forget_idempotency_keys()

    assert await sync.push(invoice) == stripe_id

    assert len(post_keys(fake)) == writes
    assert_pushed_once(fake, invoice, stripe_id)


async def test_after_keys_are_forgotten_a_half_pushed_draft_is_completed_without_duplicates(
    fake: FakeStripe, sync: StripeInvoiceSync
) -> None:
    """A push that stopped after line 1, retried after the keys are forgotten: the draft is
    found by metadata, its items listed, line 1 (whose key Stripe no longer knows) is not
    added again, lines 2 and 3 are, and the same invoice is finalized."""
    invoice = make_invoice()
    fake.fail(ITEM, skip=1, when="before")
    with pytest.raises(TransientStripeError):
        await sync.push(invoice)
    (draft,) = ours(fake)
    fake.forget_idempotency_keys()

    stripe_id = await sync.push(invoice)

    assert stripe_id == draft["id"]
    assert_pushed_once(fake, invoice, stripe_id)
    assert post_keys(fake).count(line_key(INVOICE_ID, 1)) == 1
    assert post_keys(fake).count(invoice_key(INVOICE_ID)) == 1


async def test_lookup_pages_through_older_invoices(
    fake: FakeStripe, sync: StripeInvoiceSync
) -> None:
    """Our invoice sits behind more than a page (100) of the customer's newer invoices:
    the lookup follows the pages and finds it rather than creating another."""
    seeded = fake.seed_invoice(CUSTOMER, metadata={"billing_invoice_id": INVOICE_ID}, status="open")
    for n in range(150):
        fake.seed_invoice(CUSTOMER, metadata={"billing_invoice_id": f"inv_other_{n}"})

    assert await sync.push(make_invoice()) == seeded

    lookups = fake.requests_to(LIST)
    assert len(lookups) == 2
    assert "starting_after" in lookups[1].params
    assert post_keys(fake) == []


@pytest.mark.parametrize(
    ("statuses", "words"),
    [(("void",), "was voided"), (("draft", "open"), "several Stripe invoices")],
)
async def test_voided_or_duplicated_invoice_is_permanent(
    fake: FakeStripe, sync: StripeInvoiceSync, statuses: tuple[str, ...], words: str
) -> None:
    """A voided Stripe invoice carrying our id is not recreated, and two live ones are not
    chosen between: both are permanent, for a human; nothing is written."""
    for status in statuses:
        fake.seed_invoice(CUSTOMER, metadata={"billing_invoice_id": INVOICE_ID}, status=status)

    with pytest.raises(PermanentStripeError) as failed:
        await sync.push(make_invoice())

    assert failed.value.step == "look up invoice"
    assert words in failed.value.detail
    assert post_keys(fake) == []


async def test_draft_holding_a_line_with_another_amount_is_permanent(
    fake: FakeStripe, sync: StripeInvoiceSync
) -> None:
    """A found draft whose line 1 has another amount than ours (our invoice changed since)
    is neither topped up nor finalized: permanent, naming the line."""
    draft = fake.seed_invoice(CUSTOMER, metadata={"billing_invoice_id": INVOICE_ID})
    fake.seed_item(draft, 999, metadata={"billing_invoice_id": INVOICE_ID, "line_no": "1"})

    with pytest.raises(PermanentStripeError) as failed:
        await sync.push(make_invoice())

    assert failed.value.step == "create item for line 1"
    assert "another amount" in failed.value.detail
    assert post_keys(fake) == []
    assert ours(fake)[0]["status"] == "draft"


async def test_key_reused_with_other_parameters_is_transient_and_creates_nothing(
    fake: FakeStripe, sync: StripeInvoiceSync
) -> None:
    """Our create key already used (within the day) with other parameters and no metadata,
    so the lookup misses it: Stripe answers 400 idempotency_error, which the SDK raises as
    IdempotencyError and the push reports as transient; no invoice is added."""
    http_client = stripe.RequestsClient(timeout=5)
    client = stripe.StripeClient(
        fake.api_key,
        base_addresses={"api": fake.base_url},
        max_network_retries=0,
        http_client=http_client,
    )
    try:
        client.v1.invoices.create(
            params={"customer": CUSTOMER, "currency": "usd", "description": "older version"},
            options={"idempotency_key": invoice_key(INVOICE_ID)},
        )
    finally:
        http_client.close()  # type: ignore[no-untyped-call]

    with pytest.raises(TransientStripeError) as failed:
        await sync.push(make_invoice())

    assert failed.value.step == "create invoice"
    assert "IdempotencyError" in failed.value.detail
    assert len(fake.invoices) == 1
    assert ours(fake) == []


def test_fake_replays_a_repeated_key_and_refuses_other_parameters(fake: FakeStripe) -> None:
    """The fake behaves like Stripe's v1 idempotency: the same key and parameters replay
    the first answer (same object, nothing new, Idempotent-Replayed), other parameters
    under that key are an IdempotencyError, and a forgotten key is a new request."""
    http_client = stripe.RequestsClient(timeout=5)
    client = stripe.StripeClient(
        fake.api_key,
        base_addresses={"api": fake.base_url},
        max_network_retries=0,
        http_client=http_client,
    )
    params: InvoiceCreateParams = {"customer": CUSTOMER, "currency": "usd", "metadata": {"k": "v"}}
    other: InvoiceCreateParams = {**params, "currency": "eur"}
    try:
        first = client.v1.invoices.create(params=params, options={"idempotency_key": "k1"})
        again = client.v1.invoices.create(params=params, options={"idempotency_key": "k1"})
        assert again.id == first.id
        assert again.last_response is not None
        assert again.last_response.headers.get("Idempotent-Replayed") == "true"
        with pytest.raises(stripe.IdempotencyError):
            client.v1.invoices.create(params=other, options={"idempotency_key": "k1"})
        assert len(fake.invoices) == 1
        fake.forget_idempotency_keys()
        fresh = client.v1.invoices.create(params=params, options={"idempotency_key": "k1"})
        assert fresh.id != first.id
    finally:
        http_client.close()  # type: ignore[no-untyped-call]


def test_invoices_that_would_break_the_keys_are_refused() -> None:
    """Two lines with one number would share a key, and a naive or reversed period would
    make the description (part of the keyed parameters) ambiguous: all refused up front."""
    with pytest.raises(ValueError, match="repeat"):
        make_invoice(lines=(SyncLine(1, "a", 1), SyncLine(1, "b", 2)))
    with pytest.raises(ValueError, match="timezone-aware"):
        SyncInvoice(INVOICE_ID, CUSTOMER, "usd", LINES, datetime(2026, 11, 1), PERIOD_END)  # noqa: DTZ001
    with pytest.raises(ValueError, match="after period_start"):
        SyncInvoice(INVOICE_ID, CUSTOMER, "usd", LINES, PERIOD_END, PERIOD_START)
    with pytest.raises(ValueError, match="currency"):
        SyncInvoice(INVOICE_ID, CUSTOMER, "USD", LINES, PERIOD_START, PERIOD_END)
    shifted = SyncInvoice(
        INVOICE_ID,
        CUSTOMER,
        "usd",
        LINES,
        PERIOD_START.astimezone(timezone(timedelta(hours=-5))),
        PERIOD_END,
    )
    assert shifted.description == make_invoice().description


def test_errors_share_a_base_with_the_detail() -> None:
    """Callers can catch one base; ``detail`` is the message."""
    error = TransientStripeError("x", step="s", invoice_id=INVOICE_ID)
    assert isinstance(error, StripeSyncError)
    assert (str(error), error.detail) == ("x", "x")

"""Price books for tests: the built-in one, and a small one that uses every feature."""

from __future__ import annotations

import psycopg

from billing_worker.adapters.pricebook_file import load_pricebook, parse_pricebook
from billing_worker.domain.pricebook import PriceBook

DEFAULT_BOOK = load_pricebook(None)

FEATURES_TOML = """
version = "test-features-1"
currency = "usd"
default_plan = "BASIC"

[credits]
low_balance = 50

[meters.tokens]
event_types = ["chat.tokens"]

[meters.gpt4_tokens]
event_types = ["chat.tokens"]
filters = { model = "gpt-4" }

[meters.requests]
event_types = ["chat.tokens"]
aggregation = "count"

[meters.peak_storage]
event_types = ["storage.gb_month"]
aggregation = "max"

[meters.seats]
event_types = ["seat.active"]
aggregation = "unique_count"
value = "user_id"

[meters.plan_level]
event_types = ["level.reported"]
aggregation = "latest"

[meters.api_calls]
event_types = ["api.call"]

[meters.inference_tokens]
event_types = ["ai.inference"]
value = "tokens"

[plans.BASIC]
price = "5.00"
credit_grant = 100
[plans.BASIC.meters.tokens]
included = 1000
limit = 1000
[plans.BASIC.meters.seats]
limit = 3
enforcement = "soft"

[plans.BIG]
price = "50.00"
thresholds = [50, 100]
credit_grant = 1000
[plans.BIG.meters.tokens]
included = 10000
limit = 10000

[prices.tokens]
model = "graduated"
tiers = [{ up_to = 1000, unit_price = "0.01" }, { unit_price = "0.005" }]

[credit_costs]
api_calls = 10
inference_tokens = "0.5"

[credit_products.pack_500]
credits = 500
price = "5.00"

[stripe_prices]
price_big = { plan = "BIG" }
price_pack_500 = { credit_product = "pack_500" }
"""

FEATURES_BOOK = parse_pricebook(FEATURES_TOML, "features.toml")


def register(conn: psycopg.Connection, *books: PriceBook) -> None:
    """Record price books in a test database (ledger rows reference their version)."""
    for book in books:
        conn.execute(
            "INSERT INTO pricebooks (version, digest, source) VALUES (%s, %s, %s) "
            "ON CONFLICT (version) DO NOTHING",
            (book.version, book.digest, book.source),
        )

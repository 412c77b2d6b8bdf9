"""Shipped price books: ``default.toml`` is used unless BILLING_PRICEBOOK is set."""

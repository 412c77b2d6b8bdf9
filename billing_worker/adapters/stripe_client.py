"""The official SDK's client as every Stripe call here uses it: on the calling thread, with
an HTTP client of its own closed afterwards, and without the SDK's own retries."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import stripe


@contextmanager
def stripe_client(
    api_key: str, api_base: str | None, timeout: float
) -> Iterator[stripe.StripeClient]:
    """A ``StripeClient`` for one unit of work on this thread (the SDK's requests-based
    client keeps one session per thread and closes only the calling thread's); the caller
    decides when to retry, from the error type."""
    http_client = stripe.RequestsClient(timeout=timeout)
    try:
        yield stripe.StripeClient(
            api_key,
            base_addresses={"api": api_base} if api_base else None,
            max_network_retries=0,
            http_client=http_client,
        )
    finally:
        http_client.close()  # type: ignore[no-untyped-call]

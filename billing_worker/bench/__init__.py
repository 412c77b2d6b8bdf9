"""``billing-worker bench``: throughput against the raw broker ceiling, latency, ledger growth."""

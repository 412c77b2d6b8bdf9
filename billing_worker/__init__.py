"""billing-worker: event-driven usage metering and billing with exactly-once effect."""

__version__ = "0.1.0"

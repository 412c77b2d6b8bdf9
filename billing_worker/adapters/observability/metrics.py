"""Prometheus metrics of CONTRACTS.md, on a registry of their own, children cached per queue."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

BATCH_SIZE_BUCKETS = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000)
BATCH_SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class Metrics:
    """Every metric the worker exports. One instance per worker (tests run several)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.recorded = Counter(
            "billing_events_recorded_total",
            "Events with an effect on the ledger.",
            ["queue"],
            registry=r,
        )
        self.duplicate = Counter(
            "billing_events_duplicate_total",
            "Events already recorded under the same idempotency key and content.",
            ["queue"],
            registry=r,
        )
        self.rejected = Counter(
            "billing_events_rejected_total",
            "Deliveries dead-lettered, by reason.",
            ["queue", "reason"],
            registry=r,
        )
        # Registered after its outcomes, so a scrape reads them before it: settling counts
        # the receipt first, so a scrape racing it can't show outcomes without receipts.
        self.received = Counter(
            "billing_events_received_total",
            "Deliveries taken off a queue and settled (recorded, duplicate or rejected).",
            ["queue"],
            registry=r,
        )
        self.requeued = Counter(
            "billing_events_requeued_total",
            "Deliveries handed back to their queue unsettled (storage unavailable); "
            "they come back and are counted when settled.",
            ["queue"],
            registry=r,
        )
        self.batch_size = Histogram(
            "billing_batch_size",
            "Deliveries per batch.",
            ["queue"],
            buckets=BATCH_SIZE_BUCKETS,
            registry=r,
        )
        self.batch_duration = Histogram(
            "billing_batch_duration_seconds",
            "Time to settle a batch: decode, transaction, dead letters, ack.",
            ["queue"],
            buckets=BATCH_SECONDS_BUCKETS,
            registry=r,
        )
        self.batch_retries = Counter(
            "billing_batch_retries_total",
            "Batch transactions retried after a transient storage error.",
            ["queue"],
            registry=r,
        )
        self.outbox_pending = Gauge(
            "billing_outbox_pending", "Outbox rows not yet published.", registry=r
        )
        self.outbox_oldest_age = Gauge(
            "billing_outbox_oldest_age_seconds",
            "Age of the oldest unpublished outbox row (0 when none): the outbox lag.",
            registry=r,
        )
        self.quota_checks = Counter(
            "billing_quota_checks_total",
            "Quota checks answered, by answer (allowed, denied, error).",
            ["answer"],
            registry=r,
        )
        self.quota_check_duration = Histogram(
            "billing_quota_check_duration_seconds",
            "Time from taking a quota check off the queue to publishing its reply.",
            buckets=BATCH_SECONDS_BUCKETS,
            registry=r,
        )
        self.outbox_published = Counter(
            "billing_outbox_published_total", "Billing events published.", ["type"], registry=r
        )
        self.stripe_events = Counter(
            "billing_stripe_events_total",
            "Relayed Stripe events, by outcome.",
            ["type", "outcome"],
            registry=r,
        )
        self.up = Gauge(
            "billing_dependency_up",
            "1 while the dependency is reachable.",
            ["dependency"],
            registry=r,
        )
        self.ready = Gauge(
            "billing_ready",
            "1 while /readyz answers 200: broker and database up, consumers subscribed, "
            "not draining.",
            registry=r,
        )
        self.dead_letters = Gauge(
            "billing_dead_letter_messages",
            "Messages waiting in each dead-letter queue, as the broker last reported.",
            ["queue"],
            registry=r,
        )
        self.stripe_reconcile_differences = Gauge(
            "billing_stripe_reconcile_differences",
            "Differences between Stripe and the ledger left open by the last "
            "`reconcile stripe` run over each invoice, by kind.",
            ["kind"],
            registry=r,
        )
        self.stripe_reconcile_last_run = Gauge(
            "billing_stripe_reconcile_last_run_timestamp_seconds",
            "When a `reconcile stripe` run last finished, in Unix time (0: never).",
            registry=r,
        )

    def for_queue(self, queue: str) -> QueueMetrics:
        """Children of the per-queue metrics, resolved once (``.labels()`` is not free)."""
        return QueueMetrics(self, queue)


@dataclass
class QueueMetrics:
    """The labelled children one consumer touches on every batch."""

    metrics: Metrics
    queue: str
    _rejected: dict[str, Counter] = field(default_factory=dict)

    def __post_init__(self) -> None:
        m, q = self.metrics, self.queue
        self.received = m.received.labels(queue=q)
        self.recorded = m.recorded.labels(queue=q)
        self.duplicate = m.duplicate.labels(queue=q)
        self.requeued = m.requeued.labels(queue=q)
        self.retries = m.batch_retries.labels(queue=q)
        self.batch_size = m.batch_size.labels(queue=q)
        self.batch_duration = m.batch_duration.labels(queue=q)

    def rejected(self, reason: str) -> Counter:
        """The rejected counter for ``reason`` (a small fixed set of codes)."""
        child = self._rejected.get(reason)
        if child is None:
            child = self._rejected[reason] = self.metrics.rejected.labels(
                queue=self.queue, reason=reason
            )
        return child

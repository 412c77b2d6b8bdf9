"""Chaos runs: break the worker's world on purpose and check that nothing was lost or doubled.

``servers`` starts private PostgreSQL and RabbitMQ instances that may be stopped at will
(never the shared ones); ``workload`` builds the events; ``harness`` runs workers as child
processes and talks to the bus; ``scenarios`` are the faults; ``invariants`` the checks
every scenario ends with; ``command`` is ``billing-worker chaos``. The reliability tests run
the same scenarios at a small size.
"""

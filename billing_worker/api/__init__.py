"""The HTTP API (``billing-worker api``): reads, the quota check, estimates, ingest and the
CLI's writes, over the same service layer and stores."""

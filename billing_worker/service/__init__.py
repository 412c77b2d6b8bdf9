"""Use cases: each one transaction over a unit of work."""

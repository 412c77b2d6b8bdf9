"""Metrics, structured logs and the health endpoints."""

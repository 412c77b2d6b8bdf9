"""Deployment files: Prometheus scrape config and alert rules, the Grafana dashboard."""

"""Edges to the outside world: PostgreSQL, AMQP, observability."""

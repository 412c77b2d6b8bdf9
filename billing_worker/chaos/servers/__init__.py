"""Private PostgreSQL and RabbitMQ servers that a scenario may stop, restart or kill.

Each lives in a temporary directory of its own, listens on free loopback ports and is
removed by ``close()`` (also on interpreter exit), so stopping it never touches the
machine's shared servers. Run as root, the servers run as their packages' service users
(PostgreSQL refuses to run as root; RabbitMQ keeps its files owned by ``rabbitmq``).
"""

from billing_worker.chaos.servers.common import ServerUnavailable, free_port
from billing_worker.chaos.servers.postgres import PrivatePostgres, postgres_bindir
from billing_worker.chaos.servers.rabbitmq import PrivateRabbitMQ, rabbitmq_sbindir

__all__ = [
    "PrivatePostgres",
    "PrivateRabbitMQ",
    "ServerUnavailable",
    "free_port",
    "postgres_bindir",
    "rabbitmq_sbindir",
]

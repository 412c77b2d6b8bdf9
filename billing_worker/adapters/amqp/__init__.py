"""RabbitMQ through aio-pika: topology, dead-letter publishing."""

"""AsyncAPI channels: every exchange route and queue, with AMQP bindings from the topology."""

from __future__ import annotations

from typing import Any

from billing_worker.adapters.amqp.topology import (
    QUOTA_CHECK_TTL_MS,
    USAGE_BINDING_KEY,
    Topology,
    quorum_queue_arguments,
)
from billing_worker.contract.messages import AMQP_BINDING_VERSION, message_id
from schemas.events import EVENT_TYPES


def ref(*path: str) -> dict[str, str]:
    """A JSON reference to ``path`` inside the document."""
    return {"$ref": "#/" + "/".join(path)}


def exchange_binding(name: str, exchange_type: str) -> dict[str, Any]:
    """A channel reached by routing key through ``name`` (durable, as every exchange here)."""
    exchange = {"name": name, "type": exchange_type, "durable": True, "autoDelete": False}
    return {
        "amqp": {"is": "routingKey", "exchange": exchange, "bindingVersion": AMQP_BINDING_VERSION}
    }


def queue_binding(
    name: str, arguments: dict[str, object], bound_to: tuple[str, str] | None = None
) -> dict[str, Any]:
    """A durable queue; its declaration arguments and binding as extensions (the AMQP
    binding has no field for them)."""
    queue = {"name": name, "durable": True, "exclusive": False, "autoDelete": False}
    amqp: dict[str, Any] = {"is": "queue", "queue": queue, "bindingVersion": AMQP_BINDING_VERSION}
    amqp["x-arguments"] = arguments
    if bound_to is not None:
        amqp["x-bound-to"] = {"exchange": bound_to[0], "routingKey": bound_to[1]}
    return {"amqp": amqp}


def _channel(
    address: str | None,
    title: str,
    description: str,
    message_ids: list[str],
    bindings: Any,
    **extra: Any,
) -> dict[str, Any]:
    return {
        "address": address,
        "title": title,
        "description": description,
        **extra,
        "messages": {m: ref("components", "messages", m) for m in message_ids},
        "bindings": bindings,
    }


def channels(topology: Topology) -> dict[str, Any]:
    """Every exchange route and queue of the contract, by channel id."""
    usage_dlq = topology.dead_letter_queue(topology.usage_queue)
    stripe_dlq = topology.dead_letter_queue(topology.stripe_queue)
    quorum: dict[str, object] = {"x-queue-type": "quorum"}
    result = {
        "usage": _channel(
            "usage.{source}.{type}",
            "Usage events in",
            f"Publish usage events to the topic exchange `{topology.usage_exchange}` with "
            "routing key `usage.<source>.<type>`: persistent, mandatory, with publisher "
            "confirms. Send an unconfirmed event again with the same `id`: it counts once.",
            ["usageEvent"],
            exchange_binding(topology.usage_exchange, "topic"),
            parameters={
                "source": {"description": "The event's `source`, e.g. chat-service."},
                "type": {"description": "The event's `type`, e.g. chat.tokens."},
            },
        ),
        "usageQueue": _channel(
            topology.usage_queue,
            "Usage queue",
            f"The worker consumes usage events from this quorum queue, bound to "
            f"`{topology.usage_exchange}` with `{USAGE_BINDING_KEY}`.",
            ["usageEvent"],
            queue_binding(
                topology.usage_queue,
                dict(quorum_queue_arguments(usage_dlq)),
                (topology.usage_exchange, USAGE_BINDING_KEY),
            ),
        ),
        "usageDeadLetters": _channel(
            usage_dlq,
            "Rejected usage events",
            "Usage deliveries the worker could not accept, each with its reason.",
            ["deadLetter"],
            queue_binding(usage_dlq, quorum),
        ),
        "quotaCheck": _channel(
            topology.quota_check_queue,
            "Quota-check requests",
            "Publish to the default exchange with this queue's name as routing key, "
            "`reply_to` (direct reply-to `amq.rabbitmq.reply-to` is simplest) and "
            "`correlation_id` set. Requests expire after a minute in the queue.",
            ["quotaCheckRequest"],
            queue_binding(
                topology.quota_check_queue,
                {**quorum, "x-message-ttl": QUOTA_CHECK_TTL_MS},
            ),
        ),
        "quotaCheckReply": _channel(
            None,
            "Quota-check replies",
            "The request's `reply_to`, through the default exchange.",
            ["quotaCheckReply", "quotaCheckError"],
            exchange_binding("", "default"),
        ),
        "stripe": _channel(
            "",
            "Relayed Stripe webhook deliveries",
            f"The relay publishes each delivery to the fanout exchange "
            f"`{topology.stripe_exchange}` (the routing key is ignored).",
            ["stripeDelivery"],
            exchange_binding(topology.stripe_exchange, "fanout"),
        ),
        "stripeQueue": _channel(
            topology.stripe_queue,
            "Stripe queue",
            f"The worker consumes relayed Stripe deliveries from this quorum queue, bound to "
            f"`{topology.stripe_exchange}`.",
            ["stripeDelivery"],
            queue_binding(
                topology.stripe_queue,
                dict(quorum_queue_arguments(stripe_dlq)),
                (topology.stripe_exchange, ""),
            ),
        ),
        "stripeDeadLetters": _channel(
            stripe_dlq,
            "Rejected Stripe deliveries",
            "Stripe deliveries the worker refused (bad or stale signature, unknown account "
            "or price, unreadable), each with its reason.",
            ["deadLetter"],
            queue_binding(stripe_dlq, quorum),
        ),
    }
    for event_type in EVENT_TYPES:
        result[message_id(event_type)] = _channel(
            event_type,
            f"{event_type} events",
            f"Billing events on the topic exchange `{topology.events_exchange}`; the routing "
            "key is the event type. Bind your own queue to the types you want.",
            [message_id(event_type)],
            exchange_binding(topology.events_exchange, "topic"),
        )
    return result

"""The AsyncAPI 3.0 document of every channel and message (``billing-worker asyncapi``).

Channels and their AMQP bindings come from the topology the worker declares
(``adapters/amqp/topology.py``), messages from the pydantic models of ``schemas``, so the
committed ``schemas/asyncapi.json`` is regenerated, never edited, and a test keeps it equal
to what this module produces.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Final

from billing_worker import __version__
from billing_worker.adapters.amqp.topology import Topology
from billing_worker.contract.channels import channels, ref
from billing_worker.contract.messages import (
    AMQP_BINDING_VERSION,
    JSON,
    description_of,
    message_id,
    messages,
    model_schemas,
)
from schemas.events import EVENT_TYPES

ASYNCAPI_VERSION: Final = "3.0.0"
DOCUMENT_PATH: Final = "schemas/asyncapi.json"
REGENERATE_COMMAND: Final = f"billing-worker asyncapi --output {DOCUMENT_PATH}"

DESCRIPTION: Final = (
    "Usage metering and billing over RabbitMQ. Product services publish usage events; the "
    "worker records each exactly once, answers quota checks and publishes billing events.\n\n"
    "Names are the defaults: a deployment may prefix every exchange and queue name with its "
    "`BILLING_NAMESPACE` and a dot (`acme.billing.usage`), never renaming them one by one. "
    "Messages are UTF-8 JSON, CloudEvents 1.0 in structured mode where they are events."
)


def _operation(
    action: str, channel: str, message_ids: list[str], summary: str, **extra: Any
) -> dict[str, Any]:
    return {
        "action": action,
        "channel": ref("channels", channel),
        "summary": summary,
        "messages": [ref("channels", channel, "messages", m) for m in message_ids],
        **extra,
    }


def _sends(*, mandatory: bool) -> dict[str, Any]:
    amqp = {"deliveryMode": 2, "mandatory": mandatory, "bindingVersion": AMQP_BINDING_VERSION}
    return {"bindings": {"amqp": amqp}}


ACKED: Final = {"bindings": {"amqp": {"ack": True, "bindingVersion": AMQP_BINDING_VERSION}}}


def operations() -> dict[str, Any]:
    """What billing-worker (the worker and its Stripe relay) does on each channel."""
    result = {
        "receiveUsage": _operation(
            "receive",
            "usage",
            ["usageEvent"],
            "Record usage exactly once; acked only after the ledger transaction commits.",
            description="Consumed through the queue of channel `usageQueue`. A bad event is "
            "dead-lettered with its reason and announced as `usage.rejected`.",
            **ACKED,
        ),
        "deadLetterUsage": _operation(
            "send",
            "usageDeadLetters",
            ["deadLetter"],
            "Dead-letter a usage delivery, confirmed before the original is acked.",
            **_sends(mandatory=True),
        ),
        "answerQuotaCheck": _operation(
            "receive",
            "quotaCheck",
            ["quotaCheckRequest"],
            "Answer whether a quantity more stays within the account's plan.",
            reply={
                "address": {
                    "description": "The request's AMQP `reply_to` property.",
                    "location": "$message.header#/reply_to",
                },
                "channel": ref("channels", "quotaCheckReply"),
                "messages": [
                    ref("channels", "quotaCheckReply", "messages", m)
                    for m in ("quotaCheckReply", "quotaCheckError")
                ],
            },
            **ACKED,
        ),
        "relayStripeDelivery": _operation(
            "send",
            "stripe",
            ["stripeDelivery"],
            "`billing-worker stripe-relay` forwards a webhook delivery; Stripe gets 200 "
            "only after the broker confirmed.",
            **_sends(mandatory=True),
        ),
        "receiveStripeDelivery": _operation(
            "receive",
            "stripe",
            ["stripeDelivery"],
            "Verify, dedupe by Stripe event id, order per object and apply.",
            description="Consumed through the queue of channel `stripeQueue`, when "
            "`BILLING_STRIPE_WEBHOOK_SECRET` is set.",
            **ACKED,
        ),
        "deadLetterStripeDelivery": _operation(
            "send",
            "stripeDeadLetters",
            ["deadLetter"],
            "Dead-letter a Stripe delivery the worker refused.",
            **_sends(mandatory=True),
        ),
    }
    for event_type, envelope in EVENT_TYPES.items():
        name = message_id(event_type)
        result[f"send{name[0].upper()}{name[1:]}"] = _operation(
            "send",
            name,
            [name],
            f"Publish `{event_type}` with publisher confirms.",
            description=description_of(envelope),
            **_sends(mandatory=False),
        )
    return result


def build_document() -> dict[str, Any]:
    """The AsyncAPI 3.0 document, with the default (un-namespaced) names."""
    refs, schemas = model_schemas()
    return {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": "billing-worker",
            "version": __version__,
            "description": DESCRIPTION,
            "license": {"name": "Apache-2.0", "url": "https://www.apache.org/licenses/LICENSE-2.0"},
        },
        "defaultContentType": JSON,
        "servers": {
            "rabbitmq": {
                "host": "{host}",
                "protocol": "amqp",
                "protocolVersion": "0.9.1",
                "description": "The broker of `BILLING_AMQP_URL`.",
                "variables": {"host": {"default": "127.0.0.1:5672"}},
            }
        },
        "channels": channels(Topology()),
        "operations": operations(),
        "components": {"messages": messages(refs), "schemas": schemas},
    }


def render_document() -> str:
    """The document as stable, diff-friendly JSON text."""
    return json.dumps(build_document(), indent=2, ensure_ascii=False) + "\n"


def write_document(output: str | None) -> int:
    """``billing-worker asyncapi``: the document to ``output``, or to stdout."""
    text = render_document()
    if output is None:
        sys.stdout.write(text)
    else:
        Path(output).write_text(text, encoding="utf-8")
    return 0

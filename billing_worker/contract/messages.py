"""AsyncAPI messages and their payload schemas, generated from the pydantic models."""

from __future__ import annotations

import inspect
import re
from typing import Any, Final

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from billing_worker.adapters.amqp.dead_letters import (
    DETAIL_HEADER,
    MAX_DETAIL_CHARS,
    REASON_HEADER,
)
from billing_worker.consumers.stripe import RELAYED_AT_HEADER, SIGNATURE_HEADER
from schemas.events import EVENT_TYPES
from schemas.export import MODELS, schema_mode
from schemas.quota_check import QuotaCheckError, QuotaCheckReply, QuotaCheckRequest
from schemas.usage import UsageEventV1

AMQP_BINDING_VERSION: Final = "0.3.0"
SCHEMA_REF: Final = "#/components/schemas/{model}"
JSON: Final = "application/json"

USAGE_EXAMPLE: Final = {
    "specversion": "1.0",
    "id": "b6f1c0de-3d2a-4f8e-9c1a-0d9a7e2b5f10",
    "source": "chat-service",
    "type": "chat.tokens",
    "subject": "acct_42",
    "time": "2026-11-21T10:15:00Z",
    "datacontenttype": "application/json",
    "data": {"quantity": 1234, "model": "gpt-4"},
}
"""The usage event of the contract."""

QUOTA_CHECK_EXAMPLE: Final = {"account": "acct_42", "meter": "tokens", "quantity": 2000}

CORRELATION_ID: Final = {
    "description": "The AMQP `correlation_id` property; the reply carries the same one.",
    "location": "$message.header#/correlation_id",
}


def message_id(event_type: str) -> str:
    """An AsyncAPI id for an event type: ``invoice.payment_failed`` -> ``invoicePaymentFailed``."""
    first, *rest = re.split(r"[._-]", event_type)
    return first + "".join(word.capitalize() for word in rest)


def summary_of(model: type[BaseModel]) -> str:
    """The first line of the model's docstring, in CommonMark."""
    return description_of(model).splitlines()[0]


def description_of(model: type[BaseModel]) -> str:
    """The model's docstring, in CommonMark."""
    return inspect.cleandoc(model.__doc__ or "").replace("``", "`")


def model_schemas() -> tuple[dict[type[BaseModel], dict[str, str]], dict[str, Any]]:
    """Every published model's schema (as in ``schemas/json``) by component name, and a
    ``$ref`` to it per model.

    Each model keeps its published mode: what the worker writes is described as written
    (every field present), what it reads as it accepts it.
    """
    pairs = [(model, schema_mode(model)) for model in MODELS.values()]
    refs, definitions = models_json_schema(pairs, ref_template=SCHEMA_REF)
    schemas: dict[str, Any] = definitions["$defs"]
    for schema in schemas.values():
        schema_id = schema.pop("$id", None)
        if schema_id is not None:
            # An $id inside the document would rebase the $refs under it; name the
            # published schema file instead.
            schema["x-schema-id"] = schema_id
    by_model = {model: refs[(model, mode)] for model, mode in pairs}
    return by_model, dict(sorted(schemas.items()))


def _header(description: str, **schema: Any) -> dict[str, Any]:
    return {"type": "string", "description": description, **schema}


DEAD_LETTER_HEADERS: Final = {
    "type": "object",
    "properties": {
        REASON_HEADER: _header(
            "Machine-readable reason: invalid_json, schema_violation, unknown_event_type, "
            "idempotency_conflict, bad_signature, stale_signature, ... (more may be added)."
        ),
        DETAIL_HEADER: _header("What exactly is wrong, for humans.", maxLength=MAX_DETAIL_CHARS),
        "x-billing-queue": _header("The queue the message was taken from."),
        "x-billing-routing-key": _header("Its original routing key."),
        "x-billing-rejected-at": _header("When it was rejected (ISO 8601, UTC)."),
    },
    "description": "The original headers are kept and these added. A message the broker "
    "dead-lettered by itself (past a delivery limit, say) has `x-death` instead.",
}


def _plain(title: str, description: str, payload: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": title,
        "title": title,
        "contentType": JSON,
        "description": description,
        "payload": payload,
    }


def messages(refs: dict[type[BaseModel], dict[str, str]]) -> dict[str, Any]:
    """Every message on the bus, by id."""
    result: dict[str, Any] = {
        "usageEvent": {
            **_plain(
                "UsageEvent",
                "A CloudEvents 1.0 envelope in structured mode. The idempotency key is "
                "(`source`, `id`): the same key with the same content is a duplicate (no "
                "effect), with other content a conflict (dead-lettered). Publish it "
                "persistent (delivery mode 2) with publisher confirms.",
                refs[UsageEventV1],
            ),
            "summary": summary_of(UsageEventV1),
            "examples": [{"name": "chatTokens", "payload": USAGE_EXAMPLE}],
        },
        "deadLetter": {
            "name": "DeadLetter",
            "title": "Dead letter",
            "summary": "A message the worker could not accept, with the reason it was refused.",
            "description": "The rejected delivery's body byte for byte (it may not be JSON) "
            "and its properties.",
            "headers": DEAD_LETTER_HEADERS,
            "payload": {"description": "The original body, unchanged."},
        },
        "quotaCheckRequest": {
            **_plain(
                "QuotaCheckRequest",
                "Published to the default exchange with `reply_to` and `correlation_id` set.",
                refs[QuotaCheckRequest],
            ),
            "summary": summary_of(QuotaCheckRequest),
            "correlationId": CORRELATION_ID,
            "examples": [{"name": "tokens", "payload": QUOTA_CHECK_EXAMPLE}],
        },
        "quotaCheckReply": {
            **_plain("QuotaCheckReply", "Sent transient.", refs[QuotaCheckReply]),
            "summary": summary_of(QuotaCheckReply),
            "correlationId": CORRELATION_ID,
        },
        "quotaCheckError": {
            **_plain("QuotaCheckError", "Sent transient.", refs[QuotaCheckError]),
            "summary": summary_of(QuotaCheckError),
            "correlationId": CORRELATION_ID,
        },
        "stripeDelivery": {
            **_plain(
                "StripeDelivery",
                "Published by `billing-worker stripe-relay`, persistent, with confirms.",
                {
                    "type": "object",
                    "description": "A Stripe Event object: the webhook request body, byte "
                    "for byte (verify the signature against these raw bytes).",
                },
            ),
            "summary": "A Stripe webhook delivery, relayed unchanged.",
            "headers": {
                "type": "object",
                "required": [SIGNATURE_HEADER],
                "properties": {
                    SIGNATURE_HEADER: _header("The delivery's `Stripe-Signature` header."),
                    RELAYED_AT_HEADER: {
                        "type": "integer",
                        "description": "Unix time the relay received the delivery; the "
                        "signature's age is measured against it.",
                    },
                },
            },
        },
    }
    for event_type, envelope in EVENT_TYPES.items():
        result[message_id(event_type)] = {
            **_plain(
                event_type,
                "Persistent; the AMQP `message_id` is the event `id` and `type` its type. "
                "Delivered at least once: drop repeats by `id`.",
                refs[envelope],
            ),
            "summary": summary_of(envelope),
            "bindings": {
                "amqp": {"messageType": event_type, "bindingVersion": AMQP_BINDING_VERSION}
            },
        }
    return result

"""Write the JSON Schema of every wire model to ``schemas/json/`` (``python -m schemas.export``)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode

from schemas.events import (
    CreditsExhaustedEvent,
    CreditsLowEvent,
    InvoicePaidEvent,
    InvoicePaymentFailedEvent,
    InvoiceReadyEvent,
    QuotaExceededEvent,
    QuotaWarningEvent,
    SubscriptionChangedEvent,
    UsageRejectedEvent,
)
from schemas.quota_check import QuotaCheckError, QuotaCheckReply, QuotaCheckRequest
from schemas.usage import UsageEventV1

JSON_DIR = Path(__file__).parent / "json"

MODELS: dict[str, type[BaseModel]] = {
    "usage-event.v1.json": UsageEventV1,
    "quota-check-request.v1.json": QuotaCheckRequest,
    "quota-check-reply.v1.json": QuotaCheckReply,
    "quota-check-error.v1.json": QuotaCheckError,
    "quota-warning.v1.json": QuotaWarningEvent,
    "quota-exceeded.v1.json": QuotaExceededEvent,
    "credits-low.v1.json": CreditsLowEvent,
    "credits-exhausted.v1.json": CreditsExhaustedEvent,
    "usage-rejected.v1.json": UsageRejectedEvent,
    "subscription-changed.v1.json": SubscriptionChangedEvent,
    "invoice-ready.v1.json": InvoiceReadyEvent,
    "invoice-paid.v1.json": InvoicePaidEvent,
    "invoice-payment-failed.v1.json": InvoicePaymentFailedEvent,
}
"""Published file name -> the model it describes."""

WRITTEN_BY_WORKER: frozenset[type[BaseModel]] = frozenset(
    {
        QuotaCheckReply,
        QuotaCheckError,
        QuotaWarningEvent,
        QuotaExceededEvent,
        CreditsLowEvent,
        CreditsExhaustedEvent,
        UsageRejectedEvent,
        SubscriptionChangedEvent,
        InvoiceReadyEvent,
        InvoicePaidEvent,
        InvoicePaymentFailedEvent,
    }
)
"""Models the worker serialises: consumers see their *serialization* schema (decimal
strings, ``Z`` times, every field present). Everything else is read by the worker and
published in validation mode (what the worker accepts)."""


def schema_mode(model: type[BaseModel]) -> JsonSchemaMode:
    """``serialization`` for what the worker writes, ``validation`` for what it reads."""
    return "serialization" if model in WRITTEN_BY_WORKER else "validation"


def render(model: type[BaseModel]) -> str:
    """The model's JSON Schema, in :func:`schema_mode`, as stable, diff-friendly text."""
    schema = model.model_json_schema(mode=schema_mode(model))
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def main() -> int:
    """Regenerate every schema file; print the ones that changed."""
    for filename, model in MODELS.items():
        path = JSON_DIR / filename
        text = render(model)
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
            sys.stdout.write(f"wrote {path}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

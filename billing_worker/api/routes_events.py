"""``POST /v1/events`` (ingest through the bus) and ``GET /v1/events/{source}/{id}``."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Path, Request
from fastapi.responses import JSONResponse

from billing_worker.adapters.postgres.api_reads import event_fate
from billing_worker.api.context import Context, Ingester, Reader
from billing_worker.api.problems import Problem
from billing_worker.client.publisher import UsageNotPublished
from billing_worker.consumers.usage import validate_usage_event
from billing_worker.domain.errors import PermanentError
from schemas.events import format_decimal
from schemas.usage import UsageEvent

router = APIRouter(tags=["events"])

MAX_EVENTS = 1000
PUBLISH_WINDOW = 100
"""Publishes awaiting confirms at once (many thousands at once are slower)."""


@router.post(
    "/v1/events",
    status_code=202,
    summary="Send 1-1000 usage events through the bus",
    responses={
        202: {"description": "Each event accepted (confirmed by the broker) or invalid"},
        413: {"description": "The body is larger than BILLING_API_MAX_BODY_BYTES"},
        503: {"description": "The broker is not reachable; results say what was accepted"},
    },
    # read from the raw body (to bound its size before parsing it), documented here
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "type": "array",
                        "minItems": 1,
                        "maxItems": MAX_EVENTS,
                        "items": {"type": "object", "description": "A usage CloudEvent"},
                    }
                }
            },
        }
    },
)
async def ingest(request: Request, who: Ingester, ctx: Context) -> JSONResponse:
    """Each event is checked as the worker checks it; the valid ones are published to
    ``billing.usage`` with publisher confirms, and the answer comes once the broker has
    confirmed them. A retried batch is safe: the worker counts each (source, id) once."""
    events = await _events(request, ctx.settings.api_max_body_bytes)
    now = ctx.settings.clock()
    skew = timedelta(seconds=ctx.settings.max_clock_skew_seconds)
    results: list[dict[str, Any]] = []
    valid: list[tuple[int, UsageEvent]] = []
    for position, raw in enumerate(events):
        source, event_id = _names(raw)
        results.append({"source": source, "id": event_id, "status": "accepted"})
        try:
            event, _ = validate_usage_event(
                orjson.dumps(raw), "application/json", ctx.book, now=now, max_skew=skew
            )
        except PermanentError as exc:
            results[position] |= {"status": "invalid", "reason": exc.reason, "detail": exc.detail}
            continue
        valid.append((position, event))
    if valid:
        await _publish(ctx, valid, results)
    return JSONResponse({"results": results}, status_code=202)


async def _events(request: Request, limit: int) -> list[Any]:
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise Problem(413, f"the body is over {limit} bytes (BILLING_API_MAX_BODY_BYTES)")
    try:
        events = orjson.loads(bytes(body))
    except orjson.JSONDecodeError as exc:
        raise Problem(400, f"the body is not JSON: {exc}") from exc
    if not isinstance(events, list):
        raise Problem(422, "the body must be a JSON array of usage events")
    if not 1 <= len(events) <= MAX_EVENTS:
        raise Problem(422, f"send 1 to {MAX_EVENTS} events at a time, not {len(events)}")
    return events


def _names(raw: Any) -> tuple[str | None, str | None]:
    if not isinstance(raw, dict):
        return None, None
    source, event_id = raw.get("source"), raw.get("id")
    return (
        source[:256] if isinstance(source, str) else None,
        event_id[:256] if isinstance(event_id, str) else None,
    )


async def _publish(
    ctx: Context, valid: list[tuple[int, UsageEvent]], results: list[dict[str, Any]]
) -> None:
    """Publish ``valid``; mark what the broker did not confirm. Any failure answers 503
    listing each event's fate (accepted ones were confirmed)."""
    publisher = ctx.publisher
    if publisher is None:
        for position, _ in valid:
            results[position] |= {"status": "not_sent", "reason": "broker_unavailable"}
        raise Problem(503, "not connected to the broker: nothing was sent", results=results)
    window = asyncio.Semaphore(PUBLISH_WINDOW)

    async def one(position: int, event: UsageEvent) -> None:
        async with window:
            try:
                await publisher.publish_event(event)
            except UsageNotPublished as exc:
                results[position] |= {
                    "status": "not_sent",
                    "reason": "broker_unavailable",
                    "detail": str(exc),
                }

    await asyncio.gather(*(one(position, event) for position, event in valid))
    if any(r["status"] == "not_sent" for r in results):
        raise Problem(
            503,
            "the broker did not confirm every event: those marked not_sent were not taken "
            "(send them again; the accepted ones are counted once either way)",
            results=results,
        )


Name = Annotated[str, Path(min_length=1, max_length=256)]


@router.get("/v1/events/{source}/{event_id}", summary="What became of one usage event")
async def event_lookup(source: Name, event_id: Name, who: Reader, ctx: Context) -> dict[str, Any]:
    """``recorded`` with the ledger rows it made (one per meter it fed), ``rejected`` with
    the reason and detail (kept BILLING_REJECTED_RETENTION_DAYS), or 404 when the worker
    has not seen it (yet: it may still be in the queue)."""
    async with ctx.engine.connect() as conn:
        recorded, rejected = await event_fate(conn, source, event_id)
    if recorded:
        return {
            "status": "recorded",
            "source": source,
            "id": event_id,
            "account": recorded[0]["account_id"],
            "ledger": [
                {
                    "entry_id": row["entry_id"],
                    "meter": row["meter"],
                    "quantity": format_decimal(row["quantity"]),
                    "occurred_at": row["occurred_at"].isoformat(),
                    "period": {
                        "start": row["period_start"].isoformat(),
                        "end": row["period_end"].isoformat(),
                    },
                    "recorded_at": row["recorded_at"].isoformat(),
                    "pricebook_version": row["pricebook_version"],
                }
                for row in recorded
            ],
        }
    if rejected is not None:
        return {
            "status": "rejected",
            "source": source,
            "id": event_id,
            "reason": rejected["reason"],
            "detail": rejected["detail"],
            "queue": rejected["queue"],
            "rejected_at": rejected["rejected_at"].isoformat(),
        }
    raise Problem(404, f"no event ({source!r}, {event_id!r}) recorded or rejected")

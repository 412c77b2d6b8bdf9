"""The ASGI application: routes, problem documents, health, readiness and metrics."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from sqlalchemy import text

from billing_worker import __version__
from billing_worker.api import (
    routes_accounts,
    routes_billing,
    routes_documents,
    routes_events,
    routes_portal,
    routes_stripe,
    routes_writes,
)
from billing_worker.api.context import ApiContext
from billing_worker.api.problems import (
    ERROR_RESPONSES,
    install_problem_handlers,
    problem_response,
)

log = structlog.get_logger(__name__)

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


class HttpMetrics:
    """``billing_http_requests_total`` and ``billing_http_request_duration_seconds``,
    labelled by method and route template (never by account or id)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.requests = Counter(
            "billing_http_requests_total",
            "HTTP requests answered, by route template and status",
            ["method", "route", "status"],
            registry=registry,
        )
        self.duration = Histogram(
            "billing_http_request_duration_seconds",
            "Time to answer an HTTP request",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )


def create_app(ctx: ApiContext, registry: CollectorRegistry | None = None) -> FastAPI:
    """The API over ``ctx``'s resources."""
    app = FastAPI(
        title="billing-worker",
        version=__version__,
        summary="Usage, credits, invoices, quota checks, estimates and ingest over HTTP.",
        openapi_url="/openapi.json",
        docs_url=None,
        redoc_url=None,
    )
    app.state.ctx = ctx
    app.state.portal_settings = routes_portal.load_portal_settings()
    metrics = HttpMetrics(registry or CollectorRegistry())
    app.state.metrics = metrics
    install_problem_handlers(app)

    @app.middleware("http")
    async def measure(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        started = time.perf_counter()
        raw = request.scope.get("raw_path", b"") + b"?" + request.scope.get("query_string", b"")
        length = request.headers.get("content-length", "0")
        limit = ctx.settings.api_max_body_bytes
        response: Response
        try:
            if b"%00" in raw or b"\x00" in raw:
                # ids and names never hold NUL (PostgreSQL text can't): refused up front
                response = problem_response(422, "NUL characters are not allowed in the URL")
            elif not length.isdigit() or int(length) > limit:
                response = problem_response(
                    413, f"the body is over {limit} bytes (BILLING_API_MAX_BODY_BYTES)"
                )
            else:
                response = await call_next(request)
        except Exception:
            log.exception("api_request_failed", method=request.method, path=request.url.path)
            response = problem_response(500, "the API failed to answer (see its logs)")
        route = request.scope.get("route")
        template = getattr(route, "path", None) or "(unmatched)"
        metrics.requests.labels(request.method, template, str(response.status_code)).inc()
        metrics.duration.labels(request.method, template).observe(time.perf_counter() - started)
        return response

    for router in (
        routes_accounts.router,
        routes_billing.router,
        routes_documents.router,
        routes_events.router,
        routes_writes.router,
        routes_stripe.router,
        routes_portal.router,
    ):
        app.include_router(router, responses=ERROR_RESPONSES)
    _add_probes(app, ctx, metrics)
    return app


def _add_probes(app: FastAPI, ctx: ApiContext, metrics: HttpMetrics) -> None:
    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", include_in_schema=False)
    async def readyz() -> JSONResponse:
        checks: dict[str, Any] = {}
        try:
            async with ctx.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
            checks["database"] = "ok"
        except Exception as exc:  # noqa: BLE001 - any failure means "not ready", and says why
            checks["database"] = f"unreachable: {type(exc).__name__}"
        broker = ctx.publisher is not None and ctx.publisher.connected
        checks["broker"] = "ok" if broker else "not connected (POST /v1/events answers 503)"
        ready = checks["database"] == "ok" and not ctx.notes.get("draining")
        return JSONResponse(
            {"ready": ready, "checks": checks, "notes": ctx.notes},
            status_code=200 if ready else 503,
        )

    @app.get("/metrics", include_in_schema=False)
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

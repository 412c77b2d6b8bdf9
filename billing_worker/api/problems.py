"""Errors as RFC 9457 problem documents (``application/problem+json``)."""

from __future__ import annotations

import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

PROBLEM_JSON = "application/problem+json"
TITLES = {
    400: "Bad request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict",
    413: "Content too large",
    415: "Unsupported media type",
    422: "Unprocessable content",
    429: "Too many requests",
    502: "Bad gateway",
    503: "Service unavailable",
}


PROBLEM_SCHEMA = {
    "type": "object",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
    },
    "additionalProperties": True,
}
"""RFC 9457's members; ``errors``, ``reason`` or ``results`` may come with them."""

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {
        "description": TITLES[status],
        "content": {PROBLEM_JSON: {"schema": PROBLEM_SCHEMA}},
    }
    for status in (400, 401, 403, 404, 409, 413, 422, 503)
}
"""What any route may answer besides its success, documented on every operation."""


class Problem(Exception):
    """Answer with a problem document: ``status``, a ``detail`` for people, and extra
    members (``errors``, ``reason``) for programs."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail)
        self.status, self.detail, self.headers, self.extra = status, detail, headers, extra


def problem_response(
    status: int, detail: str, headers: dict[str, str] | None = None, **extra: Any
) -> JSONResponse:
    """The problem document itself."""
    body = {
        "type": "about:blank",
        "title": TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
        **extra,
    }
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def _methods_of(app: FastAPI, path: str) -> list[str]:
    """Every method the OpenAPI document serves at ``path``."""
    methods: set[str] = set()
    for template, operations in app.openapi()["paths"].items():
        pattern = re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template))
        if re.fullmatch(pattern, path):
            methods.update(method.upper() for method in operations)
    return sorted(methods)


def install_problem_handlers(app: FastAPI) -> None:
    """Every error the app answers is a problem document, never an HTML page or a 500
    that says nothing."""

    async def on_problem(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, Problem)  # noqa: S101 - registered for Problem only
        return problem_response(exc.status, exc.detail, exc.headers, **exc.extra)

    async def on_validation(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)  # noqa: S101
        errors = [
            {
                "where": ".".join(str(part) for part in error.get("loc", ())),
                "problem": str(error.get("msg", "")),
            }
            for error in exc.errors()
        ]
        first = errors[0] if errors else {"where": "request", "problem": "is invalid"}
        return problem_response(422, f"{first['where']}: {first['problem']}", errors=errors[:50])

    async def on_http(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)  # noqa: S101
        detail = exc.detail if isinstance(exc.detail, str) else TITLES.get(exc.status_code, "")
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            # routers may share a path (GET and POST .../credits): name every method of it
            allowed = _methods_of(app, request.url.path)
            headers["Allow"] = ", ".join(allowed)
            detail = f"{request.method} is not served here; this path takes {', '.join(allowed)}"
        return problem_response(exc.status_code, detail, headers or None)

    async def on_out_of_range(_: Request, exc: Exception) -> JSONResponse:
        # dates past year 9999 (a period after 9999-12, say): input, not a fault of ours
        return problem_response(422, f"a time or number is out of range: {exc}")

    app.add_exception_handler(Problem, on_problem)
    app.add_exception_handler(OverflowError, on_out_of_range)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)

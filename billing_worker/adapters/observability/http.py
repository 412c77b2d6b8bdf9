"""``/metrics``, ``/healthz`` and ``/readyz`` on a small threaded WSGI server."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

StartResponse = Callable[..., Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


@dataclass
class Readiness:
    """What ``/readyz`` reports: each dependency up or down, with a note for humans.

    Written by the event loop, read by the HTTP thread; each write replaces a whole value.
    """

    checks: dict[str, bool] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)

    def set(self, name: str, ok: bool, note: str = "") -> None:
        """Record the state of dependency ``name``."""
        self.checks = {**self.checks, name: ok}
        if note:
            self.notes = {**self.notes, name: note}
        else:
            self.notes = {k: v for k, v in self.notes.items() if k != name}

    @property
    def ready(self) -> bool:
        """True when every dependency is up (and at least one was checked)."""
        checks = self.checks
        return bool(checks) and all(checks.values())


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        """Probes every few seconds are not news."""


def health_app(registry: CollectorRegistry, readiness: Readiness) -> WsgiApp:
    """The WSGI app serving the three endpoints."""
    metrics_app = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            return metrics_app(environ, start_response)  # type: ignore[no-any-return]
        if path == "/healthz":
            return _json(start_response, "200 OK", {"status": "ok"})
        if path == "/readyz":
            ready = readiness.ready
            body = {
                "status": "ready" if ready else "not ready",
                "checks": {k: "up" if v else "down" for k, v in readiness.checks.items()},
                "notes": readiness.notes,
            }
            return _json(start_response, "200 OK" if ready else "503 Service Unavailable", body)
        return _json(start_response, "404 Not Found", {"error": f"no such endpoint: {path}"})

    return app


def _json(start_response: StartResponse, status: str, body: object) -> list[bytes]:
    payload = json.dumps(body).encode()
    start_response(
        status,
        [("Content-Type", "application/json"), ("Content-Length", str(len(payload)))],
    )
    return [payload]


class HealthServer:
    """Serves ``health_app`` from a daemon thread; ``port`` is the bound port (0 picks one)."""

    def __init__(self, host: str, port: int, app: WsgiApp) -> None:
        self._server = make_server(
            host, port, app, server_class=ThreadingWSGIServer, handler_class=_QuietHandler
        )
        self.port: int = self._server.server_port
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="health-http", daemon=True
        )

    def start(self) -> None:
        """Begin serving."""
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and release the port."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

"""The layer rules of the package, read off every module's imports (lazy ones included):
each layer imports only those below it, no import circles, and the tools shipped in the
package (bench, chaos) are never loaded by what the worker runs."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import billing_worker

ROOT = Path(billing_worker.__file__).parent

ENTRY_POINTS = {"entrypoints", "api", "bench", "chaos", "__main__"}
"""Packages that run processes; nothing else may import them."""
TOOLS = {"bench", "chaos"}
"""Shipped tools, like pgbench: only entry points may import them."""
BELOW_SERVICE = {"domain"}
"""What the service layer may import of the package (besides itself)."""


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


@cache
def imports() -> dict[str, set[str]]:
    """Module -> the package modules it imports, at the top or inside functions."""
    graph: dict[str, set[str]] = {}
    for path in ROOT.rglob("*.py"):
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name.startswith("billing_worker")}
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
                "billing_worker"
            ):
                found.add(str(node.module))
        graph[module_name(path)] = found
    return graph


def offences(importer_layers: set[str] | None, target_layers: set[str]) -> Iterator[str]:
    """``importer -> target`` for imports of ``target_layers`` by modules outside
    ``importer_layers`` (or, with None, by any other layer)."""
    for module, targets in imports().items():
        here = layer(module)
        for target in targets:
            there = layer(target)
            if there not in target_layers or there == here:
                continue
            if importer_layers is None or here not in importer_layers:
                yield f"{module} -> {target}"


def test_service_imports_only_the_domain() -> None:
    """Use cases depend on ports, never on adapters, consumers or entry points."""
    outside = {layer(m) for m in imports()} - BELOW_SERVICE - {"service"}
    assert [o for o in offences(None, outside) if o.startswith("billing_worker.service.")] == []


def test_only_entry_points_import_entry_points() -> None:
    """Nothing below the entry points reaches up into them."""
    assert list(offences(ENTRY_POINTS, ENTRY_POINTS)) == []


def test_only_entry_points_import_the_tools() -> None:
    """bench and chaos are imported by the CLI that runs them (and by each other), by
    nothing else: not by the API process."""
    assert list(offences(ENTRY_POINTS - {"api"}, TOOLS)) == []


def test_there_are_no_import_circles() -> None:
    """No module reaches itself through its imports (a strongly connected component of
    more than one module)."""
    graph = imports()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for target in graph.get(module, ()):
            if target not in graph:
                continue
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            component = []
            while True:
                top = stack.pop()
                component.append(top)
                if top == module:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    assert circles == []


def test_the_worker_and_the_api_never_load_the_tools() -> None:
    """Importing what `run`, `api` and `stripe-relay` run loads no bench or chaos module."""
    code = (
        "import sys\n"
        "import billing_worker.entrypoints.cli, billing_worker.entrypoints.worker_process\n"
        "import billing_worker.api.server, billing_worker.entrypoints.stripe_relay\n"
        "print(sorted(m for m in sys.modules if m.startswith(('billing_worker.bench', "
        "'billing_worker.chaos'))))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"

"""Nothing reads the system's date except the one clock, so the suite runs on any day."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Reading the date: a call of one of these (as ``module.name`` or ``Class.name``).
DATE_READS = {
    ("datetime", "now"),
    ("datetime", "utcnow"),
    ("datetime", "today"),
    ("date", "today"),
    ("time", "time"),
    ("time", "time_ns"),
}
ALLOWED = {
    # the clock itself
    Path("billing_worker/adapters/clock.py"),
    # the suite's view of that clock: it computes the offset from the real date
    Path("tests/clock.py"),
}
# The publisher library runs in producers' processes, on their clocks, not the worker's.
ALLOWED_TREES = (Path("billing_worker/client"),)


def date_reads(path: Path) -> list[str]:
    """``line: call`` for each call in ``path`` that reads the system's date."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        owner = node.func.value
        name = owner.id if isinstance(owner, ast.Name) else getattr(owner, "attr", None)
        if (name, node.func.attr) in DATE_READS:
            found.append(f"{node.lineno}: {name}.{node.func.attr}()")
    return found


def python_files() -> list[Path]:
    files = []
    for tree in ("billing_worker", "schemas", "tests", "migrations"):
        for path in sorted((ROOT / tree).rglob("*.py")):
            relative = path.relative_to(ROOT)
            if relative in ALLOWED or relative.is_relative_to(ROOT / "tests" / "vendor"):
                continue
            if any(relative.is_relative_to(allowed) for allowed in ALLOWED_TREES):
                continue
            files.append(path)
    return files


def test_only_the_clock_reads_the_date() -> None:
    """No module of the worker, its tools or its tests calls datetime.now(), time.time()
    and the like: each takes the time from the process's clock (or a test's fixed date),
    which BILLING_CLOCK_OFFSET_SECONDS and BILLING_TEST_NOW can move."""
    offenders = {
        str(path.relative_to(ROOT)): reads for path in python_files() if (reads := date_reads(path))
    }
    assert offenders == {}


def test_the_check_finds_a_date_read(tmp_path: Path) -> None:
    """The scan above does see the calls it forbids, however the module was imported."""
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import datetime, time\n"
        "a = datetime.datetime.now()\n"
        "b = time.time()\n"
        "c = datetime.date.today()\n"
        "d = time.monotonic()\n",
        encoding="utf-8",
    )
    assert date_reads(sample) == [
        "2: datetime.now()",
        "3: time.time()",
        "4: date.today()",
    ]

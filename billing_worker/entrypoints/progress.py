"""Progress feedback for long commands (bench, dlq replay, rebuild, chaos, demo).

A bar on an interactive terminal; nothing at all when stderr is not a terminal (CI, pipes,
log collectors) or when ``BILLING_PROGRESS=off``. Output goes to stderr so that a command's
report on stdout (tables, ``--json``) stays clean.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TextIO

from tqdm import tqdm


def progress_enabled(stream: TextIO | None = None) -> bool:
    """Whether a bar should be drawn on ``stream`` (stderr by default)."""
    if os.environ.get("BILLING_PROGRESS", "").strip().lower() in ("off", "0", "false", "no"):
        return False
    target = sys.stderr if stream is None else stream
    isatty = getattr(target, "isatty", None)
    return bool(isatty and isatty())


@contextmanager
def progress(
    description: str, total: float | None = None, unit: str = "it", stream: TextIO | None = None
) -> Iterator[tqdm[Any]]:
    """A progress bar for ``total`` steps of ``unit``; call ``.update(n)`` as work is done.

    Disabled (every call a no-op) off a terminal, so callers never need to check.
    """
    target = sys.stderr if stream is None else stream
    bar = tqdm(
        total=total,
        desc=description,
        unit=unit,
        file=target,
        disable=not progress_enabled(target),
        dynamic_ncols=True,
        leave=False,
    )
    try:
        yield bar
    finally:
        bar.close()

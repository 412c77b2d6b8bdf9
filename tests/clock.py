"""The suite's clock: the worker's own, shifted when the suite runs as if on another day.

``BILLING_TEST_NOW=2028-02-29T12:00:00Z`` (see ``tests/conftest.py``) sets
BILLING_CLOCK_OFFSET_SECONDS for the whole session, so in-process workers, the CLI run from
tests and every worker process a test starts read that day, and so do the tests through
``now()``. Tests that need the present build their times from here, never from
``datetime.now``; tests of fixed dates pass them in explicitly.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime

from billing_worker.adapters.clock import OFFSET_VARIABLE, SystemClock

TARGET_VARIABLE = "BILLING_TEST_NOW"


def now() -> datetime:
    """What time it is for the worker processes of this test session."""
    return SystemClock.from_environment()()


def unix_now() -> int:
    """``now()`` as whole Unix seconds (Stripe's timestamps)."""
    return int(now().timestamp())


def child_env(**variables: str) -> dict[str, str]:
    """The environment of a child process: this one's without its BILLING_* settings, but on
    the session's clock, plus ``variables``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BILLING_")}
    if OFFSET_VARIABLE in os.environ:
        env[OFFSET_VARIABLE] = os.environ[OFFSET_VARIABLE]
    env.update(variables)
    return env


def travel_to(target: str) -> float:
    """Set this session's clock so that it reads ``target`` now; return the offset."""
    moment = datetime.fromisoformat(target.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        raise ValueError(f"{TARGET_VARIABLE} needs a time zone (e.g. Z): {target!r}")
    offset = (moment - datetime.now(UTC)).total_seconds()
    os.environ[OFFSET_VARIABLE] = repr(offset)
    return offset

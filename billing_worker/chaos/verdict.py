"""A check's verdict: whether an invariant held, and the figures behind it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Check:
    """One invariant: whether it held, and the figures behind the verdict."""

    name: str
    ok: bool
    detail: str

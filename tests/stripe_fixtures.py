"""Stripe's own example objects as test payloads, for both API versions the worker reads.

The objects are Stripe's published examples (``old.json``: API version 2024-06-20,
``new.json``: 2026-07-29.dahlia), kept beside the repository and read from there, never
copied into it. A test takes a deep copy and sets the fields its scenario needs::

    session = fixture("new", "checkout.session", mode="payment", client_reference_id="a")
    event = fixture_event("new", "checkout.session.completed", session, created=T)
"""

from __future__ import annotations

import copy
import functools
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final, Literal

from tests.stripe_payloads import JsonObject, new_id

FIXTURES: Final = Path(__file__).resolve().parents[1].parent / "shared" / "stripe-fixtures"
"""Where they are (``<repo>/../shared/stripe-fixtures``):
``old.json`` for API version 2024-06-20, ``new.json`` for 2026-07-29.dahlia."""

FIXTURE_API_VERSIONS: Final = {"old": "2024-06-20", "new": "2026-07-29.dahlia"}
"""The API version of each fixture file."""


@functools.cache
def _fixtures(version: str) -> dict[str, JsonObject]:
    path = FIXTURES / f"{version}.json"
    loaded: dict[str, JsonObject] = json.loads(path.read_text(encoding="utf-8"))
    return loaded


def fixture(version: Literal["old", "new"], key: str, **fields: Any) -> JsonObject:
    """A fresh deep copy of Stripe's example ``key`` object (``charge``, ``checkout.session``,
    ``customer``, ``invoice``, ``refund``, ``subscription``) of API ``version``, with
    ``fields`` set on it."""
    obj = copy.deepcopy(_fixtures(version)[key])
    obj.update(copy.deepcopy(fields))
    return obj


def fixture_event(
    version: Literal["old", "new"],
    type: str,  # noqa: A002 - the name of Stripe's field
    obj: Mapping[str, Any],
    *,
    created: int,
) -> JsonObject:
    """Stripe's example ``event`` of API ``version`` carrying a copy of ``obj`` as
    ``type``, with a fresh id, ``created`` and the version's ``api_version``."""
    envelope = fixture(version, "event")
    envelope.update(
        id=new_id("evt"),
        type=type,
        created=created,
        api_version=FIXTURE_API_VERSIONS[version],
        data={"object": copy.deepcopy(dict(obj))},
    )
    return envelope

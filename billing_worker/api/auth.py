"""Who is calling: an API key with its scope, or a portal token for one account.

API keys (``bwk_<id>_<secret>``) are looked up by their public id and compared by the hash
of their secret in constant time; a replica remembers a key it checked for
``KEY_CACHE_SECONDS``, so a revoked key stops working within that time everywhere.
Portal tokens (``bwp_<payload>.<signature>``) are signed with BILLING_API_TOKEN_SECRET
(HMAC-SHA256), name one account and expire; rotating the secret revokes them all.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime

import orjson

from billing_worker.adapters.postgres.api_keys import PostgresApiKeys, secret_hash, split_key
from billing_worker.api.problems import Problem

KEY_CACHE_SECONDS = 10.0
PORTAL_PREFIX = "bwp_"

# What each scope may do: read every GET (and the quota check and estimate, which change
# nothing), ingest POST /v1/events, write both and the changes, admin also invoice moves.
ALLOWED = {
    "read": frozenset({"read", "write", "admin"}),
    "ingest": frozenset({"ingest", "write", "admin"}),
    "write": frozenset({"write", "admin"}),
    "admin": frozenset({"admin"}),
}


@dataclass(frozen=True, slots=True)
class Caller:
    """An authenticated caller: a key (``scope``) or a portal token (``account``)."""

    name: str
    scope: str | None = None
    account: str | None = None

    def may(self, need: str) -> bool:
        """Whether this caller's scope covers ``need`` (a portal token: reads only)."""
        if self.account is not None:
            return need == "read"
        return self.scope in ALLOWED[need]


class KeyCheck:
    """API keys as this replica knows them (a short cache over the database)."""

    def __init__(self, keys: PostgresApiKeys, clock: Callable[[], float] = time.monotonic) -> None:
        self._keys = keys
        self._clock = clock
        self._cache: dict[str, tuple[float, str, str, bytes] | None] = {}

    async def caller(self, key: str) -> Caller | None:
        """The caller ``key`` identifies, or None (unknown, revoked or malformed)."""
        parts = split_key(key)
        if parts is None:
            return None
        key_id, secret = parts
        now = self._clock()
        cached = self._cache.get(key_id)
        if cached is None or now - cached[0] > KEY_CACHE_SECONDS:
            stored = await self._keys.find(key_id)
            cached = (
                None if stored is None else (now, stored.name, stored.scope, stored.secret_hash)
            )
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[key_id] = cached
        if cached is None or not hmac.compare_digest(cached[3], secret_hash(secret)):
            return None
        return Caller(name=cached[1], scope=cached[2])


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _signature(secret: str, payload: str) -> str:
    return _b64(hmac.new(secret.encode(), payload.encode(), hashlib.sha256).digest())


def portal_token(secret: str, account: str, expires_at: datetime) -> str:
    """A token that reads ``account`` until ``expires_at``."""
    payload = _b64(orjson.dumps({"a": account, "exp": int(expires_at.timestamp())}))
    return f"{PORTAL_PREFIX}{payload}.{_signature(secret, payload)}"


def portal_caller(secret: str | None, token: str, now: datetime) -> Caller:
    """The account a portal token reads; a 401 problem saying why when it can't be used."""
    if secret is None:
        raise Problem(401, "portal tokens are off: BILLING_API_TOKEN_SECRET is not set")
    body = token.removeprefix(PORTAL_PREFIX)
    payload, _, signature = body.partition(".")
    if not payload or not hmac.compare_digest(signature, _signature(secret, payload)):
        raise Problem(401, "portal token is not valid (wrong signature, or the secret changed)")
    try:
        claims = orjson.loads(_unb64(payload))
        account, expiry = str(claims["a"]), int(claims["exp"])
    except (binascii.Error, orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        raise Problem(401, "portal token is not valid (unreadable)") from None
    if expiry <= now.timestamp():
        raise Problem(401, "portal token has expired: mint a new one")
    return Caller(name=f"portal:{account}", account=account)


Authenticate = Callable[[str | None], Awaitable[Caller]]


def bearer(header: str | None) -> str:
    """The credential of an ``Authorization: Bearer`` header; 401 without one."""
    if not header:
        raise Problem(
            401, "no Authorization header: send Authorization: Bearer <key>",
            headers={"WWW-Authenticate": "Bearer"},
        )  # fmt: skip
    scheme, _, credential = header.partition(" ")
    if scheme.lower() != "bearer" or not credential.strip():
        raise Problem(
            401, "Authorization must be: Bearer <key>", headers={"WWW-Authenticate": "Bearer"}
        )
    return credential.strip()

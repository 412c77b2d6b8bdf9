"""API keys on PostgreSQL: created once (the key is shown then, never stored), found by
their public id, compared by a hash of their secret, revoked by name."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

SCOPES = ("read", "ingest", "write", "admin")
PREFIX = "bwk"

CREATE = text("""
    INSERT INTO api_keys (name, key_id, secret_hash, scope, created_at)
    VALUES (:name, :key_id, :hash, :scope, :at)
""")
REVOKE = text("""
    UPDATE api_keys SET revoked_at = :at WHERE name = :name AND revoked_at IS NULL
""")
FIND = text("""
    SELECT name, scope, secret_hash FROM api_keys WHERE key_id = :key_id AND revoked_at IS NULL
""")
LIST = text("SELECT name, scope, key_id, created_at, revoked_at FROM api_keys ORDER BY name")


class KeyNameTaken(Exception):
    """A key of that name exists (revoked keys keep their name: pick another)."""


@dataclass(frozen=True, slots=True)
class StoredKey:
    """A key as the database knows it: never the secret itself."""

    name: str
    scope: str
    secret_hash: bytes


def secret_hash(secret: str) -> bytes:
    """SHA-256 of a key's secret part (256 random bits: nothing to brute-force)."""
    return hashlib.sha256(secret.encode()).digest()


def split_key(key: str) -> tuple[str, str] | None:
    """(key id, secret) of a well-formed key ``bwk_<id>_<secret>``, else None."""
    parts = key.split("_", 2)
    if len(parts) != 3 or parts[0] != PREFIX or not parts[1] or not parts[2]:
        return None
    return parts[1], parts[2]


class PostgresApiKeys:
    """Creates, revokes and finds API keys, each call its own transaction."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def create(self, name: str, scope: str, now: datetime) -> str:
        """A new key named ``name`` with ``scope``; returns the key, which only the caller
        will ever see."""
        if scope not in SCOPES:
            raise ValueError(f"scope must be one of {', '.join(SCOPES)}, not {scope!r}")
        key_id, secret = secrets.token_hex(8), secrets.token_urlsafe(32)
        try:
            async with self._engine.begin() as conn:
                await conn.execute(
                    CREATE,
                    {
                        "name": name,
                        "key_id": key_id,
                        "hash": secret_hash(secret),
                        "scope": scope,
                        "at": now,
                    },
                )
        except IntegrityError as exc:
            raise KeyNameTaken(f"an API key named {name!r} exists already") from exc
        return f"{PREFIX}_{key_id}_{secret}"

    async def revoke(self, name: str, now: datetime) -> bool:
        """Revoke the key named ``name``; False if there is no such live key."""
        async with self._engine.begin() as conn:
            result = await conn.execute(REVOKE, {"name": name, "at": now})
        return bool(result.rowcount)

    async def find(self, key_id: str) -> StoredKey | None:
        """The live key with public id ``key_id``."""
        async with self._engine.connect() as conn:
            row = (await conn.execute(FIND, {"key_id": key_id})).first()
        return None if row is None else StoredKey(str(row[0]), str(row[1]), bytes(row[2]))

    async def listed(self) -> list[dict[str, object]]:
        """Every key ever made: name, scope, public id, created, revoked."""
        async with self._engine.connect() as conn:
            rows = (await conn.execute(LIST)).all()
        return [
            {
                "name": name,
                "scope": scope,
                "key_id": key_id,
                "created_at": created.isoformat(),
                "revoked_at": revoked.isoformat() if revoked else None,
            }
            for name, scope, key_id, created, revoked in rows
        ]

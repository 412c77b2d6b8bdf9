"""Create the database if missing, migrate it under a lock, and build the async engine."""

from __future__ import annotations

import importlib.resources
from pathlib import Path

import psycopg
import structlog
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, make_url, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

log = structlog.get_logger(__name__)

MIGRATION_LOCK_ID = 0x62696C6C  # "bill": one advisory lock, so replicas migrate one at a time


def migrations_dir() -> Path:
    """Where the Alembic scripts are: inside an installed wheel, or the repository checkout."""
    packaged = Path(str(importlib.resources.files("billing_worker"))) / "_migrations"
    if (packaged / "env.py").exists():
        return packaged
    checkout = Path(__file__).resolve().parents[3] / "migrations"
    if (checkout / "env.py").exists():
        return checkout
    raise FileNotFoundError("the Alembic migrations are neither packaged nor in a checkout")


def alembic_config(url: URL) -> Config:
    """An Alembic configuration built in code (no alembic.ini needed)."""
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    config.set_main_option(
        "sqlalchemy.url", url.render_as_string(hide_password=False).replace("%", "%%")
    )
    return config


class SchemaNotReady(Exception):
    """The database or its schema is missing or behind, and this role may not fix it."""


def _refused(exc: BaseException) -> bool:
    return isinstance(getattr(exc, "orig", None), psycopg.errors.InsufficientPrivilege)


def redacted(url: str | URL) -> str:
    """The URL with any password masked, safe to log."""
    return make_url(url).render_as_string(hide_password=True)


def ensure_database(url: URL) -> bool:
    """Create the target database if it does not exist; return whether it was created.

    Safe when several replicas race: the loser sees ``duplicate_database`` and moves on.
    """
    if not url.database:
        raise ValueError("BILLING_DATABASE_URL names no database")
    admin = url.set(database="postgres")
    engine = create_engine(admin, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            exists = conn.execute(
                text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": url.database}
            ).scalar()
            if exists:
                return False
            quoted = conn.dialect.identifier_preparer.quote(url.database)
            try:
                conn.execute(text(f"CREATE DATABASE {quoted}"))
            except Exception as exc:  # translated below when it is the benign race
                if isinstance(
                    getattr(exc, "orig", None),
                    psycopg.errors.DuplicateDatabase | psycopg.errors.UniqueViolation,
                ):
                    return False
                if _refused(exc):
                    raise SchemaNotReady(
                        f"database {url.database!r} does not exist and role {url.username!r} "
                        "may not create it: create it, then run `billing-worker migrate` "
                        "as its owner"
                    ) from exc
                raise
            log.info("database_created", database=url.database)
            return True
    finally:
        engine.dispose()


def migrate(url: URL) -> str | None:
    """Bring the schema to the newest revision; return it. Replicas serialise on a lock.

    A schema already at the newest revision is left alone after one read of its version,
    so a runtime role without DDL rights starts once the owner has migrated; behind it,
    such a role gets ``SchemaNotReady`` naming both revisions, not a half-run migration.
    """
    config = alembic_config(url)
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            current = MigrationContext.configure(conn).get_current_revision()
            conn.commit()
            if current is not None and current == head_revision():
                log.info("database_migrated", revision=current)
                return current
            conn.execute(text("SELECT pg_advisory_lock(:id)"), {"id": MIGRATION_LOCK_ID})
            conn.commit()
            try:
                config.attributes["connection"] = conn
                try:
                    command.upgrade(config, "head")
                except Exception as exc:
                    conn.rollback()  # so the lock can be released on this connection
                    if _refused(exc):
                        raise SchemaNotReady(
                            f"the schema is at revision {current or '(none)'}, this worker "
                            f"needs {head_revision()}, and role {url.username!r} may not "
                            "change it: run `billing-worker migrate` as the database owner"
                        ) from exc
                    raise
                conn.commit()
                head = MigrationContext.configure(conn).get_current_revision()
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:id)"), {"id": MIGRATION_LOCK_ID})
                conn.commit()
    finally:
        engine.dispose()
    log.info("database_migrated", revision=head)
    return head


def head_revision() -> str | None:
    """The newest revision the packaged migrations know."""
    return ScriptDirectory.from_config(alembic_config(URL.create("postgresql"))).get_current_head()


def check_schema(url: str) -> str | None:
    """The schema's revision if it is the newest this version knows; changes nothing.

    For the commands that read or steer an existing database: only ``run`` and ``migrate``
    create or migrate it. Raises ``SchemaNotReady`` naming what to run when the database
    is missing or behind (or ahead: a newer billing-worker migrated it), and lets
    ``OperationalError`` through when the server can't be reached.
    """
    parsed = make_url(url)
    engine = create_engine(parsed)
    try:
        with engine.connect() as conn:
            current = MigrationContext.configure(conn).get_current_revision()
    except OperationalError as exc:
        if _database_missing(parsed):
            raise SchemaNotReady(
                f"database {parsed.database!r} does not exist: `billing-worker migrate` (or "
                "starting the worker) creates it"
            ) from exc
        raise
    finally:
        engine.dispose()
    head = head_revision()
    if current != head:
        raise SchemaNotReady(
            f"the schema of database {parsed.database!r} is at revision "
            f"{current or '(none)'} and this billing-worker needs {head}: run "
            "`billing-worker migrate` (this command changes nothing)"
        )
    return current


def _database_missing(url: URL) -> bool:
    """Whether the server answers that ``url``'s database does not exist (False when that
    can't be asked either: the failure is then the connection's own)."""
    engine = create_engine(url.set(database="postgres"))
    try:
        with engine.connect() as conn:
            found = conn.execute(
                text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": url.database}
            ).scalar()
    except OperationalError:
        return False
    finally:
        engine.dispose()
    return found is None


def prepare_database(url: str) -> str | None:
    """Create if missing, then migrate: what ``billing-worker run`` does before consuming."""
    parsed = make_url(url)
    ensure_database(parsed)
    return migrate(parsed)


def create_engine_for(url: str, *, pool_size: int) -> AsyncEngine:
    """The worker's async engine.

    No pre-ping: it costs a round trip per transaction, and a connection that died while
    idle already fails as a transient error, whose retry gets a fresh connection.
    """
    return create_async_engine(url, pool_size=pool_size, max_overflow=0, pool_recycle=1800)

"""The private servers the fault scenarios stop and restart: theirs alone, and gone after."""

from __future__ import annotations

import os

import psycopg
import pytest

from billing_worker.chaos.servers import PrivatePostgres, postgres_bindir

pytestmark = pytest.mark.skipif(
    postgres_bindir() is None, reason="needs the PostgreSQL server binaries (initdb, pg_ctl)"
)


def port_answers(port: int) -> bool:
    try:
        psycopg.connect(
            f"postgresql://postgres@127.0.0.1:{port}/postgres", connect_timeout=2
        ).close()
    except psycopg.OperationalError:
        return False
    return True


def test_private_postgres_survives_restarts_then_leaves_nothing_behind() -> None:
    """Data written before a fast and an immediate restart is still there; after ``close``
    the port answers no more and the cluster's directory is gone."""
    server = PrivatePostgres("test")
    try:
        server.start()
        port, url = server.port, server.server_url.replace("+psycopg", "")
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE TABLE kept (n int)")
            conn.execute("INSERT INTO kept VALUES (1)")
        server.restart("fast")
        server.restart("immediate")
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT n FROM kept").fetchall() == [(1,)]
        data = server.data_directory
    finally:
        server.close()
    assert not port_answers(port)
    assert not os.path.exists(data)

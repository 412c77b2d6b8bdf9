"""A PostgreSQL cluster of a chaos run's own: ``initdb`` in a temporary directory, a free
port, trust authentication; stopped, restarted or crashed at will, removed afterwards."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Self

from billing_worker.chaos.servers.common import (
    LIVE,
    ServerUnavailable,
    as_user,
    free_port,
    give_to,
    run_command,
)


def postgres_bindir() -> Path | None:
    """Where ``initdb`` and ``pg_ctl`` are: the newest Debian-style version, or on PATH."""
    versions = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0,
    )
    if versions:
        return Path(versions[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


class PrivatePostgres:
    """A PostgreSQL cluster of its own (trust auth, user ``postgres``, fsync off)."""

    USER = "postgres"

    def __init__(self, label: str = "chaos") -> None:
        self._label = label
        self.port = 0
        self._dir: Path | None = None
        self._bin: Path | None = None

    @property
    def data_directory(self) -> Path:
        """The temporary directory holding the cluster (removed by ``close``)."""
        if self._dir is None:
            raise RuntimeError("server not started")
        return self._dir

    @property
    def server_url(self) -> str:
        """SQLAlchemy URL of the maintenance database."""
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        """Create the cluster on first start, then start it (and wait until it accepts)."""
        if self._dir is None:
            self._bin = postgres_bindir()
            if self._bin is None:
                raise ServerUnavailable("PostgreSQL server binaries (initdb, pg_ctl) not found")
            self._dir = Path(tempfile.mkdtemp(prefix=f"billing-{self._label}-pg-"))
            give_to(self.USER, self._dir)
            LIVE.add(self)
            run_command(
                as_user(
                    self.USER,
                    [
                        *(str(self._bin / "initdb"), "-D", str(self._data), "-U", "postgres"),
                        *("-A", "trust", "-E", "UTF8", "--no-locale", "--no-sync"),
                    ],
                ),
                "initdb",
            )
            self.port = free_port()
        options = (
            f"-p {self.port} -k {self._dir} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c max_connections=200"
        )
        run_command(
            self._pg_ctl("-l", str(self._dir / "server.log"), "-t", "60", "start", "-o", options),
            "pg_ctl start",
        )

    def stop(self, mode: str = "fast") -> None:
        """Stop: ``fast`` disconnects everyone and shuts down cleanly, ``immediate`` crashes."""
        run_command(self._pg_ctl("-m", mode, "stop"), f"pg_ctl stop -m {mode}")

    def restart(self, mode: str = "fast") -> None:
        """Stop (``mode``) and start again on the same port."""
        self.stop(mode)
        self.start()

    def close(self) -> None:
        """Stop at once and remove the cluster's files."""
        if self._dir is None:
            return
        with contextlib.suppress(ServerUnavailable):
            self.stop("immediate")
        pid_file = self._data / "postmaster.pid"
        if pid_file.exists():  # pg_ctl failed to stop it: make sure it goes
            with contextlib.suppress(ValueError, OSError):
                os.kill(int(pid_file.read_text().split()[0]), signal.SIGKILL)
        shutil.rmtree(self._dir, ignore_errors=True)
        self._dir = None
        LIVE.discard(self)

    @property
    def _data(self) -> Path:
        if self._dir is None:
            raise RuntimeError("server not started")
        return self._dir / "data"

    def _pg_ctl(self, *args: str) -> list[str]:
        if self._bin is None:
            raise RuntimeError("server not started")
        return as_user(self.USER, [str(self._bin / "pg_ctl"), "-D", str(self._data), "-w", *args])

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

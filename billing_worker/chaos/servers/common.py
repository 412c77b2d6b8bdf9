"""What the private servers share: running their admin commands (as their service user when
we are root), free ports, and removing every server still up when the interpreter exits."""

from __future__ import annotations

import atexit
import os
import pwd
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Protocol

COMMAND_TIMEOUT_SECONDS = 120.0


class PrivateServer(Protocol):
    """A server a chaos run started and must remove."""

    def close(self) -> None:
        """Stop the server and remove its files."""
        ...


LIVE: set[PrivateServer] = set()
"""Servers started and not closed yet (closed at interpreter exit at the latest)."""


class ServerUnavailable(Exception):
    """A private server can't be started here (binaries or service user missing, or it failed)."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(port: int) -> bool:
    """Whether something accepts connections on 127.0.0.1:``port``."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def as_user(user: str, argv: list[str], env: dict[str, str] | None = None) -> list[str]:
    """``argv`` run as ``user`` when we are root (as ourselves otherwise), with ``env`` set."""
    prefix = ["/usr/bin/env", *(f"{k}={v}" for k, v in (env or {}).items())] if env else []
    if os.geteuid() != 0:
        return [*prefix, *argv]
    runuser = shutil.which("runuser")
    if runuser is None:
        raise ServerUnavailable("running as root needs runuser to drop to the service user")
    try:
        pwd.getpwnam(user)
    except KeyError as exc:
        raise ServerUnavailable(f"running as root needs the service user {user!r}") from exc
    return [runuser, "-u", user, "--", *prefix, *argv]


def give_to(user: str, *paths: Path) -> None:
    """Make ``paths`` the service user's when we are root (it runs the server)."""
    if os.geteuid() == 0:
        for path in paths:
            shutil.chown(path, user)


def run_command(argv: list[str], what: str, timeout: float = COMMAND_TIMEOUT_SECONDS) -> str:
    """Run a server's admin command; raise ``ServerUnavailable`` with its output if it fails."""
    try:
        done = subprocess.run(  # noqa: S603 - fixed server binaries, arguments built here
            argv, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise ServerUnavailable(f"{what}: no answer after {timeout:g}s") from exc
    if done.returncode != 0:
        raise ServerUnavailable(f"{what} failed ({done.returncode}): {done.stderr or done.stdout}")
    return done.stdout


@atexit.register
def _close_leftovers() -> None:
    """A run interrupted before its ``finally`` still takes its private servers down."""
    for server in list(LIVE):
        server.close()

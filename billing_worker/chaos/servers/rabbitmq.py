"""A RabbitMQ node of a chaos run's own: its own node name, ports, data, logs and Erlang
cookie, so stopping it never touches the machine's broker; removed afterwards."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from types import TracebackType
from typing import Self

from billing_worker.chaos.servers.common import (
    COMMAND_TIMEOUT_SECONDS,
    LIVE,
    ServerUnavailable,
    as_user,
    free_port,
    give_to,
    port_open,
    run_command,
)

RABBITMQ_BOOT_SECONDS = 120.0


def rabbitmq_sbindir() -> Path | None:
    """Where the real ``rabbitmq-server`` script is (not a distribution's ``su`` wrapper)."""
    for candidate in ("/usr/lib/rabbitmq/bin", *glob.glob("/usr/lib/rabbitmq/lib/*/sbin")):
        if (Path(candidate) / "rabbitmq-server").exists():
            return Path(candidate)
    server = shutil.which("rabbitmq-server")
    return Path(server).resolve().parent if server else None


class PrivateRabbitMQ:
    """A RabbitMQ node of its own: its own name, ports, data, logs and Erlang cookie."""

    USER = "rabbitmq"

    def __init__(self, label: str = "chaos") -> None:
        self.node = f"bw{label}-{os.getpid()}-{uuid.uuid4().hex[:6]}@localhost"
        self.port = 0
        self._dist_port = 0
        self._dir: Path | None = None
        self._sbin: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def amqp_url(self) -> str:
        """The node's AMQP URL (the default guest user, allowed on loopback)."""
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    def start(self) -> None:
        """Boot the node (creating its files the first time) and wait until it serves."""
        if self._dir is None:
            self._prepare()
        if self._process is not None and self._process.poll() is None:
            raise RuntimeError("node already running")
        log = (self._path / "console.log").open("ab")
        try:
            self._process = subprocess.Popen(  # noqa: S603 - the server script, fixed arguments
                as_user(self.USER, [str(self._sbin_dir / "rabbitmq-server")], self._env()),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # one process group to kill, whatever it spawned
            )
        finally:
            log.close()
        self._await_startup()

    def stop(self) -> None:
        """Stop the node (every connection drops, the port closes) and wait for it to exit."""
        self.ctl("stop")
        if self._process is not None:
            try:
                self._process.wait(timeout=COMMAND_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                self._kill_group()

    def restart(self) -> None:
        """Stop the node and boot it again (same ports, same data)."""
        self.stop()
        self.start()

    def stop_app(self) -> None:
        """Stop the broker application only: connections drop and the AMQP port closes."""
        self.ctl("stop_app")

    def start_app(self) -> None:
        """Start the broker application again."""
        self.ctl("start_app")
        self._await_startup()

    def ctl(self, *args: str) -> str:
        """``rabbitmqctl -n <this node> args...``; its output."""
        argv = [str(self._sbin_dir / "rabbitmqctl"), "-n", self.node, *args]
        return run_command(as_user(self.USER, argv, self._env()), f"rabbitmqctl {' '.join(args)}")

    def close(self) -> None:
        """Stop the node (killing it if it will not stop) and remove its files."""
        if self._dir is None:
            return
        if self._process is not None and self._process.poll() is None:
            with contextlib.suppress(ServerUnavailable):
                self.ctl("stop")
            try:
                self._process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._kill_group()
        shutil.rmtree(self._dir, ignore_errors=True)
        self._dir = None
        LIVE.discard(self)

    def _prepare(self) -> None:
        self._sbin = rabbitmq_sbindir()
        if self._sbin is None or shutil.which("erl") is None:
            raise ServerUnavailable("RabbitMQ server scripts (rabbitmq-server) or Erlang not found")
        self._dir = Path(tempfile.mkdtemp(prefix="billing-chaos-rabbitmq-"))
        LIVE.add(self)
        self.port, self._dist_port = free_port(), free_port()
        # Only our listener: the machine's rabbitmq.conf would bind the shared port too.
        (self._dir / "rabbitmq.conf").write_text(f"listeners.tcp.1 = 127.0.0.1:{self.port}\n")
        (self._dir / "enabled_plugins").write_text("[].\n")  # no management on 15672
        (self._dir / "rabbitmq-env.conf").write_text("")  # not the machine's env file
        for path in (self._dir, *self._dir.iterdir()):
            give_to(self.USER, path)

    def _env(self) -> dict[str, str]:
        d = self._path
        return {
            "HOME": str(d),  # the Erlang cookie of this node and its CLI lives here
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self._dist_port),
            "RABBITMQ_MNESIA_BASE": str(d / "mnesia"),
            "RABBITMQ_LOG_BASE": str(d / "log"),
            "RABBITMQ_CONFIG_FILE": str(d / "rabbitmq.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(d / "enabled_plugins"),
            "RABBITMQ_CONF_ENV_FILE": str(d / "rabbitmq-env.conf"),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "ERL_FLAGS": "-kernel inet_dist_use_interface {127,0,0,1}",
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        }

    def _await_startup(self) -> None:
        """Until the AMQP port answers (cheap to poll), then until the broker says it booted."""
        deadline = time.monotonic() + RABBITMQ_BOOT_SECONDS
        while not port_open(self.port):
            if self._process is not None and self._process.poll() is not None:
                tail = (self._path / "console.log").read_text(errors="replace")[-2000:]
                raise ServerUnavailable(f"RabbitMQ node {self.node} exited while booting:\n{tail}")
            if time.monotonic() > deadline:
                raise ServerUnavailable(f"RabbitMQ node {self.node} not up after the boot timeout")
            time.sleep(0.1)
        self.ctl("await_startup", "--timeout", str(int(RABBITMQ_BOOT_SECONDS)))

    def _kill_group(self) -> None:
        if self._process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._process.pid, signal.SIGKILL)
            self._process.wait()

    @property
    def _path(self) -> Path:
        if self._dir is None:
            raise RuntimeError("node not prepared")
        return self._dir

    @property
    def _sbin_dir(self) -> Path:
        if self._sbin is None:
            raise RuntimeError("node not prepared")
        return self._sbin

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

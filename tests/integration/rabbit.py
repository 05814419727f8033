"""A private RabbitMQ broker on 127.0.0.1 for the integration tests.

Debian's rabbitmq-server (``apt-get install rabbitmq-server``), started as a
child process with every RABBITMQ_* path in a private directory, its own node
name, AMQP and distribution ports on loopback, and its own epmd (started here
in the foreground on a private port, so it too is stopped by PID). About 4 s
to come up.
"""
from __future__ import annotations

import glob
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from gwagent.lab import broker


def _server_script() -> str | None:
    found = sorted(glob.glob("/usr/lib/rabbitmq/lib/rabbitmq_server-*/sbin/rabbitmq-server"))
    return found[-1] if found else None


def available() -> bool:
    return _server_script() is not None and os.path.exists("/usr/bin/epmd")


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


class Rabbit:
    def __init__(self, workdir: str | os.PathLike, port: int = 56720, dist_port: int = 25720,
                 epmd_port: int = 43690, node: str = "gwtest", vhosts: tuple[str, ...] = ()):
        self.workdir = Path(workdir)
        self.vhosts = tuple(vhosts)  # defined at boot (rabbitmqctl takes ~2 s a call)
        self.port, self.dist_port, self.epmd_port, self.node = port, dist_port, epmd_port, node
        self.procs: list[subprocess.Popen] = []
        self.env: dict = {}

    @property
    def url(self) -> str:
        return f"rabbit://guest:guest@127.0.0.1:{self.port}/"

    def vhost_url(self, vhost: str) -> str:
        """A transport URL on a new virtual host: sites sharing a broker need
        one each (queues are named by topic, not by exchange)."""
        if vhost in self.vhosts:
            return f"rabbit://guest:guest@127.0.0.1:{self.port}/{vhost}"
        ctl = Path(_server_script()).with_name("rabbitmqctl")
        for args in (["add_vhost", vhost], ["set_permissions", "-p", vhost, "guest", ".*", ".*",
                                           ".*"]):
            subprocess.run([str(ctl), "-n", f"{self.node}@localhost", *args], env=self.env,
                           check=True, capture_output=True, timeout=60)
        return f"rabbit://guest:guest@127.0.0.1:{self.port}/{vhost}"

    def start(self, timeout: float = 60.0) -> "Rabbit":
        script = _server_script()
        if script is None:
            raise RuntimeError("rabbitmq-server is not installed (apt-get install rabbitmq-server)")
        if _port_open(self.port):
            raise RuntimeError(f"127.0.0.1:{self.port} is already in use")
        w = self.workdir
        w.mkdir(parents=True, exist_ok=True)
        broker.prepare(w, self.port, self.vhosts)
        env = broker.environment(w, f"{self.node}@localhost", self.port, self.dist_port,
                                 self.epmd_port)
        self.env = env
        log = open(w / "server.log", "ab")
        self.procs.append(subprocess.Popen(
            ["/usr/bin/epmd", "-port", str(self.epmd_port), "-address", "127.0.0.1"],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
        time.sleep(0.3)
        self.procs.append(subprocess.Popen([script], env=env, stdout=log,
                                           stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                           start_new_session=True))
        deadline = time.monotonic() + timeout
        while not _port_open(self.port):
            if any(p.poll() is not None for p in self.procs) or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"RabbitMQ did not start; see {w / 'server.log'}")
            time.sleep(0.2)
        return self

    def stop(self) -> None:
        # The broker first (its process group: the script and beam.smp), then epmd.
        for proc in reversed(self.procs):
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
                try:
                    proc.wait(3)  # a test broker's queues need no clean stop
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(5)
        self.procs.clear()

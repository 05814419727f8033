"""Start and stop a real Neutron API server for one site (tests, bench, lab).

Test and lab infrastructure, not product code: it lived in ``gwagent.neutron``
until the lab became a client of the product (issue 8); the gateway never
starts a Neutron.

Neutron 29 has no ``neutron-server`` command: the API is the WSGI app
``neutron.wsgi.api:application``, served here by uwsgi from the separate
Neutron venv (``tools/setup-neutron-venv.sh``). The server keeps its whole
state in ``workdir``: configuration, an SQLite database (tables created from
the models and stamped, since SQLite cannot run the migrations) and logs.
Restarting a server on the same ``workdir`` keeps its ports.

With a ``transport_url`` (RabbitMQ), Neutron also publishes its
notifications there (``driver = messagingv2``), as a deployer enables them
for Ceilometer or for gateways; and an RPC server (``neutron-rpc-server``)
runs beside the API: it is what L2 agents talk to (``report_state``,
``update_device_up``), and it is where Neutron tells the mechanism drivers
that a device came up on an agent. Without one, ``fake://`` is used and the
API runs alone.

Everything listens on 127.0.0.1. Processes are started in their own session
and stopped by their process-group id, never by name.

    handle = start("site-a", "/tmp/a", 19696)
    handle.url   # http://127.0.0.1:19696
    handle.stop()
"""
from __future__ import annotations

import contextlib
import dataclasses
import http.client
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEFAULT_VENV = Path(os.environ.get("GWAGENT_NEUTRON_VENV", REPO / ".venv-neutron"))

MECHANISM_DRIVERS = "gwagent,openvswitch,l2population"


class NeutronStartError(RuntimeError):
    """The server did not come up; the message carries the log's tail."""


def _conf(site: str, workdir: Path, port: int, transport_url: str, vni_range: str,
          mechanism_drivers: str, venv: Path) -> str:
    return textwrap.dedent(f"""\
        [DEFAULT]
        host = {site}-neutron
        core_plugin = ml2
        service_plugins =
        auth_strategy = noauth
        transport_url = {transport_url}
        # One broker may serve several sites: each site its own exchange.
        control_exchange = neutron-{site}
        bind_host = 127.0.0.1
        bind_port = {port}
        state_path = {workdir}
        api_workers = 1
        rpc_workers = 1
        rpc_state_report_workers = 0
        allow_overlapping_ips = true
        notify_nova_on_port_status_changes = false
        notify_nova_on_port_data_changes = false
        debug = false
        use_stderr = true

        api_paste_config = {venv}/etc/neutron/api-paste.ini

        [database]
        connection = sqlite:///{workdir}/neutron.db?timeout=30

        [oslo_concurrency]
        lock_path = {workdir}/lock

        [quotas]
        # Remote ports count against their network's project: no limits here.
        quota_port = -1
        quota_network = -1
        quota_subnet = -1

        [ml2]
        type_drivers = vxlan
        tenant_network_types = vxlan
        mechanism_drivers = {mechanism_drivers}
        extension_drivers =

        [ml2_type_vxlan]
        vni_ranges = {vni_range}

        [securitygroup]
        # true: Neutron disables allowed-address-pairs with security groups
        enable_security_group = true

        [agent]
        report_interval = 0
        """) + ("" if transport_url.startswith("fake:") else textwrap.dedent("""
        [oslo_messaging_notifications]
        # port.create.end, port.update.end, port.delete.end on the topic
        # "notifications" of the control exchange: what gateways hear
        driver = messagingv2
        """))


_DB_SCRIPT = """
import sys
import sqlalchemy
from neutron.db.migration.models import head
engine = sqlalchemy.create_engine(sys.argv[1])
head.get_metadata().create_all(engine)
"""


@dataclasses.dataclass
class NeutronServer:
    """A running Neutron site: ``url`` for clients, ``stop()`` to end it."""

    site: str
    workdir: Path
    port: int
    venv: Path
    transport_url: str
    procs: dict = dataclasses.field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def conf_file(self) -> Path:
        return self.workdir / "neutron.conf"

    @property
    def log_file(self) -> Path:
        return self.workdir / "neutron-api.log"

    @property
    def with_rpc(self) -> bool:
        return not self.transport_url.startswith("fake:")

    # -- lifecycle ----------------------------------------------------------
    def start(self, timeout: float = 60.0) -> "NeutronServer":
        self.spawn()
        try:
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _env(self) -> dict:
        env = dict(os.environ, OS_NEUTRON_CONFIG_DIR=str(self.workdir),
                   OS_NEUTRON_CONFIG_FILES="neutron.conf")
        env.pop("PYTHONPATH", None)
        return env

    def spawn(self) -> None:
        """Start the API without waiting (see :meth:`wait_ready`)."""
        env = self._env()
        bindir = self.venv / "bin"
        api_log = open(self.log_file, "ab")
        self.procs["api"] = subprocess.Popen(
            [str(bindir / "uwsgi"), "--http-socket", f"127.0.0.1:{self.port}",
             "--module", "neutron.wsgi.api:application", "--master", "--processes", "1",
             # One thread: SQLite takes one writer at a time, and concurrent
             # writers in one API (the lab creating ports while a gateway
             # registers remote ports) failed mid-request with "database is
             # locked", after which Neutron had leaked IP allocations.
             "--threads", "1", "--die-on-term", "--need-app", "--lazy-apps",
             "--buffer-size", "65535",
             # uwsgi closes after each response: say so, or clients reuse
             # the socket and get a reset.
             "--add-header", "Connection: close",
             "--home", str(self.venv), "--pidfile", str(self.workdir / "uwsgi.pid")],
            cwd=self.workdir, env=env, stdout=api_log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True)

    def wait_ready(self, timeout: float, start_rpc: bool = True) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise NeutronStartError(
                        f"Neutron {name} of site {self.site} exited with {proc.returncode}; "
                        f"log tail:\n{self.log_tail()}")
            if self.ping():
                # The RPC server only once the API has written its start-up
                # state (VNI allocations): SQLite takes one writer at a time.
                if start_rpc and self.with_rpc and "rpc" not in self.procs:
                    rpc_log = open(self.workdir / "neutron-rpc.log", "ab")
                    self.procs["rpc"] = subprocess.Popen(
                        [str(self.venv / "bin" / "neutron-rpc-server"), "--config-file",
                         str(self.conf_file)],
                        cwd=self.workdir, env=self._env(), stdout=rpc_log,
                        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                        start_new_session=True)
                return
            time.sleep(0.2)
        raise NeutronStartError(f"Neutron API of site {self.site} not answering on {self.url} "
                                f"after {timeout:.0f} s; log tail:\n{self.log_tail()}")

    def ping(self) -> bool:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
            conn.request("GET", "/v2.0/networks?limit=1", headers={"Connection": "close"})
            ok = conn.getresponse().status == 200
            conn.close()
            return ok
        except OSError:
            return False

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, timeout: float = 2.0) -> None:
        """Stop every process this handle started (by process group id):
        SIGTERM, then SIGKILL after ``timeout``. Neither the API (uwsgi)
        nor the RPC server (oslo.service's graceful shutdown) stopped
        within 5 s of SIGTERM here, and a test's database needs no clean
        shutdown: waiting 15 s made every stop cost 15 s."""
        for proc in self.procs.values():
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + timeout
        for proc in self.procs.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(5)
        self.procs.clear()

    @property
    def running(self) -> bool:
        return any(p.poll() is None for p in self.procs.values())


def prepare(site: str, workdir: str | os.PathLike, port: int, *,
            transport_url: str = "fake://", vni_range: str = "1000:1999",
            mechanism_drivers: str = MECHANISM_DRIVERS,
            venv: str | os.PathLike = DEFAULT_VENV) -> NeutronServer:
    """Write the configuration and create the database (once) in ``workdir``."""
    workdir = Path(workdir).resolve()
    venv = Path(venv)
    if not (venv / "bin" / "uwsgi").exists():
        raise NeutronStartError(f"no Neutron venv at {venv} (run tools/setup-neutron-venv.sh)")
    (workdir / "lock").mkdir(parents=True, exist_ok=True)
    server = NeutronServer(site, workdir, port, venv, transport_url)
    server.conf_file.write_text(_conf(site, workdir, port, transport_url, vni_range,
                                      mechanism_drivers, venv))
    if not (workdir / "neutron.db").exists():
        _copy_template_db(venv, workdir / "neutron.db", site)
    return server


def _copy_template_db(venv: Path, dest: Path, site: str) -> None:
    """Copy an empty, stamped database; the first call creates it in the
    venv (about 8 s), later ones copy it (milliseconds)."""
    template = venv / "gwagent-neutron-template.db"
    if not template.exists():
        _create_db(venv, template, site)
    tmp = dest.with_suffix(".tmp")
    shutil.copyfile(template, tmp)
    # WAL: readers no longer block the writer. In the default rollback
    # journal, the API's and the RPC server's concurrent requests (the
    # gateway registering while the lab creates ports) failed with
    # "database is locked" mid-request, and Neutron then leaked IP
    # allocations ("already allocated" for an address no port holds).
    with contextlib.closing(sqlite3.connect(tmp)) as db:
        db.execute("PRAGMA journal_mode=WAL")
    os.replace(tmp, dest)


def _create_db(venv: Path, dest: Path, site: str) -> None:
    """Tables from the models, then ``stamp heads`` (SQLite cannot migrate)."""
    tmp = Path(f"{dest}.{os.getpid()}.tmp")
    tmpconf = dest.parent / f"stamp.{os.getpid()}.conf"
    url = f"sqlite:///{tmp}"
    try:
        subprocess.run([str(venv / "bin" / "python"), "-c", _DB_SCRIPT, url], check=True,
                       capture_output=True, text=True)
        tmpconf.write_text(f"[database]\nconnection = {url}\n")
        subprocess.run([str(venv / "bin" / "neutron-db-manage"), "--config-file",
                        str(tmpconf), "stamp", "heads"], check=True, capture_output=True,
                       text=True)
    except subprocess.CalledProcessError as exc:
        raise NeutronStartError(f"cannot create the Neutron database of site {site}: "
                                f"{exc.stderr[-2000:]}") from None
    finally:
        tmpconf.unlink(missing_ok=True)
    os.replace(tmp, dest)


def start(site_name: str, workdir: str | os.PathLike, port: int, **kwargs) -> NeutronServer:
    """Start one site's Neutron on 127.0.0.1:``port``; returns a handle
    with ``.url`` and ``.stop()``. Keyword arguments go to :func:`prepare`
    (``transport_url``, ``vni_range``, ``mechanism_drivers``, ``venv``)."""
    timeout = kwargs.pop("timeout", 60.0)
    return prepare(site_name, workdir, port, **kwargs).start(timeout)


def main(argv=None) -> int:
    """``python -m gwagent.lab.neutron_server SITE WORKDIR PORT``: run until Ctrl-C."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) < 3:
        print("usage: python -m gwagent.lab.neutron_server SITE WORKDIR PORT [TRANSPORT_URL]",
              file=sys.stderr)
        return 2
    kwargs = {"transport_url": argv[3]} if len(argv) > 3 else {}
    server = start(argv[0], argv[1], int(argv[2]), **kwargs)
    print(json.dumps({"site": server.site, "url": server.url}), flush=True)
    try:
        while server.running:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

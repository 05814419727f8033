"""gwagent as a systemd service: the unit, sd_notify, logging, --version.

systemd itself is not running here, so each part is checked where it can be:
the unit by ``systemd-analyze`` (verify, and the offline security report of
what the service may do), the notifications on a real unix datagram socket
standing in for systemd's ``$NOTIFY_SOCKET`` (the agent cannot tell the
difference), the agent as ``gwagent run`` in a throwaway namespace
(``gwsvc-``), removed in a ``finally``.
"""
from __future__ import annotations

import importlib.metadata
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import tomllib
from pathlib import Path

import pytest
import yaml
from pyroute2 import netns as pyroute2_netns

from gwagent import config
from gwagent.control.agent import Agent
from gwagent.control.sources import FileInventory, site_to_dict
from gwagent.dataplane.linux import LinuxBackend
from gwagent.service import Notifier

from builders import endpoint, site
from fakes import FakeDataplane

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "etc" / "systemd" / "gwagent.service"
NETNS_DROPIN = ROOT / "etc" / "systemd" / "gwagent.service.d" / "netns.conf"
GWAGENT = Path(sys.executable).with_name("gwagent")  # the venv's console script


# -- a stand-in for systemd's end of $NOTIFY_SOCKET -----------------------------
class Systemd:
    """A bound unix datagram socket; ``messages`` are the datagrams it got,
    each as a list of KEY=VALUE lines."""

    def __init__(self, address: str):
        self.name = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self.messages: list[list[str]] = []

    def receive(self, timeout: float) -> list[str] | None:
        self.sock.settimeout(timeout)
        try:
            message = self.sock.recv(4096).decode().split("\n")
        except TimeoutError:
            return None
        self.messages.append(message)
        return message

    def wait_for(self, predicate, timeout: float = 10.0) -> list[list[str]]:
        """Receive until ``predicate(message)``; the messages received on the way."""
        end = time.monotonic() + timeout
        seen = []
        while time.monotonic() < end:
            message = self.receive(max(0.01, end - time.monotonic()))
            if message is not None:
                seen.append(message)
                if predicate(message):
                    return seen
        raise AssertionError(f"no such notification in {timeout}s; got {seen[-5:]}")

    def close(self):
        self.sock.close()


@pytest.fixture
def systemd(tmp_path):
    s = Systemd(str(tmp_path / "notify"))
    yield s
    s.close()


def watchdogs(messages) -> int:
    return sum(1 for m in messages if "WATCHDOG=1" in m)


# -- the unit ----------------------------------------------------------------------
def systemd_analyze() -> str:
    tool = shutil.which("systemd-analyze")
    assert tool, ("systemd-analyze is missing: install the Debian package 'systemd' "
                  "(apt-get install -y systemd) to check etc/systemd/gwagent.service")
    return tool


def directives(path: Path) -> dict[str, list[str]]:
    """KEY -> its values, in order, as systemd reads a unit file."""
    out: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def runnable_copy(tmp_path: Path, with_netns: bool = False) -> Path:
    """The shipped unit with ExecStart at this venv's gwagent (verify wants an
    executable that exists), and the netns drop-in beside it if asked."""
    assert GWAGENT.is_file(), f"{GWAGENT} is missing: install gwagent into the venv"
    text = UNIT.read_text()
    assert "ExecStart=/opt/gwagent/bin/gwagent " in text
    unit = tmp_path / "gwagent.service"
    unit.write_text(text.replace("ExecStart=/opt/gwagent/bin/gwagent ", f"ExecStart={GWAGENT} "))
    if with_netns:
        (tmp_path / "gwagent.service.d").mkdir()
        shutil.copy(NETNS_DROPIN, tmp_path / "gwagent.service.d" / "netns.conf")
    return unit


def test_the_unit_passes_systemd_analyze_verify_without_a_warning(tmp_path):
    tool = systemd_analyze()
    for with_netns in (False, True):
        d = tmp_path / ("netns" if with_netns else "plain")
        d.mkdir()
        unit = runnable_copy(d, with_netns)
        out = subprocess.run([tool, "verify", str(unit)], capture_output=True, text=True,
                             env={**os.environ, "SYSTEMD_UNIT_PATH": f"{d}:"})
        assert out.returncode == 0 and not out.stdout + out.stderr, out.stdout + out.stderr


def test_the_unit_runs_the_agent_as_a_notify_service_with_least_privilege():
    u = directives(UNIT)
    one = {key: values[-1] for key, values in u.items()}
    assert one["Type"] == "notify" and one["NotifyAccess"] == "main"
    assert one["ExecStart"].split()[1:] == ["run", "--config-file", "/etc/gwagent/gwagent.conf"]
    assert one["ExecReload"] == "/bin/kill -HUP $MAINPID"  # the agent reloads on SIGHUP
    assert one["KillSignal"] == "SIGTERM"                    # which leaves the dataplane
    assert one["Restart"] == "on-failure" and one["WatchdogSec"] == "30s"
    assert set(one["CapabilityBoundingSet"].split()) == {"CAP_NET_ADMIN", "CAP_NET_RAW"}
    assert set(one["AmbientCapabilities"].split()) == {"CAP_NET_ADMIN", "CAP_NET_RAW"}
    for key, value in (("NoNewPrivileges", "yes"), ("ProtectSystem", "strict"),
                       ("PrivateTmp", "yes"), ("ProtectHome", "yes"),
                       ("RestrictNamespaces", "yes"), ("StateDirectory", "gwagent")):
        assert one[key] == value, key
    # The agent's default state_dir is the unit's runtime directory: no
    # configuration needed for status.json and the pid file to be writable.
    opt = next(o for o in config.gateway_opts if o.dest == "state_dir")
    assert opt.default == "/run/" + one["RuntimeDirectory"]
    assert "ReadWritePaths" not in u  # nothing writable but the unit's own directories


def exposure(tool: str, unit: Path) -> dict[str, bool | None]:
    out = subprocess.run([tool, "security", "--offline=true", "--json=short", str(unit)],
                         capture_output=True, text=True, check=True,
                         env={**os.environ, "SYSTEMD_UNIT_PATH": f"{unit.parent}:"})
    return {row["name"]: row["set"] for row in json.loads(out.stdout)}


def test_only_the_netns_drop_in_lets_the_agent_enter_a_namespace(tmp_path):
    """systemd's own reading of the unit: in the host's namespace the agent
    cannot administer the system or join namespaces; the drop-in for
    [gateway] netns adds exactly CAP_SYS_ADMIN and joining a network
    namespace."""
    tool = systemd_analyze()
    (tmp_path / "plain").mkdir()
    (tmp_path / "netns").mkdir()
    plain = exposure(tool, runnable_copy(tmp_path / "plain"))
    netns = exposure(tool, runnable_copy(tmp_path / "netns", with_netns=True))
    assert plain["CapabilityBoundingSet=~CAP_SYS_ADMIN"] is True       # True: taken away
    assert plain["RestrictNamespaces=~net"] is True
    assert plain["CapabilityBoundingSet=~CAP_SYS_MODULE"] is True
    assert plain["CapabilityBoundingSet=~CAP_(DAC_*|FOWNER|IPC_OWNER)"] is True
    assert plain["ProtectKernelTunables="] is True and plain["ProtectHome="] is True
    assert netns["CapabilityBoundingSet=~CAP_SYS_ADMIN"] is False
    assert netns["RestrictNamespaces=~net"] is False
    assert netns["RestrictNamespaces=~user"] is True and netns["RestrictNamespaces=~mnt"] is True
    assert {k for k in plain if plain[k] != netns[k]} == {
        "CapabilityBoundingSet=~CAP_SYS_ADMIN", "RestrictNamespaces=~net"}


# -- the notifier --------------------------------------------------------------------
def test_the_notifier_speaks_the_protocol_on_a_path_and_an_abstract_socket(systemd):
    abstract = Systemd(f"@gwsvc-{secrets.token_hex(4)}")
    try:
        for s in (systemd, abstract):
            n = Notifier({"NOTIFY_SOCKET": s.name})
            n.passed(False, "pass FAILED reason=start  networks=0")
            assert s.receive(2) == ["STATUS=pass FAILED reason=start networks=0"]
            assert not n.ready
            n.passed(True, "pass ok reason=source")
            assert s.receive(2) == ["READY=1", "STATUS=pass ok reason=source"] and n.ready
            n.passed(True, "pass ok reason=resync")  # READY once
            assert s.receive(2) == ["STATUS=pass ok reason=resync"]
            n.stopping()
            assert s.receive(2) == ["STOPPING=1"]
            n.close()
    finally:
        abstract.close()


def test_the_watchdog_is_fed_at_half_its_interval_and_only_when_asked(systemd):
    now = [0.0]
    n = Notifier({"NOTIFY_SOCKET": systemd.name, "WATCHDOG_USEC": "2000000"},
                 clock=lambda: now[0])
    assert n.watchdog_interval == 1.0
    fed = []
    for t in (0.0, 0.4, 0.99, 1.0, 1.5, 2.2):
        now[0] = t
        n.tick()
        if systemd.receive(0.05) == ["WATCHDOG=1"]:
            fed.append(t)
    assert fed == [0.0, 1.0, 2.2]
    # A watchdog meant for another process (WATCHDOG_PID), or none: no feeding.
    for env in ({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid() + 1)}, {}):
        other = Notifier({"NOTIFY_SOCKET": systemd.name, **env})
        assert other.watchdog_interval is None
        other.tick()
        assert systemd.receive(0.05) is None


def test_without_systemd_or_when_it_is_gone_notifying_costs_nothing(systemd, caplog):
    quiet = Notifier({})
    quiet.passed(True, "pass ok")
    quiet.tick()
    assert quiet.send("READY=1") is False and not quiet.ready
    gone = Notifier({"NOTIFY_SOCKET": systemd.name})
    systemd.close()
    Path(systemd.name).unlink()
    for _ in range(3):
        assert gone.send("WATCHDOG=1") is False  # no exception, no block
    gone.passed(True, "pass ok")
    assert not gone.ready  # READY was not delivered: it will be tried again next pass
    assert sum("cannot notify systemd" in r.message for r in caplog.records) == 1


# -- the agent's loop feeds the watchdog; a stuck pass does not -------------------------
class StuckBackend(FakeDataplane):
    """The kernel model, whose observe() can be made to hang (a backend call
    that never returns), with a real descriptor for the loop's select."""

    def __init__(self):
        super().__init__()
        self.hang, self.hung, self.release = (threading.Event() for _ in range(3))
        self._r, self._w = os.pipe()

    def fileno(self):
        return self._r

    def observe(self):
        if self.hang.is_set():
            self.hung.set()
            self.release.wait(10)
        return super().observe()


def test_a_pass_that_hangs_stops_the_watchdog_and_one_that_ends_feeds_it_again(tmp_path,
                                                                              systemd):
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text(yaml.safe_dump(site_to_dict(site("a", [endpoint("a", "red", 1)]))))
    b.write_text(yaml.safe_dump(site_to_dict(site("b", [endpoint("b", "red", 2)]))))
    backend = StuckBackend()
    local = FileInventory(a)
    agent = Agent(local, [FileInventory(b)], local, backend, resync_interval=0.05,
                  poll_interval=0.01, audit_interval=0.05)  # each audit reads the backend
    notifier = Notifier({"NOTIFY_SOCKET": systemd.name, "WATCHDOG_USEC": "100000"})
    agent.on_loop = notifier.tick
    agent.on_pass = lambda result, line: notifier.passed(not result.errors, line)
    loop = threading.Thread(target=agent.run, daemon=True)
    loop.start()
    try:
        seen = systemd.wait_for(lambda m: "READY=1" in m)
        assert watchdogs(seen) >= 1
        systemd.wait_for(lambda m: "WATCHDOG=1" in m)  # still fed after READY
        backend.hang.set()
        assert backend.hung.wait(5)
        while systemd.receive(0.01) is not None:  # what was sent before the hang
            pass
        # Ten watchdog half-intervals with the pass stuck: not one WATCHDOG=1.
        end = time.monotonic() + 0.5
        while time.monotonic() < end:
            message = systemd.receive(end - time.monotonic())
            assert message is None or "WATCHDOG=1" not in message, message
        backend.release.set()
        backend.hang.clear()
        systemd.wait_for(lambda m: "WATCHDOG=1" in m, 5)
    finally:
        backend.release.set()
        agent.stopping = True
        agent.wake()
        loop.join(5)
        agent.close()
        notifier.close()
    assert not loop.is_alive()


# -- gwagent run under a stand-in systemd -----------------------------------------------
SITE_A = {"site": "a", "gateway": {"host": "gw-a", "tunnel_ip": "198.18.1.1",
                                   "transit_ip": "198.18.0.1"},
          "networks": [{"name": "red", "segmentation_id": 1001, "transit_vni": 5001}],
          "endpoints": [{"port_id": "a1", "network": "red", "mac": "fa:16:3e:00:00:01",
                         "ips": ["198.19.10.11"], "vtep": "198.18.1.11"}]}


@pytest.fixture
def gateway(tmp_path):
    """(config file, the site file not yet written) for an agent in a
    namespace of its own; the peer's site file never exists (a peer down)."""
    ns = f"gwsvc-{secrets.token_hex(4)}"
    pyroute2_netns.create(ns)
    try:
        conf = tmp_path / "gw.conf"
        conf.write_text(
            "[gateway]\n"
            f"site_file = {tmp_path / 'a.yaml'}\n"
            f"peer_site_files = {tmp_path / 'b.yaml'}\n"
            f"netns = {ns}\nstate_dir = {tmp_path / 'state'}\n"
            "ingress_filter = false\nmac_guard = false\n"
            "[agent]\nresync_interval = 0.2\npoll_interval = 0.02\n")
        yield conf, tmp_path / "a.yaml"
    finally:
        if ns in pyroute2_netns.listnetns():
            pyroute2_netns.remove(ns)


def start(conf: Path, tmp_path: Path, *extra: str, env: dict | None = None):
    return subprocess.Popen([sys.executable, "-m", "gwagent.cli", "run", "--config-file",
                             str(conf), *extra], env={**os.environ, **(env or {})},
                            cwd=ROOT, stderr=open(tmp_path / "stderr", "w"))


def stop(proc) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_gwagent_run_is_ready_only_after_a_good_pass_and_feeds_the_watchdog(gateway, tmp_path,
                                                                           systemd):
    conf, site_file = gateway
    proc = start(conf, tmp_path,
                 env={"NOTIFY_SOCKET": systemd.name, "WATCHDOG_USEC": "200000"})
    try:
        # The own site's file is not there: passes fail, the loop is alive,
        # and the agent does not say it is ready.
        before = systemd.wait_for(
            lambda m: watchdogs(systemd.messages) >= 5 and any(
                "STATUS=pass FAILED" in line for line in m))
        assert not any("READY=1" in m for m in before)
        assert any("cannot read site file" in line for m in before for line in m)
        site_file.write_text(yaml.safe_dump(SITE_A))
        ready = systemd.wait_for(lambda m: "READY=1" in m)[-1]
        # Ready after the pass that programmed the site, the peer still down.
        (status,) = [line for line in ready if line.startswith("STATUS=")]
        assert "local=1" in status and "peer" in status and "b.yaml" in status
        state = json.loads((tmp_path / "state" / "status.json").read_text())
        assert state["endpoints"]["local"] == 1 and state["entries_programmed"] > 0
        fed = watchdogs(systemd.messages)
        systemd.wait_for(lambda m: watchdogs(systemd.messages) >= fed + 5)
        assert sum("READY=1" in m for m in systemd.messages) == 1
        proc.send_signal(signal.SIGHUP)  # ExecReload: the agent reloads and goes on
        systemd.wait_for(lambda m: any("reason=reload" in line for line in m))
        proc.send_signal(signal.SIGTERM)
        systemd.wait_for(lambda m: "STOPPING=1" in m)
        assert proc.wait(10) == 0
    finally:
        stop(proc)
    # Logging goes to stderr by default, through oslo.log's formatter.
    err = (tmp_path / "stderr").read_text()
    assert "INFO gwagent.control.agent [-] pass ok" not in err  # the peer is down
    assert "gwagent.control.agent [-] pass FAILED" in err and "told systemd: ready" in err


def test_gwagent_run_writes_its_log_to_log_file_and_not_to_stderr(gateway, tmp_path):
    conf, site_file = gateway
    site_file.write_text(yaml.safe_dump(SITE_A))
    log = tmp_path / "logs" / "agent.log"
    log.parent.mkdir()
    proc = start(conf, tmp_path, "--log-file", str(log), "--debug")
    try:
        end = time.monotonic() + 10
        while "pass FAILED" not in (log.read_text() if log.exists() else ""):
            assert time.monotonic() < end and proc.poll() is None, "no pass logged in time"
            time.sleep(0.05)
    finally:
        assert stop(proc) == 0
    text = log.read_text()
    assert "INFO gwagent [-] gwagent starting: source=file" in text
    assert " DEBUG " in text  # --debug
    assert "stopping; the dataplane stays as it is" in text
    assert "gwagent" not in (tmp_path / "stderr").read_text()


# -- gwagent --version ----------------------------------------------------------------
def test_version_prints_the_installed_version_which_is_the_projects():
    out = subprocess.run([sys.executable, "-m", "gwagent.cli", "--version"], cwd=ROOT,
                         capture_output=True, text=True, check=True)
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert out.stdout.strip() == f"gwagent {declared}"
    assert importlib.metadata.version("gwagent") == declared


# -- the unit's capabilities are enough, and only just ----------------------------------
def bounding_set(*files: Path) -> str:
    """The unit's (and drop-ins') CapabilityBoundingSet, for setpriv."""
    caps = {c for f in files for v in directives(f)["CapabilityBoundingSet"] for c in v.split()}
    return "-all," + ",".join(f"+{c.lower().removeprefix('cap_')}" for c in sorted(caps))


@pytest.mark.parametrize("mode", ["host namespace", "netns with the drop-in",
                                  "netns without the drop-in"])
def test_the_units_capabilities_run_the_whole_agent(tmp_path, systemd, mode):
    """``gwagent run`` with the filters and the mobility tap on, under exactly
    the bounding set of the unit (no_new_privs, as NoNewPrivileges): in the
    host's namespace (here a gwsvc- namespace that the agent runs in) and,
    with the drop-in, in another namespace, it becomes ready; without the
    drop-in it cannot enter that namespace."""
    setpriv = shutil.which("setpriv")
    assert setpriv, "setpriv is missing: install the Debian package 'util-linux'"
    ns = f"gwsvc-{secrets.token_hex(4)}"
    pyroute2_netns.create(ns)
    try:
        (tmp_path / "a.yaml").write_text(yaml.safe_dump(SITE_A))
        conf = tmp_path / "gw.conf"
        inside = mode == "host namespace"
        conf.write_text(f"[gateway]\nsite_file = {tmp_path / 'a.yaml'}\n"
                        f"netns = {'' if inside else ns}\nstate_dir = {tmp_path / 'state'}\n"
                        "ingress_filter = true\nmac_guard = true\n"
                        "[agent]\nresync_interval = 0.2\npoll_interval = 0.02\n"
                        "[mobility]\nenabled = true\n")
        files = (UNIT, NETNS_DROPIN) if mode == "netns with the drop-in" else (UNIT,)
        argv = [setpriv, "--bounding-set", bounding_set(*files), "--inh-caps", "-all",
                "--no-new-privs", sys.executable, "-m", "gwagent.cli", "run",
                "--config-file", str(conf)]
        if inside:
            argv = ["ip", "netns", "exec", ns, *argv]
        proc = subprocess.Popen(argv, cwd=ROOT, env={**os.environ, "NOTIFY_SOCKET": systemd.name},
                                stderr=open(tmp_path / "stderr", "w"))
        try:
            if mode == "netns without the drop-in":
                assert proc.wait(20) == 1
                assert "Operation not permitted (netns" in (tmp_path / "stderr").read_text()
                assert not any("READY=1" in m for m in systemd.messages)
                return
            systemd.wait_for(lambda m: "READY=1" in m)
            assert stop(proc) == 0
        finally:
            stop(proc)
        err = (tmp_path / "stderr").read_text()
        assert " ERROR " not in err and "pass ok" in err, err
        with LinuxBackend(ns) as backend:  # what the agent programmed is there
            assert {m.mac for m in backend.observe().macs} == {"fa:16:3e:00:00:01"}
    finally:
        if ns in pyroute2_netns.listnetns():
            pyroute2_netns.remove(ns)

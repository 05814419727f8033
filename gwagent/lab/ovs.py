"""Open vSwitch instances for the lab and the tests: one per namespace.

OVS runs without systemd, as ../shared/DESIGN.md measured: ``ovsdb-tool
create``, then ``ovsdb-server`` and ``ovs-vswitchd`` with ``--pidfile
--detach`` and OVS_RUNDIR/OVS_LOGDIR/OVS_DBDIR pointing at a private
directory, both inside the namespace (so the userspace datapath's tap stays
out of the root namespace). Processes are stopped by their pid files only.

Native tunnelling in the userspace datapath needs the underlay address on
an OVS internal port: :func:`attach_underlay` moves a NIC into an underlay
bridge of its own (NORMAL forwarding) and its address onto the bridge's
internal port. Senders into the userspace datapath need TX checksum offload
off, which :func:`attach_underlay` does on the NIC's far end when given.
"""
from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from gwagent.lab.processes import proc_start_time

SCHEMA = "/usr/share/openvswitch/vswitch.ovsschema"


class OvsError(Exception):
    pass


def missing() -> str | None:
    for tool in ("ovsdb-server", "ovs-vswitchd", "ovsdb-tool", "ovs-vsctl"):
        if not any(Path(d, tool).exists() for d in ("/usr/sbin", "/usr/bin")):
            return f"Open vSwitch ({tool} not found; apt-get install openvswitch-switch)"
    return None


class Ovs:
    """One OVS (database and switch) inside ``netns``, state in ``rundir``."""

    def __init__(self, netns: str, rundir: Path):
        self.netns, self.rundir = netns, Path(rundir)

    @property
    def db_sock(self) -> str:
        return f"unix:{self.rundir / 'db.sock'}"

    def env(self) -> dict:
        d = str(self.rundir)
        return {**os.environ, "OVS_RUNDIR": d, "OVS_LOGDIR": d, "OVS_DBDIR": d}

    def _run(self, *argv, ns: bool = True, daemon: bool = False) -> subprocess.CompletedProcess:
        # Daemons at niceness -10, as ovs-ctl starts them on every OVS host:
        # the userspace datapath forwards in ovs-vswitchd's own threads, and
        # on a busy 2-core machine (three Neutrons of a fault drill) a
        # switch at the default priority lost probes when starved.
        cmd = (["ip", "netns", "exec", self.netns] if ns else []) + \
            (["nice", "-n", "-10"] if daemon else []) + list(argv)
        proc = subprocess.run(cmd, env=self.env(), capture_output=True, text=True)
        if proc.returncode:
            raise OvsError(f"{' '.join(argv)}: {proc.stderr.strip() or proc.stdout.strip()}")
        return proc

    def start(self) -> "Ovs":
        self.rundir.mkdir(parents=True, exist_ok=True)
        db = self.rundir / "conf.db"
        if not db.exists():
            self._run("ovsdb-tool", "create", str(db), SCHEMA, ns=False)
        self._run("ovsdb-server", str(db), f"--remote=p{self.db_sock}",
                  f"--pidfile={self.rundir / 'ovsdb-server.pid'}", "--detach",
                  f"--log-file={self.rundir / 'ovsdb-server.log'}", daemon=True)
        self.vsctl("--no-wait", "init")
        self.start_switch()
        return self

    def start_switch(self) -> None:
        self._run("ovs-vswitchd", self.db_sock,
                  f"--pidfile={self.rundir / 'ovs-vswitchd.pid'}", "--detach",
                  f"--log-file={self.rundir / 'ovs-vswitchd.log'}", daemon=True)

    def vsctl(self, *args) -> str:
        """The lab's own configuration of underlay bridges (the product
        uses OVSDB through ovsdbapp)."""
        return self._run("ovs-vsctl", f"--db={self.db_sock}", "--timeout=10", *args).stdout

    def ofctl(self, bridge: str, *args) -> str:
        return self._run("ovs-ofctl", "-O", "OpenFlow14", *args[:1],
                         f"unix:{self.rundir / (bridge + '.mgmt')}", *args[1:]).stdout

    def pid(self, name: str) -> int | None:
        try:
            return int((self.rundir / f"{name}.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    def record(self, lab, owner: str) -> None:
        """Record the daemons as the lab's processes ``<owner>-ovsdb-server``
        and ``<owner>-ovs-vswitchd`` (by pid file: they detach), so ``down``
        stops them after everything that uses them."""
        for name in ("ovsdb-server", "ovs-vswitchd"):
            pid = self.pid(name)
            info = proc_start_time(pid) if pid else None
            lab.processes[f"{owner}-{name}"] = {
                "pid": pid, "start": info[1] if info else None, "argv": [name],
                "log": str(self.rundir / f"{name}.log"), "group": False,
                "order": 3 if name == "ovsdb-server" else 2}
        lab.save()

    def stop_switch(self, sig=signal.SIGTERM, timeout: float = 10.0) -> None:
        _stop(self.pid("ovs-vswitchd"), sig, timeout)

    def stop(self) -> None:
        for name in ("ovs-vswitchd", "ovsdb-server"):
            _stop(self.pid(name), signal.SIGTERM, 10.0)

    def attach_underlay(self, bridge: str, nic: str, address: str,
                        far_end: tuple[str, str] | None = None, mtu: int = 1500) -> None:
        """Put ``nic`` into an underlay bridge whose internal port carries
        ``address`` (CIDR), so OVS's native tunnels route through it; both
        at ``mtu``."""
        self.vsctl("--may-exist", "add-br", bridge, "--", "set", "bridge", bridge,
                   "datapath_type=netdev", "--", "--may-exist", "add-port", bridge, nic,
                   "--", "set", "interface", nic, f"mtu_request={mtu}",
                   "--", "set", "interface", bridge, f"mtu_request={mtu}")
        subprocess.run(["ip", "-n", self.netns, "addr", "flush", "dev", nic], check=True)
        # The userspace datapath reads the NIC by a packet socket: the kernel
        # still sees its frames and would answer ARP for the bridge's
        # addresses with the NIC's own MAC, which OVS's tunnels do not
        # listen on (measured: a VRRP takeover's GARP lost that race to a
        # compute's ARP, and the site went dark). The NIC answers nothing.
        subprocess.run(["ip", "netns", "exec", self.netns, "sysctl", "-q", "-w",
                        f"net.ipv4.conf.{nic}.arp_ignore=8"], check=True)
        subprocess.run(["ip", "-n", self.netns, "addr", "replace", address, "dev", bridge],
                       check=True)
        subprocess.run(["ip", "-n", self.netns, "link", "set", bridge, "up"], check=True)
        if far_end is not None:
            subprocess.run(["ip", "netns", "exec", far_end[0], "ethtool", "-K", far_end[1],
                            "tx", "off"], check=True, capture_output=True)


def _stop(pid: int | None, sig, timeout: float) -> None:
    if pid is None:
        return
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.02)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass

"""A gateway on a real OVS with a mobile MAC between two peers: the world
in which the mobility paths are tested (test_openflow_backend.py) and
measured (bench/test_openflow.py).

::

    ns c (compute 198.18.1.11) --site-- ns gw (OVS, 198.18.1.1 / 198.18.200.1)
                                           |  transit
                                        ns x (a Linux bridge: the transit underlay)
                                         /               \\
                        ns p1 (peer 198.18.200.2)   ns p2 (peer 198.18.200.3)

Every far end has a Linux VXLAN device ``vx`` toward the gateway (VNI 1001
on the site, 5001 on the transit). The mobile MAC :data:`MOBILE` is held by
p1 or p2: :func:`garp` sends a gratuitous ARP from it through ``vx``;
:class:`Probes` sends raw frames to it from c every ``interval`` and
:func:`first_arrival` says when the first reached a peer. Raw frames need
no ARP or IP anywhere, so nothing but the gateway's flows decides where
they go. Namespaces carry the caller's prefix and are removed on exit,
failure included; OVS is stopped by its pid files.
"""
from __future__ import annotations

import contextlib
import secrets
import select
import shutil
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path

from pyroute2 import netns

from gwagent.lab.ovs import Ovs
from gwagent.state import SITE, TRANSIT, FloodEntry, GatewayState, MacEntry, NetworkSpec, Segment

GW_SITE, GW_TRANSIT = "198.18.1.1", "198.18.200.1"
COMPUTE, P1, P2 = "198.18.1.11", "198.18.200.2", "198.18.200.3"
RED = NetworkSpec(5001, "red", Segment(1001, GW_SITE), Segment(5001, GW_TRANSIT))
MOBILE = "02:00:5e:00:01:07"          # a VRRP virtual MAC (VRID 7)
VIP = "10.9.0.100"
PROBE_TYPE = 0x88B5                   # IEEE local experimental ethertype
ETH_P_ALL = 0x0003


def sh(*argv) -> None:
    subprocess.run(argv, check=True, capture_output=True)


def mac_of(ns: str, dev: str = "vx") -> str:
    out = subprocess.run(["ip", "-n", ns, "-br", "link", "show", dev], check=True,
                         capture_output=True, text=True).stdout
    return out.split()[2]


def raw_socket(ns: str, dev: str = "vx") -> socket.socket:
    sock = netns.create_socket(ns, socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL),
                               flags=0)
    sock.bind((dev, 0))
    return sock


@contextlib.contextmanager
def mobility_world(tmp: Path, prefix: str = "gwm"):
    p = f"{prefix}{secrets.token_hex(2)}-"
    names = {k: p + k for k in ("gw", "c", "x", "p1", "p2")}
    for ns in names.values():
        netns.create(ns)
        sh("ip", "-n", ns, "link", "set", "lo", "up")
    ovs = Ovs(names["gw"], Path(tmp) / "ovs")
    try:
        gw, c, x = names["gw"], names["c"], names["x"]
        # site: gw <-> c, one veth
        sh("ip", "link", "add", p + "s", "type", "veth", "peer", "name", p + "s0")
        sh("ip", "link", "set", p + "s", "netns", gw)
        sh("ip", "link", "set", p + "s0", "netns", c)
        # transit: gw <-> bridge in x <-> p1, p2
        sh("ip", "link", "add", p + "t", "type", "veth", "peer", "name", p + "t0")
        sh("ip", "link", "set", p + "t", "netns", gw)
        sh("ip", "link", "set", p + "t0", "netns", x)
        sh("ip", "-n", x, "link", "add", "sw0", "type", "bridge")
        sh("ip", "-n", x, "link", "set", p + "t0", "master", "sw0", "up")
        far = {c: (p + "s0", COMPUTE, GW_SITE, 1001, "10.9.0.1")}
        for peer, addr, ip in (("p1", P1, "10.9.0.2"), ("p2", P2, "10.9.0.3")):
            ns = names[peer]
            sh("ip", "link", "add", p + peer, "type", "veth", "peer", "name", p + peer + "e")
            sh("ip", "link", "set", p + peer, "netns", x)
            sh("ip", "link", "set", p + peer + "e", "netns", ns)
            sh("ip", "-n", x, "link", "set", p + peer, "master", "sw0", "up")
            far[ns] = (p + peer + "e", addr, GW_TRANSIT, 5001, ip)
        sh("ip", "-n", x, "link", "set", "sw0", "up")
        sh("ip", "-n", gw, "link", "set", p + "s", "up")
        sh("ip", "-n", gw, "link", "set", p + "t", "up")
        for ns, (nic, addr, remote, vni, ip) in far.items():
            sh("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", nic)
            sh("ip", "-n", ns, "link", "set", nic, "up")
            sh("ip", "netns", "exec", ns, "ethtool", "-K", nic, "tx", "off")
            sh("ip", "-n", ns, "link", "add", "vx", "type", "vxlan", "id", str(vni), "local",
               addr, "remote", remote, "dstport", "4789", "nolearning")
            sh("ip", "-n", ns, "link", "set", "vx", "mtu", "1450", "up")
            sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", "vx")
        sh("ip", "netns", "exec", x, "ethtool", "-K", p + "t0", "tx", "off")
        ovs.start()
        ovs.attach_underlay(p + "us", p + "s", f"{GW_SITE}/24")
        ovs.attach_underlay(p + "ut", p + "t", f"{GW_TRANSIT}/24")
        # the gateway resolves its underlay neighbours first (OVS's userspace
        # tunnels drop packets toward unresolved VTEPs)
        for addr in (COMPUTE, P1, P2):
            subprocess.run(["ip", "netns", "exec", gw, "ping", "-c", "1", "-W", "2", addr],
                           capture_output=True)
        desired = GatewayState(
            (RED,), frozenset({MacEntry("red", mac_of(c), SITE, COMPUTE),
                               MacEntry("red", mac_of(names["p1"]), TRANSIT, P1),
                               MacEntry("red", mac_of(names["p2"]), TRANSIT, P2)}),
            frozenset({FloodEntry("red", SITE, COMPUTE), FloodEntry("red", TRANSIT, P1),
                       FloodEntry("red", TRANSIT, P2)}))
        yield {**names, "ovs": ovs, "prefix": p, "desired": desired}
    finally:
        ovs.stop()
        for ns in names.values():
            if ns in netns.listnetns():
                netns.remove(ns)
        shutil.rmtree(Path(tmp) / "ovs", ignore_errors=True)


def garp_frame(mac: str = MOBILE, ip: str = VIP) -> bytes:
    m = bytes.fromhex(mac.replace(":", ""))
    a = socket.inet_aton(ip)
    return (b"\xff" * 6 + m + b"\x08\x06" + struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1)
            + m + a + b"\x00" * 6 + a).ljust(60, b"\x00")


def garp(sock: socket.socket) -> float:
    """One GARP from the mobile MAC out of ``sock`` (a raw socket on a
    peer's ``vx``); returns when it left, time.time() scale."""
    frame = garp_frame()
    at = time.time()
    sock.send(frame)
    return at


class Probes:
    """Raw frames to the mobile MAC from ``ns`` every ``interval`` seconds,
    each carrying its send time, until stop()."""

    def __init__(self, ns: str, interval: float = 0.0002, dst: str = MOBILE):
        self.sock = raw_socket(ns)
        src = bytes.fromhex(mac_of(ns).replace(":", ""))
        self.head = bytes.fromhex(dst.replace(":", "")) + src + struct.pack("!H", PROBE_TYPE)
        self.interval = interval
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._run, name="probes", daemon=True)

    def start(self) -> "Probes":
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._halt.is_set():
            try:
                self.sock.send(self.head + struct.pack("!d", time.time()).ljust(46, b"\0"))
            except OSError:
                pass
            time.sleep(self.interval)

    def stop(self) -> None:
        self._halt.set()
        self._thread.join(5)
        self.sock.close()


class Arrivals:
    """A raw socket on a peer's ``vx`` that reports probes to the mobile MAC."""

    def __init__(self, ns: str):
        self.sock = raw_socket(ns)
        self.sock.setblocking(False)

    def drain(self) -> None:
        while True:
            try:
                self.sock.recv(2048)
            except BlockingIOError:
                return

    def first_after(self, since: float, timeout: float) -> float | None:
        """When the first probe sent after ``since`` arrived (time.time());
        None if none within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            readable, _, _ = select.select([self.sock], [], [], left)
            if not readable:
                continue
            while True:
                try:
                    f = self.sock.recv(2048)
                except BlockingIOError:
                    break
                if len(f) >= 22 and f[12:14] == struct.pack("!H", PROBE_TYPE) \
                        and f[:6] == bytes.fromhex(MOBILE.replace(":", "")):
                    sent = struct.unpack_from("!d", f, 14)[0]
                    if sent >= since:
                        return time.time()

    def close(self) -> None:
        self.sock.close()

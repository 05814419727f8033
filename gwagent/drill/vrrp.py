"""``gwagent drill vrrp``: real keepalived in the VMs, the master's NIC goes down.

Per mode and scope, keepalived (VRRPv3, advert interval as given) runs in
both holders of the move: ``state BACKUP`` and ``nopreempt`` on both, so
that the first (higher priority) becomes master and a recovered node never
takes the VIP back by itself. Mode ``default`` carries the VIP on the
master's own MAC; ``vmac`` is keepalived's ``use_vmac`` (a macvlan with
00:00:5e:00:01:VRID). Each run:

1. waits until every client is answered by the master, and the other is
   BACKUP (keepalived's notify script writes the states);
2. takes the master VM's NIC down (``eth0``, inside the VM). Killing
   keepalived alone would be a false drill: the old master would keep its
   VIP and answer for it (DESIGN.md);
3. timestamps the new master's first gratuitous ARP for the VIP on the wire
   (a packet socket in its namespace, kernel time): keepalived's notify
   script is no reliable mark, it has run after the first replies;
4. waits until every client is answered by the new master, then brings the
   old master's NIC back (it stays BACKUP) and waits for that.

Between drills every keepalived is stopped and waited for: a second one
started before the first exits refuses to run ("daemon is already
running"), which once looked like a network that does not converge.
"""
from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
from pathlib import Path

from gwagent.dataplane.capture import attach_filter
from gwagent.drill import check, report
from gwagent.drill.garp import LEAD, TAIL, wait_settled
from gwagent.drill.probes import Prober
from gwagent.drill.scenario import OWN_MAC, VMAC, DrillError, Node, Scenario
from gwagent.lab import probe
from gwagent.lab.processes import log_tail

DEFAULT = "default"
ETH_P_ALL, ETH_P_ARP = 0x0003, 0x0806
SO_TIMESTAMPNS = 35
KEEPALIVED = "keepalived"

CONF = """\
global_defs {{
    router_id {name}
    vrrp_version 3
    script_user root
    enable_script_security
    vrrp_garp_master_delay 5
}}
vrrp_instance DRILL {{
    state BACKUP
    nopreempt
    interface eth0
    virtual_router_id {vrid}
    priority {priority}
    advert_int {advert}
    {vmac}
    virtual_ipaddress {{
        {vip}/{prefixlen}
    }}
    notify {notify}
}}
"""

NOTIFY = """#!/bin/sh
# keepalived notify: TYPE NAME STATE PRIORITY
echo "$3" > {state}.tmp && mv {state}.tmp {state}
"""


class Keepalived:
    """One keepalived in one holder's namespace, started and stopped by its
    PID (its own session, so its VRRP child goes with it)."""

    def __init__(self, workdir: Path, scenario: Scenario, holder: Node, priority: int,
                 advert_ms: int, mode: str):
        self.holder, self.ns = holder, scenario.ns(holder)
        self.dir = workdir / holder.name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.state_file = self.dir / "state"
        notify = self.dir / "notify.sh"
        notify.write_text(NOTIFY.format(state=self.state_file))
        notify.chmod(0o700)
        self.conf = self.dir / "keepalived.conf"
        self.conf.write_text(CONF.format(
            name=holder.name, vrid=scenario.vrid, priority=priority,
            advert=f"{advert_ms / 1000:g}", vip=scenario.vip, prefixlen=scenario.prefixlen,
            vmac="use_vmac dvrrp0" if mode == VMAC else "", notify=notify))
        self.log = self.dir / "keepalived.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        # No syslog here: --log-console writes to its stderr, kept in a file.
        argv = ["ip", "netns", "exec", self.ns, KEEPALIVED, "--dont-fork", "--no-syslog",
                "--log-console", "--log-detail", "--vrrp", "--use-file", str(self.conf),
                "--pid", str(self.dir / "keepalived.pid"),
                "--vrrp_pid", str(self.dir / "vrrp.pid")]
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True)

    def state(self) -> str | None:
        try:
            return self.state_file.read_text().strip()
        except OSError:
            return None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM its process group and wait for it to exit (then SIGKILL)."""
        if self.proc is None:
            return
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
            if self.proc.poll() is not None:
                break
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(wait)
        self.proc = None

    def log_tail(self) -> str:
        return log_tail(self.log)


class GarpWatch:
    """ARP frames for the VIP seen in a namespace (sent or received), with
    the kernel's timestamp, to find the takeover's GARP on the wire."""

    def __init__(self, ns: str, vip: str):
        self.vip = socket.inet_aton(vip)
        # ETH_P_ALL: frames a namespace *sends* reach only such sockets; a
        # filter keeps ARP alone (ldh [12]; jeq 0x806; ret all; ret 0).
        self.sock = probe.ns_socket(ns, socket.AF_PACKET, socket.SOCK_RAW,
                                    socket.htons(ETH_P_ALL))
        attach_filter(self.sock, [(0x28, 0, 0, 12), (0x15, 0, 1, ETH_P_ARP),
                                  (0x06, 0, 0, 0xFFFF), (0x06, 0, 0, 0)])
        self.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        self.sock.setblocking(False)
        self.offset = time.time() - time.monotonic()

    def drain(self) -> None:
        self.first_after(float("inf"), 0)

    def first_after(self, since: float, timeout: float) -> float | None:
        """The first GARP for the VIP (sender IP = VIP) after ``since``
        (monotonic), waiting up to ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                data, anc, _, _ = self.sock.recvmsg(128, 64)
            except BlockingIOError:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                select.select([self.sock], [], [], left)
                continue
            at = time.monotonic()
            for level, kind, raw in anc:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                    sec, nsec = struct.unpack_from("=qq", raw)
                    at = sec + nsec / 1e9 - self.offset
            # Ethernet 14, ARP: htype 2, ptype 2, hlen 1, plen 1, op 2, sha 6, spa 4
            if len(data) >= 42 and data[28:32] == self.vip and at > since:
                return at

    def close(self) -> None:
        self.sock.close()


def _link(scenario: Scenario, holder: Node, up: bool) -> float:
    ipr = scenario.ipr(holder)
    index = ipr.link_lookup(ifname="eth0")[0]
    before = time.monotonic()
    ipr.link("set", index=index, state="up" if up else "down")
    return before


def _wait_state(ka: Keepalived, want: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ka.state() == want:
            return True
        if not ka.alive():
            raise DrillError(f"keepalived in {ka.holder.name} exited; its log:\n{ka.log_tail()}")
        time.sleep(0.01)
    return ka.state() == want


def run(scenario: Scenario, modes, scopes, runs: int = 1, advert_ms: int = 100,
        timeout: float = 3.0, progress=lambda msg: None) -> list[report.Move]:
    if shutil.which(KEEPALIVED) is None:
        raise DrillError("keepalived is not installed (apt-get install keepalived; "
                         "make setup does it)")
    moves = []
    workdir = Path(tempfile.mkdtemp(prefix="drill-vrrp-", dir=scenario.lab.lab_dir))
    elect = max(3.0, advert_ms / 1000 * 10)
    try:
        for mode in modes:
            for scope in scopes:
                moves += _block(scenario, workdir, mode, scope, runs, advert_ms, timeout,
                                elect, progress)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return moves


def _block(scenario, workdir, mode, scope, runs, advert_ms, timeout, elect, progress):
    a, b = scenario.pair(scope)
    check_mode = VMAC if mode == VMAC else OWN_MAC
    kas = {a.name: Keepalived(workdir / f"{mode}-{scope}", scenario, a, 200, advert_ms, mode),
           b.name: Keepalived(workdir / f"{mode}-{scope}", scenario, b, 100, advert_ms, mode)}
    watches = {h.name: GarpWatch(scenario.ns(h), scenario.vip) for h in (a, b)}
    clients = [(c.name, c.site, scenario.ns(c)) for c in scenario.clients]
    moves = []
    try:
        for ka in kas.values():
            ka.start()
        if not _wait_state(kas[a.name], "MASTER", elect + 5):
            raise DrillError(f"keepalived in {a.name} did not become master; its log:\n"
                             f"{kas[a.name].log_tail()}")
        _wait_state(kas[b.name], "BACKUP", elect)
        with Prober(clients, [(h.name, scenario.ns(h)) for h in (a, b)], scenario.vip) as prober:
            if not wait_settled(prober, a.name, time.monotonic() - 1, timeout + 5):
                progress(f"vrrp {mode} {scope}: not every client reaches the VIP on {a.name} "
                         "before the first failure; measuring anyway")
            master, backup = a, b
            for i in range(1, runs + 1):
                for w in watches.values():
                    w.drain()
                start = time.monotonic() - LEAD
                failed = _link(scenario, master, up=False)
                garp = watches[backup.name].first_after(failed, elect + timeout)
                ref = garp if garp is not None else failed
                ok = wait_settled(prober, backup.name, ref, timeout + elect)
                time.sleep(TAIL)
                end = time.monotonic()
                results = [report.analyse(rec, master.name, backup.name, start, end, ref)
                           for rec in prober.records]
                move = report.Move("vrrp", mode, scope, i, master.name, backup.name, results,
                                   check.check(scenario, backup, check_mode),
                                   failure_ms=round((failed - ref) * 1000, 3),
                                   note=("" if ok else "not settled") +
                                   ("" if garp is not None else " no GARP seen"))
                moves.append(move)
                progress(f"vrrp {mode:<7} {scope:<5} run {i}/{runs}: {master.name} NIC down -> "
                         f"{backup.name}: GARP {(ref - failed) * 1000:.0f} ms after the "
                         "failure; outage " + ", ".join(
                             f"{c.client} {'NEVER' if c.outage_ms is None else f'{c.outage_ms:.0f} ms'}"
                             for c in results)
                         + (f"; {len(move.stale)} STALE" if move.stale else "")
                         + (f" ({move.note.strip()})" if move.note else ""))
                _link(scenario, master, up=True)
                if not _wait_state(kas[master.name], "BACKUP", elect + 5):
                    progress(f"{master.name} did not come back as BACKUP")
                master, backup = backup, master
    finally:
        for ka in kas.values():
            ka.stop()
        for w in watches.values():
            w.close()
        for h in (a, b):  # whatever keepalived left (a NIC down after an error)
            with contextlib.suppress(Exception):
                _link(scenario, h, up=True)
    return moves

"""L2 population emulator: what Neutron's l2pop + linuxbridge agent do to computes.

For each compute and network, the VXLAN device ``vxlan-<segid>`` gets a
static (``self``, permanent) entry for every MAC on that network that is not
on this compute: local ports at their compute's IP, and the remote ports the
gateway registered in the site's registry at the VTEP they name (the
gateway's tunnel IP). Allowed-address-pair MACs count like port MACs. Each
other VTEP with ports on the network also gets a head-end replication entry
(all-zero MAC, appended). A MAC claimed from several VTEPs (mobile) gets no static entry: the
compute learns it from the frames it receives (VXLAN learning on).

Unlike Neutron's l2pop, which pushes deltas, this reconciles from full
snapshots (DESIGN.md, style 2): the desired entries of every compute are
computed from the inventory and the registry, diffed against the device's
FDB, and only the difference is applied (replace for new or moved MACs,
append for new flood destinations, delete for the rest). Every entry with a
``dst`` on a lab compute's ``vxlan-*`` device is the emulator's: the lab
owns those namespaces outright.

It runs as ``python -m gwagent.lab.l2pop --lab-dir DIR`` (started by ``lab
up``), polling the inventory and registry files' mtimes every 0.1 s and
resyncing every few seconds regardless. An unreadable or invalid file keeps
the last good snapshot of that site in force, as a cloud would.

In a Neutron lab (``lab up --neutron``) the same functions get the same
inputs from each site's Neutron instead: the bound local ports and the
remote ports the site's gateway registered, polled every 0.5 s (a narrow
listing of port revisions; a full read on a change). Which of the two a
site is, and how often to look, the lab's truth says
(:meth:`~gwagent.lab.truth.Truth.view`); this module never asks.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import signal
import sys
import threading
import time

from pyroute2 import IPRoute

from gwagent.control.sources import SourceError
from gwagent.lab.names import vxlan_name
from gwagent.lab.record import Lab
from gwagent.model import RemotePort, SiteSnapshot, ValidationError

LOG = logging.getLogger("gwagent.lab.l2pop")
FLOOD_MAC = "00:00:00:00:00:00"
NUD_NOARP, NUD_PERMANENT, NTF_SELF = 0x40, 0x80, 0x02
RESYNC_INTERVAL = 3.0


@dataclasses.dataclass(frozen=True)
class DeviceEntries:
    """What one compute's VXLAN device of one network should hold."""

    unicast: tuple[tuple[str, str], ...]  # (mac, dst), sorted
    flood: tuple[str, ...]                 # dst VTEPs, sorted

    @classmethod
    def of(cls, unicast: dict[str, str], flood: set[str]) -> "DeviceEntries":
        return cls(tuple(sorted(unicast.items())), tuple(sorted(flood)))


def desired_entries(snapshot: SiteSnapshot, remote_ports: list[RemotePort],
                    compute_ip: str) -> dict[str, DeviceEntries]:
    """Per network name: the entries of the VXLAN device on ``compute_ip``.

    A MAC claimed from more than one VTEP (a VRRP virtual MAC in the allowed
    address pairs of ports on two computes, or of a local port and a remote
    one) is mobile: it gets no static entry, and the compute learns where it
    is from the frames it receives (VXLAN learning is on, as the OVS
    agent's learn flows do), so it follows a failover."""
    result = {}
    for net in snapshot.networks:
        vteps: set[str] = set()
        where: dict[str, set[str]] = {}
        claims = [(ep.macs, ep.vtep) for ep in snapshot.endpoints if ep.network == net.name]
        claims += [(p.origin.macs, p.vtep) for p in remote_ports
                   if p.origin.network == net.name]
        for macs, vtep in claims:
            for m in macs:
                where.setdefault(m, set()).add(vtep)
            if vtep != compute_ip:
                vteps.add(vtep)
        unicast = {m: next(iter(at)) for m, at in where.items()
                   if len(at) == 1 and compute_ip not in at}
        result[net.name] = DeviceEntries.of(unicast, vteps)
    return result


def observe(ipr: IPRoute, devices: dict[str, int]) -> dict[str, DeviceEntries]:
    """The ``dst`` entries on the devices ({name: ifindex}), per device name."""
    by_index = {idx: name for name, idx in devices.items()}
    unicast: dict[str, dict[str, str]] = {name: {} for name in devices}
    flood: dict[str, set[str]] = {name: set() for name in devices}
    for msg in ipr.fdb("dump"):
        name = by_index.get(msg["ifindex"])
        dst = msg.get_attr("NDA_DST")
        if name is None or dst is None or not msg["state"] & NUD_PERMANENT:
            continue  # not ours: learned entries belong to the kernel
        mac = msg.get_attr("NDA_LLADDR").lower()
        if mac == FLOOD_MAC:
            flood[name].add(dst)
        else:
            unicast[name][mac] = dst
    return {name: DeviceEntries.of(unicast[name], flood[name]) for name in devices}


def plan(want: DeviceEntries, have: DeviceEntries) -> list[tuple[str, str, str]]:
    """(command, mac, dst) operations turning ``have`` into ``want``."""
    ops = []
    want_u, have_u = dict(want.unicast), dict(have.unicast)
    for mac, dst in sorted(want_u.items()):
        if have_u.get(mac) != dst:
            ops.append(("replace", mac, dst))
    for mac, dst in sorted(have_u.items()):
        if mac not in want_u:
            ops.append(("del", mac, dst))
    for dst in sorted(set(want.flood) - set(have.flood)):
        ops.append(("append", FLOOD_MAC, dst))
    for dst in sorted(set(have.flood) - set(want.flood)):
        ops.append(("del", FLOOD_MAC, dst))
    return ops


@dataclasses.dataclass
class Compute:
    site: str
    name: str
    ns: str
    ip: str
    devices: dict[str, str]  # network name -> vxlan device name


def computes_of(lab: Lab) -> list[Compute]:
    result = []
    for site in lab.topology.sites:
        for compute in site.computes:
            result.append(Compute(site.name, compute, lab.ns(compute), site.compute_ip(compute),
                                  {net: vxlan_name(seg) for net, seg in site.segmentation_ids}))
    return result


class Emulator:
    """Keeps every compute's VXLAN FDB in step with its site's inventory
    (file lab) or its site's Neutron (Neutron lab)."""

    def __init__(self, lab: Lab):
        self.lab = lab
        self.computes = computes_of(lab)
        self.poll_interval = lab.truth.poll_interval
        self.sites = {s.name: lab.truth.view(s.name) for s in lab.topology.sites}
        self.good: dict[str, tuple[SiteSnapshot, list[RemotePort]]] = {}
        self.sockets: dict[str, IPRoute] = {}

    def read(self, site: str):
        try:
            self.good[site] = self.sites[site].read()
        except (SourceError, ValidationError, KeyError, TypeError, OSError) as exc:
            LOG.error("site %s: keeping the last good snapshot: %s", site, exc)
        return self.good.get(site)

    def socket(self, compute: Compute) -> IPRoute:
        if compute.ns not in self.sockets:
            self.sockets[compute.ns] = IPRoute(netns=compute.ns, flags=0)
        return self.sockets[compute.ns]

    def reconcile(self) -> int:
        """One pass over every compute; returns the number of operations."""
        return sum(self.reconcile_site(site) for site in self.sites)

    def reconcile_site(self, site: str) -> int:
        """One pass over the computes of one site."""
        count = 0
        state = self.read(site)
        if state is None:
            return 0
        for compute in (c for c in self.computes if c.site == site):
            try:
                count += self._compute(compute, *state)
            except Exception as exc:  # noqa: BLE001 - one compute must not stop the rest
                LOG.error("compute %s: %s", compute.name, exc)
                self.sockets.pop(compute.ns, None)
        return count

    def _compute(self, compute: Compute, snapshot, remote_ports) -> int:
        ipr = self.socket(compute)
        indexes = {}
        for dev in compute.devices.values():
            found = ipr.link_lookup(ifname=dev)
            if found:
                indexes[dev] = found[0]
        have = observe(ipr, indexes)
        count = 0
        for net, want in desired_entries(snapshot, remote_ports, compute.ip).items():
            dev = compute.devices.get(net)
            if dev not in indexes:
                continue
            for command, mac, dst in plan(want, have[dev]):
                ipr.fdb(command, ifindex=indexes[dev], lladdr=mac, dst=dst,
                        state=NUD_NOARP | NUD_PERMANENT, flags=NTF_SELF)
                LOG.info("%s %s: %s %s dst %s", compute.name, dev, command, mac, dst)
                count += 1
        return count

    def run(self, stop) -> None:
        """Each site on its own thread: a cloud whose API hangs stalls only
        its own computes, as in real clouds."""
        threads = [threading.Thread(target=self._run_site, args=(site, stop), daemon=True,
                                    name=f"l2pop-{site}") for site in self.sites]
        for thread in threads:
            thread.start()
        while not stop():
            time.sleep(0.1)
        for thread in threads:
            thread.join(1.0)

    def _run_site(self, site: str, stop) -> None:
        seen, last = None, 0.0
        while not stop():
            now = time.monotonic()
            try:
                current = self.sites[site].version()
            except (SourceError, OSError) as exc:
                LOG.error("site %s: cannot check for changes: %s", site, exc)
                current = None
            if current is None or current != seen or now - last >= RESYNC_INTERVAL:
                seen, last = current, now
                self.reconcile_site(site)
            time.sleep(self.poll_interval)

    def close(self) -> None:
        for ipr in self.sockets.values():
            ipr.close()
        self.sockets.clear()


def reconcile_once(lab: Lab) -> int:
    emulator = Emulator(lab)
    try:
        return emulator.reconcile()
    finally:
        emulator.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gwagent.lab.l2pop",
                                     description="L2 population emulator for a gwagent lab")
    parser.add_argument("--lab-dir", required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    lab = Lab.load(args.lab_dir)
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    signal.signal(signal.SIGINT, lambda *_: stopping.append(1))
    emulator = Emulator(lab)
    LOG.info("l2pop emulator for %s: %d computes", lab.lab_dir, len(emulator.computes))
    try:
        emulator.run(lambda: bool(stopping))
    finally:
        emulator.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""L2 population emulator: what Neutron's l2pop and L2 agent do to computes.

Each compute is a client of the product: the emulator computes the
compute's desired dataplane state (:func:`desired_state`, in the words of
gwagent.state), observes the compute with the product's Linux backend,
plans with the product's planner and applies with the backend's bulk
path, exactly as a gateway's agent does with its own. The differences are
the compute's role, not a loop of its own:

* a compute network is *one-sided* (``NetworkSpec.transit`` None): only
  the site segment (the site's segmentation ID, on the compute's IP),
  identified by its segmentation ID, so its devices are the product's
  ``gwa-br-<segid>`` and ``gwa-vl-<segid>`` (gwagent.lab.names) and VMs'
  taps plug into that bridge;
* every MAC on the network that is not on this compute is placed at its
  VTEP (local ports at their compute's IP, the remote ports the gateway
  registered in the site at the VTEP they name: the gateway's tunnel IP),
  allowed-address-pair MACs like port MACs, and every other VTEP with
  ports on the network gets floods;
* a MAC claimed from several VTEPs (mobile) is placed nowhere: the backend
  runs with ``learning=True``, so the compute learns it from the frames it
  receives (VXLAN and bridge-port learning on the VXLAN port), as the OVS
  agent's learn flows do, and it follows a failover. Learned entries are
  not the backend's (no ``extern_learn``): it never touches them.

History: until issue 8 this module had its own observe/plan and programmed
Neutron-named devices (``brq-<segid>``, ``vxlan-<segid>``) per call with
pyroute2. Issue 8 asked for the product's backend and planner instead;
the product gained a one-sided network and the ``learning`` option for it.

Like a gateway, and unlike Neutron's l2pop, which pushes deltas, this
reconciles from full snapshots (DESIGN.md, style 2).

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

from gwagent.control.planner import plan
from gwagent.control.sources import SourceError
from gwagent.dataplane.linux import LinuxBackend, describe
from gwagent.lab.names import LabError
from gwagent.lab.record import Lab
from gwagent.model import RemotePort, SiteSnapshot, ValidationError
from gwagent.state import (SITE, FloodEntry, GatewayState, MacEntry, NetworkOp, NetworkSpec, Op,
                           Segment)

LOG = logging.getLogger("gwagent.lab.l2pop")
RESYNC_INTERVAL = 3.0


@dataclasses.dataclass(frozen=True)
class Compute:
    site: str
    name: str
    ns: str
    ip: str
    segmentation_ids: tuple[tuple[str, int], ...]  # (network name, segmentation ID)

    @property
    def networks(self) -> tuple[NetworkSpec, ...]:
        """The compute's networks: one-sided, the site segment on the
        compute's IP, identified by the segmentation ID."""
        return tuple(sorted(NetworkSpec(seg, net, Segment(seg, self.ip), None)
                            for net, seg in self.segmentation_ids))


def desired_state(snapshot: SiteSnapshot, remote_ports: list[RemotePort],
                  compute: Compute) -> GatewayState:
    """What ``compute`` must hold for its site's snapshot and registry.

    A MAC claimed from more than one VTEP (a VRRP virtual MAC in the allowed
    address pairs of ports on two computes, or of a local port and a remote
    one) is mobile: it is placed nowhere, and the compute learns where it
    is from the frames it receives (module docstring). A MAC claimed on
    this compute is local: the bridge learns it from the VM's tap."""
    networks = compute.networks
    names = {net.name for net in networks}
    macs: set[MacEntry] = set()
    floods: set[FloodEntry] = set()
    for net in snapshot.networks:
        if net.name not in names:
            continue
        where: dict[str, set[str]] = {}
        claims = [(ep.macs, ep.vtep) for ep in snapshot.endpoints if ep.network == net.name]
        claims += [(p.origin.macs, p.vtep) for p in remote_ports
                   if p.origin.network == net.name]
        for mac_list, vtep in claims:
            for mac in mac_list:
                where.setdefault(mac, set()).add(vtep)
            if vtep != compute.ip:
                floods.add(FloodEntry(net.name, SITE, vtep))
        macs.update(MacEntry(net.name, mac, SITE, next(iter(at)))
                    for mac, at in where.items() if len(at) == 1 and compute.ip not in at)
    return GatewayState(networks, frozenset(macs), frozenset(floods))


def sync(backend: LinuxBackend, desired: GatewayState, who: str) -> int:
    """One pass of the product's loop on one compute: observe, plan, apply;
    returns the number of operations (each logged, and each failure)."""
    backend.drain_events()  # nobody waits for them: keep the socket empty
    ops = plan(desired, backend.observe())
    errors = backend.apply(ops)
    for op in ops:
        LOG.info("%s: %s", who, _describe(op))
    for error in errors:
        LOG.error("%s: %s", who, error.error)
    return len(ops)


def _describe(op: Op) -> str:
    if isinstance(op, NetworkOp):
        return f"{op.action} network {op.network.name} (VNI {op.network.site.vni})"
    return describe(op)


def build_compute(compute: Compute) -> None:
    """Make the compute's networks (bridge and VXLAN port each) in its new
    namespace, before any VM plugs in; the emulator fills them."""
    with LinuxBackend(compute.ns, learning=True) as backend:
        errors = backend.apply(plan(GatewayState(compute.networks), backend.observe()))
    if errors:
        raise LabError(f"{compute.name}: " + "; ".join(e.error for e in errors))


def computes_of(lab: Lab) -> list[Compute]:
    """The lab's emulated computes: none when Neutron's own agents run them
    (``computes: ovs-agent``, gwagent.lab.ovs_agent)."""
    if lab.topology.computes != "emulated":
        return []
    return [compute_of(lab, site.name, name)
            for site in lab.topology.sites for name in site.computes]


def compute_of(lab: Lab, site_name: str, name: str) -> Compute:
    site = lab.topology.site(site_name)
    return Compute(site.name, name, lab.ns(name), site.compute_ip(name),
                   tuple(site.segmentation_ids))


class Emulator:
    """Keeps every compute's dataplane in step with its site's inventory
    (file lab) or its site's Neutron (Neutron lab), through one product
    backend per compute."""

    def __init__(self, lab: Lab):
        self.lab = lab
        self.computes = computes_of(lab)
        self.poll_interval = lab.truth.poll_interval
        self.sites = {s.name: lab.truth.view(s.name) for s in lab.topology.sites}
        self.good: dict[str, tuple[SiteSnapshot, list[RemotePort]]] = {}
        self.backends: dict[str, LinuxBackend] = {}

    def read(self, site: str):
        try:
            self.good[site] = self.sites[site].read()
        except (SourceError, ValidationError, KeyError, TypeError, OSError) as exc:
            LOG.error("site %s: keeping the last good snapshot: %s", site, exc)
        return self.good.get(site)

    def backend(self, compute: Compute) -> LinuxBackend:
        if compute.ns not in self.backends:
            self.backends[compute.ns] = LinuxBackend(compute.ns, learning=True)
        return self.backends[compute.ns]

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
                count += sync(self.backend(compute), desired_state(*state, compute),
                              compute.name)
            except Exception as exc:  # noqa: BLE001 - one compute must not stop the rest
                LOG.error("compute %s: %s", compute.name, exc)
                backend = self.backends.pop(compute.ns, None)
                if backend is not None:
                    backend.close()
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
        for backend in self.backends.values():
            backend.close()
        self.backends.clear()


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

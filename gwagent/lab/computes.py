"""What a lab's computes are: chosen once, from the topology's ``computes``.

``emulated`` (the default, and the only kind a file lab has): a compute
is Linux bridges and VXLAN devices programmed by the lab's L2 population
emulator (:mod:`gwagent.lab.l2pop`, one process for the lab). ``ovs-agent``
(a Neutron lab only): a compute is its own Open vSwitch driven by Neutron's
own ``neutron-openvswitch-agent`` (:mod:`gwagent.lab.ovs_agent`), started
with the site's Neutron (:mod:`gwagent.lab.neutron`).

:func:`of` gives the lab's kind; :mod:`gwagent.lab.build` calls it for
everything that differs (making a compute, plugging a VM, what runs after
the clouds are up, what "ready" means) and never asks which it is.
"""
from __future__ import annotations

import subprocess
import sys
import time

from gwagent.lab import l2pop, ovs_agent, probe
from gwagent.lab import neutron as lab_neutron
from gwagent.lab import topology as topo_mod
from gwagent.lab.names import LabError, bridge_name
from gwagent.lab.namespaces import index
from gwagent.lab.processes import start_process


class Emulated:
    """Linux bridges and the lab's L2 population emulator."""

    kind = topo_mod.EMULATED

    def __init__(self, lab):
        self.lab = lab

    def build(self, site, compute: str) -> None:
        l2pop.build_compute(l2pop.compute_of(self.lab, site.name, compute))

    def connect(self, cn, vm, tap: str) -> None:
        """The VM's tap (``cn``: netlink in its compute) into its network's bridge."""
        seg = self.lab.topology.site(vm.site).segmentation_id(vm.network)
        cn.link("set", index=index(cn, tap), master=index(cn, bridge_name(seg)))

    def attach(self, vms, progress=None) -> None:
        """After the sites' truth knows ``vms``: nothing (the emulator reads it)."""

    def detach(self, vm) -> None:
        pass

    def start(self, progress) -> None:
        l2pop.reconcile_once(self.lab)
        progress("L2 population emulator")
        start_process(self.lab, "l2pop", [sys.executable, "-m", "gwagent.lab.l2pop",
                                          "--lab-dir", str(self.lab.lab_dir)], order=1)

    def settle(self, progress) -> None:
        """Once the gateways registered their peers: program the computes
        now (idempotent with the emulator's own pass), not guess when."""
        l2pop.reconcile_once(self.lab)

    def status(self) -> dict:
        return {}


class OvsAgents:
    """An Open vSwitch and Neutron's own agent per compute."""

    kind = topo_mod.OVS_AGENT

    def __init__(self, lab):
        self.lab = lab

    def build(self, site, compute: str) -> None:
        ovs_agent.build_compute(self.lab, site, compute)

    def connect(self, cn, vm, tap: str) -> None:
        """The VM's eth0 sends into the userspace datapath: TX checksum
        offload off (../shared/DESIGN.md); br-int takes the tap in
        :meth:`attach`, once its Neutron port exists."""
        subprocess.run(["ip", "netns", "exec", self.lab.ns(vm.name), "ethtool", "-K", "eth0",
                        "tx", "off"], check=True, capture_output=True)

    def attach(self, vms, progress=None, timeout: float = 60.0) -> None:
        """Plug ``vms`` into br-int with their Neutron ports' IDs (as Nova
        does once a port is bound), and wait until their agents made them
        ACTIVE."""
        if progress is not None:
            progress(f"plugging {len(vms)} VMs into br-int; waiting for ACTIVE")
        for site in sorted({vm.site for vm in vms}):
            ports = lab_neutron.lab_ports(self.lab, site)
            for vm in (v for v in vms if v.site == site):
                ovs_agent.plug(self.lab, vm, ports[vm.name]["id"])
        lab_neutron.wait_active(self.lab, vms, timeout)
        for vm in vms:  # as a guest whose NIC just came up (a migrated one's RARP)
            probe.announce(self.lab.ns(vm.name), vm.mac, vm.ip)

    def detach(self, vm) -> None:
        ovs_agent.unplug(self.lab, vm)

    def start(self, progress) -> None:
        """Nothing: the agents came up with the sites' Neutrons."""

    def expected_places(self, compute: str) -> dict[tuple[int, str], str]:
        """{(VNI, MAC): VTEP} that l2pop must give ``compute``'s br-tun: for
        every network with a VM here, each VM elsewhere at its compute (same
        site) or at the site's gateway (other sites)."""
        topo = self.lab.topology
        site = topo.site_of_compute(compute)
        here = {vm.network for vm in topo.vms if vm.compute == compute}
        want = {}
        for vm in topo.vms:
            if vm.network in here and vm.compute != compute:
                vtep = (site.compute_ip(vm.compute) if vm.site == site.name
                        else site.tunnel_ip)
                want[(site.segmentation_id(vm.network), vm.mac)] = vtep
        return want

    def missing_places(self, compute: str) -> dict:
        have = {(r["vni"], r["mac"]): r["vtep"]
                for r in ovs_agent.tunnel_places(self.lab, compute) if r["by"] == "l2pop"}
        return {k: v for k, v in self.expected_places(compute).items() if have.get(k) != v}

    def settle(self, progress, timeout: float = 60.0) -> None:
        """Until every compute's br-tun sends every VM elsewhere to its VTEP
        (remote VMs to the site's gateway), by the agent's l2pop flows; then
        each compute's OVS resolves its underlay neighbours."""
        progress("computes: waiting for the agents' l2pop flows")
        deadline = time.monotonic() + timeout
        for site in self.lab.topology.sites:
            for compute in site.computes:
                while True:
                    missing = self.missing_places(compute)
                    if not missing:
                        break
                    if time.monotonic() > deadline:
                        raise LabError(f"{compute}'s br-tun lacks {len(missing)} places after "
                                       f"{timeout:.0f} s, e.g. " + ", ".join(
                                           f"VNI {vni} {mac} at {vtep}"
                                           for (vni, mac), vtep in list(missing.items())[:4]))
                    time.sleep(0.2)
                targets = [site.tunnel_ip] + [site.compute_ip(c) for c in site.computes
                                              if c != compute]
                ovs_agent.resolve_underlay(self.lab, compute, targets)

    def status(self) -> dict:
        out = {}
        for site in self.lab.topology.sites:
            for compute in site.computes:
                try:
                    out[compute] = {"unicast": ovs_agent.tunnel_places(self.lab, compute),
                                    "flood": ovs_agent.flood_vteps(self.lab, compute)}
                except Exception as exc:  # noqa: BLE001 - a compute gone: say so, not crash
                    out[compute] = {"error": str(exc)}
        return out


KINDS = {Emulated.kind: Emulated, OvsAgents.kind: OvsAgents}


def of(lab):
    """The lab's computes, by its topology's ``computes``."""
    return KINDS[lab.topology.computes](lab)

"""After a drill: does every gateway, compute and client point at the holder?

What is checked, for the MAC that carries the VIP (the virtual MAC, or the
holder's own MAC):

* every gateway: the MAC's place (its FDB pair on ``linux``, its flow on
  ``openflow``: gwagent.lab.gateways) leads to the holder: its compute's
  VTEP when the holder is in the gateway's site, else the transit IP of
  the holder's site's gateway;
* every compute of the network: its VXLAN entry for the MAC, static or
  learned, leads to the holder's compute (same site) or to its site's
  gateway (other site); the holder's own compute has no VXLAN entry for it.
  No entry at all is no stale entry: the frame floods and reaches the
  holder;
* with Neutron's OVS agent on the computes (``computes: ovs-agent``), the
  same read from the agent's own flows: br-tun's table 20 on the other
  computes, the MAC learned on the holder's tap in br-int on its own;
* every client: its neighbour entry for the VIP names the expected MAC.

A check is a :class:`Check` (node, what, expected, found, ok); the drill
reports the ones that failed.
"""
from __future__ import annotations

import dataclasses

from pyroute2 import IPRoute

from gwagent.drill.scenario import Node, Scenario
from gwagent.lab import gateways, ovs_agent
from gwagent.lab import topology as topo_mod
from gwagent.lab.names import tap_name, vxlan_name

NUD_FAILED, NUD_INCOMPLETE = 0x20, 0x01


@dataclasses.dataclass(frozen=True)
class Check:
    node: str
    what: str
    expected: str
    found: str

    @property
    def ok(self) -> bool:
        return self.expected == self.found

    def to_dict(self) -> dict:
        return dict(dataclasses.asdict(self), ok=self.ok)


def _entries(ns: str, devices: list[str], mac: str) -> dict[str, set]:
    """{device: {dst or None}} of the FDB entries for ``mac`` on ``devices``."""
    out: dict[str, set] = {d: set() for d in devices}
    with IPRoute(netns=ns, flags=0) as ipr:
        index = {}
        for dev in devices:
            found = ipr.link_lookup(ifname=dev)
            if found:
                index[found[0]] = dev
        for msg in ipr.fdb("dump"):
            dev = index.get(msg["ifindex"])
            if dev is None or (msg.get_attr("NDA_LLADDR") or "").lower() != mac:
                continue
            out[dev].add(msg.get_attr("NDA_DST"))
    return out


def _places(places: set) -> str:
    return ",".join(f"{side} {vtep}" for side, vtep in sorted(places)) or "none"


def _fmt(entries: set) -> str:
    return ",".join(sorted("bridge" if d is None else d for d in entries)) or "none"


def check(scenario: Scenario, holder: Node, mode: str) -> list[Check]:
    lab, topo = scenario.lab, scenario.lab.topology
    mac = scenario.expected_mac(holder, mode)
    net = topo.network(scenario.network)
    home = topo.site(holder.site)
    holder_vtep = home.compute_ip(holder.compute)
    checks: list[Check] = []
    for site in topo.sites:
        found = gateways.place_of(lab, site.name, net.name, mac)
        expected = ({("site", holder_vtep)} if site.name == holder.site
                    else {("transit", home.transit_ip)})
        checks.append(Check(gateways.node_of(lab, site.name), f"place of {mac} ({lab.backend})", _places(expected),
                            _places(found)))
        seg = site.segmentation_id(scenario.network)
        vx = vxlan_name(seg)
        tap = tap_name(holder.name)
        if topo.computes == topo_mod.OVS_AGENT:
            checks += _ovs_agent_computes(lab, site, seg, holder, holder_vtep, mac)
            continue
        for compute in site.computes:
            if compute == holder.compute:
                # Forwarding here is the bridge's: to the holder's tap. (A
                # VXLAN entry learned earlier is not used while it is.)
                found = _entries(lab.ns(compute), [tap], mac)[tap]
                checks.append(Check(compute, f"bridge entry {mac}", f"on {tap}",
                                    f"on {tap}" if found else "missing"))
                continue
            found = _entries(lab.ns(compute), [vx], mac)[vx]
            found.discard(None)
            if not found:
                continue  # floods: reaches the holder
            want = holder_vtep if site.name == holder.site else site.tunnel_ip
            checks.append(Check(compute, f"FDB {mac} on {vx}", want, _fmt(found)))
    for client in scenario.clients:
        checks.append(Check(client.name, f"neighbour {scenario.vip}", mac,
                            _neighbour(scenario.ns(client), scenario.vip)))
    return checks


def _ovs_agent_computes(lab, site, seg: int, holder: Node, holder_vtep: str,
                        mac: str) -> list[Check]:
    """The same, on computes with Neutron's OVS agent: the holder's compute
    has learned the MAC on the holder's tap in br-int; every other compute's
    br-tun (its l2pop or learned flows, table 20) sends it to the holder's
    compute (same site) or to the site's gateway (other site), or has no
    flow for it (it floods)."""
    checks = []
    for compute in site.computes:
        if compute == holder.compute:
            tap = tap_name(holder.name)
            found = ovs_agent.bridge_port_of(lab, compute, mac)
            checks.append(Check(compute, f"br-int entry {mac}", f"on {tap}",
                                f"on {found}" if found else "missing"))
            continue
        found = {r["vtep"] for r in ovs_agent.tunnel_places(lab, compute)
                 if r["vni"] == seg and r["mac"] == mac}
        if not found:
            continue  # floods: reaches the holder
        want = holder_vtep if site.name == holder.site else site.tunnel_ip
        checks.append(Check(compute, f"br-tun flows {mac} (VNI {seg})", want, _fmt(found)))
    return checks


def _neighbour(ns: str, ip: str) -> str:
    with IPRoute(netns=ns, flags=0) as ipr:
        for msg in ipr.get_neighbours(dst=ip):
            if msg["state"] & (NUD_FAILED | NUD_INCOMPLETE):
                return "unresolved"
            return (msg.get_attr("NDA_LLADDR") or "none").lower()
    return "none"

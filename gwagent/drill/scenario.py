"""The drill's VMs in a running lab, where the VIP is, and the GARP that moves it.

A drill brings its own VMs (module ``gwagent.drill``): on one stretched
network, three *holders* that may carry the VIP (two in the first site, on
different computes when it has two, one in the second site) and one
*client* per site. The holders' ports carry the VIP in their allowed
address pairs twice: with their own MAC (keepalived's default mode) and
with the shared virtual MAC (``use_vmac``), as Neutron's port security
demands. Addresses are free host addresses of the network's subnet, taken
from the top; nothing of the lab's own VMs changes.

The VIP is carried either on the holder's ``eth0`` (``own-mac``), or on a
macvlan ``dvip0`` with the virtual MAC (``vmac``), which is what keepalived's
``use_vmac`` builds.
"""
from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import socket
import time

from pyroute2 import IPRoute

from gwagent.lab import build, probe
from gwagent.lab import topology as topo_mod
from gwagent.lab.names import vxlan_name
from gwagent.lab.namespaces import sysctls_in
from gwagent.lab.record import Lab

OWN_MAC, VMAC = "own-mac", "vmac"
MODES = (OWN_MAC, VMAC)
INTRA, CROSS = "intra", "cross"
SCOPES = (INTRA, CROSS)
VRID = 51
VIP_IF = "dvip0"
ETH_P_ARP = 0x0806


class DrillError(Exception):
    """The drill cannot run; the message says why and what to do."""


def vmac_of(vrid: int) -> str:
    """VRRP's virtual MAC for a router id (RFC 5798: 00:00:5e:00:01:VRID)."""
    return f"00:00:5e:00:01:{vrid:02x}"


@dataclasses.dataclass(frozen=True)
class Node:
    name: str
    site: str
    compute: str
    ip: str
    mac: str


@dataclasses.dataclass
class Scenario:
    lab: Lab
    network: str
    vip: str
    vrid: int
    holders: dict[str, Node]      # "h1" (site 1), "h2" (site 1), "h3" (site 2)
    clients: list[Node]
    _sockets: dict = dataclasses.field(default_factory=dict, repr=False)
    frames: dict = dataclasses.field(default_factory=dict, repr=False)   # mac -> GARP

    def ipr(self, node: Node) -> IPRoute:
        """A netlink socket in the node's namespace, kept open: opening one
        switches namespaces (tens of ms), which would blur a move."""
        ns = self.ns(node)
        if ns not in self._sockets:
            self._sockets[ns] = IPRoute(netns=ns, flags=0)
        return self._sockets[ns]

    def packet_socket(self, node: Node) -> socket.socket:
        """A packet socket in the node's namespace, kept open (as ipr())."""
        key = ("packet", self.ns(node))
        if key not in self._sockets:
            self._sockets[key] = probe.ns_socket(self.ns(node), socket.AF_PACKET,
                                                 socket.SOCK_RAW, 0)
        return self._sockets[key]

    def close(self) -> None:
        for sock in self._sockets.values():
            sock.close()
        self._sockets.clear()

    @property
    def vmac(self) -> str:
        return vmac_of(self.vrid)

    @property
    def prefixlen(self) -> int:
        return self.lab.topology.prefixlen(self.network)

    def ns(self, node: Node) -> str:
        return self.lab.ns(node.name)

    def pair(self, scope: str) -> tuple[Node, Node]:
        """The two holders a move of ``scope`` goes between."""
        h = self.holders
        return (h["h1"], h["h2"]) if scope == INTRA else (h["h1"], h["h3"])

    def expected_mac(self, holder: Node, mode: str) -> str:
        return self.vmac if mode == VMAC else holder.mac


def _free_ips(lab: Lab, network: str, count: int) -> list[str]:
    subnet = ipaddress.ip_network(lab.topology.network(network).subnet)
    used = set()
    for vm in lab.topology.vms:
        if vm.network == network:
            used.add(vm.ip)
            used.update(p.ip_address for p in vm.allowed_address_pairs)
    free = [str(a) for a in reversed(list(subnet.hosts())) if str(a) not in used]
    if len(free) < count:
        raise DrillError(f"network {network}'s subnet {subnet} has fewer than {count} free "
                         "addresses for the drill's VMs")
    return free[:count]


def drilled_network(topo, network: str | None) -> str:
    """The network a drill runs on: ``network``, or the lab's first."""
    network = network or topo.networks[0].name
    try:
        topo.network(network)
    except KeyError:
        raise DrillError(f"no network {network!r} in the lab (networks: "
                         f"{', '.join(n.name for n in topo.networks)})") from None
    return network


def prepare(lab: Lab, network: str | None = None, vrid: int = VRID,
            progress=lambda msg: None, timeout: float = 60.0) -> Scenario:
    """Add the drill's VMs to the lab and wait until every client reaches
    every holder. Call :func:`teardown` after, even on failure."""
    topo = lab.topology
    if len(topo.sites) < 2:
        raise DrillError("a drill needs a lab with at least two sites")
    network = drilled_network(topo, network)
    if any(vm.name.startswith("dr-") for vm in topo.vms):
        raise DrillError("the lab already has drill VMs (dr-*): another drill is running, "
                         "or one was interrupted; remove them with "
                         "'gwagent drill cleanup'")
    s1, s2 = topo.sites[0], topo.sites[1]
    ips = _free_ips(lab, network, 4 + len(topo.sites))
    vip, ips = ips[0], ips[1:]
    vmac = vmac_of(vrid)
    pairs = lambda mac: [{"ip_address": vip, "mac_address": mac},  # noqa: E731
                         {"ip_address": vip, "mac_address": vmac}]
    places = {"h1": (s1, s1.computes[0]), "h2": (s1, s1.computes[-1]),
              "h3": (s2, s2.computes[0])}
    items = []
    for (role, (site, compute)), ip in zip(places.items(), ips):
        mac = topo_mod.derive_mac(f"dr-{role}")
        items.append({"name": f"dr-{role}", "site": site.name, "compute": compute,
                      "network": network, "ip": ip, "mac": mac,
                      "allowed_address_pairs": pairs(mac)})
    for site, ip in zip(topo.sites, ips[3:]):
        items.append({"name": f"dr-c-{site.name}", "site": site.name,
                      "compute": site.computes[-1], "network": network, "ip": ip})
    progress(f"adding the drill's VMs on {network}: holders dr-h1, dr-h2 (site {s1.name}), "
             f"dr-h3 (site {s2.name}), a client per site; VIP {vip}, virtual MAC {vmac}")
    build.add_vms(lab, items)
    vms = {vm.name: vm for vm in lab.topology.vms}

    def node(name):
        vm = vms[name]
        return Node(vm.name, vm.site, vm.compute, vm.ip, vm.mac)
    scenario = Scenario(lab, network, vip, vrid,
                        {role: node(f"dr-{role}") for role in places},
                        [node(f"dr-c-{site.name}") for site in topo.sites])
    for client in scenario.clients:
        # Let a gratuitous ARP replace a fresh neighbour entry at once.
        sysctls_in(scenario.ns(client), {"net.ipv4.neigh.eth0.locktime": "0"})
    wait_reachable(scenario, timeout, progress)
    for holder in scenario.holders.values():  # now: scapy takes ~0.3 s to load,
        scenario.ipr(holder)                  # a namespace switch tens of ms
        scenario.packet_socket(holder)
        for mac in (holder.mac, scenario.vmac):
            scenario.frames[mac] = garp_frame(mac, vip)
    return scenario


def expected_candidates(scenario: Scenario, site_name: str) -> list[dict]:
    """The virtual MAC's candidate locations as the gateway of ``site_name``
    must see them: local holders at their compute, remote ones at their
    site's gateway."""
    topo = scenario.lab.topology
    out = set()
    for h in scenario.holders.values():
        site = topo.site(h.site)
        out.add(("site", site.compute_ip(h.compute)) if h.site == site_name
                else ("transit", site.transit_ip))
    return [{"side": side, "vtep": vtep} for side, vtep in sorted(out)]


def wait_reachable(scenario: Scenario, timeout: float, progress=lambda msg: None) -> None:
    """Until every gateway knows the virtual MAC's candidates (it read every
    site's new ports) and every client pings every holder (registered)."""
    deadline = time.monotonic() + timeout
    for site in scenario.lab.topology.sites:
        want = expected_candidates(scenario, site.name)
        while True:
            status = build.agent_status(scenario.lab, site.name) or {}
            rows = [r for r in status.get("mobile_macs") or ()
                    if r["mac"] == scenario.vmac and r["network"] == scenario.network]
            if rows and rows[0]["candidates"] == want:
                break
            if time.monotonic() > deadline:
                raise DrillError(f"the gateway of site {site.name} does not show the virtual "
                                 f"MAC {scenario.vmac} with candidates {want} after "
                                 f"{timeout:.0f} s (see gwagent status --config-file "
                                 f"{scenario.lab.agent_conf(site.name)})")
            time.sleep(0.05)
    pending = [(c, h) for c in scenario.clients for h in scenario.holders.values()]
    while pending:
        pending = [(c, h) for c, h in pending
                   if probe.ping(scenario.ns(c), h.ip, attempts=1, timeout=0.3) is None]
        if pending and time.monotonic() > deadline:
            raise DrillError("the drill's VMs are not reachable after "
                             f"{timeout:.0f} s: " + ", ".join(f"{c.name}->{h.name}"
                                                               for c, h in pending[:6]))
    # Every site's registry holds the other sites' drill VMs, and no compute
    # pins the virtual MAC any more (before a site knows all its claimants,
    # its L2 population takes it for an ordinary MAC).
    drill_vms = [*scenario.holders.values(), *scenario.clients]
    topo = scenario.lab.topology
    for site in topo.sites:
        want = {n.mac for n in drill_vms if n.site != site.name}
        while True:
            try:
                have = {p.origin.mac for p in scenario.lab.truth.remote_ports(site.name)}
            except Exception:  # noqa: BLE001 - a registry being written: look again
                have = set()
            if want <= have:
                break
            if time.monotonic() > deadline:
                raise DrillError(f"site {site.name}'s registry lacks the drill's remote "
                                 f"ports after {timeout:.0f} s")
            time.sleep(0.1)
    # A site without a holder sees every claimant behind its gateway (one
    # VTEP): its computes rightly pin the virtual MAC there.
    holder_sites = {h.site for h in scenario.holders.values()}
    for site in topo.sites:
        if site.name not in holder_sites:
            continue
        dev = vxlan_name(site.segmentation_id(scenario.network))
        for compute in site.computes:
            while _pinned(scenario.lab.ns(compute), dev, scenario.vmac):
                if time.monotonic() > deadline:
                    raise DrillError(f"{compute} still pins the virtual MAC after "
                                     f"{timeout:.0f} s")
                time.sleep(0.1)
    progress("every client reaches every holder; every site knows every claimant")


def _pinned(ns: str, dev: str, mac: str) -> bool:
    """Whether ``dev`` in ``ns`` has a static (permanent) entry for ``mac``."""
    with IPRoute(netns=ns, flags=0) as ipr:
        found = ipr.link_lookup(ifname=dev)
        if not found:
            return False
        return any(msg["ifindex"] == found[0] and msg["state"] & 0x80
                   and (msg.get_attr("NDA_LLADDR") or "").lower() == mac
                   for msg in ipr.fdb("dump"))


def teardown(lab: Lab, scenario: Scenario | None = None) -> None:
    """Remove every drill VM (dr-*) from the lab, and their VIPs with them."""
    if scenario is not None:
        scenario.close()
    names = [vm.name for vm in lab.topology.vms if vm.name.startswith("dr-")]
    if names:
        build.remove_vms(lab, names)


# -- the VIP --------------------------------------------------------------------

def _index(ipr: IPRoute, name: str) -> int | None:
    found = ipr.link_lookup(ifname=name)
    return found[0] if found else None


def place_vip(scenario: Scenario, holder: Node, mode: str) -> None:
    """Give ``holder`` the VIP (own MAC: on eth0; vmac: on dvip0)."""
    ipr = scenario.ipr(holder)
    dev = eth0 = _index(ipr, "eth0")
    if mode == VMAC:
        dev = _index(ipr, VIP_IF)
        if dev is None:
            ipr.link("add", ifname=VIP_IF, kind="macvlan", link=eth0, macvlan_mode="bridge")
            dev = _index(ipr, VIP_IF)
            ipr.link("set", index=dev, address=scenario.vmac)
        ipr.link("set", index=dev, state="up")
    with contextlib.suppress(Exception):  # already there
        ipr.addr("add", index=dev, address=scenario.vip, prefixlen=scenario.prefixlen)


def remove_vip(scenario: Scenario, holder: Node) -> None:
    """Take the VIP from ``holder``: the virtual MAC's device goes down (a
    delete waits for an RCU grace period, tens of ms), the address goes."""
    ipr = scenario.ipr(holder)
    dev = _index(ipr, VIP_IF)
    if dev is not None:
        ipr.link("set", index=dev, state="down")
    eth0 = _index(ipr, "eth0")
    if eth0 is not None:
        with contextlib.suppress(Exception):  # not there
            ipr.addr("del", index=eth0, address=scenario.vip, prefixlen=scenario.prefixlen)


def garp_frame(mac: str, ip: str) -> bytes:
    """A gratuitous ARP request (RFC 5227 announcement), built with scapy."""
    from scapy.layers.l2 import ARP, Ether
    return bytes(Ether(src=mac, dst="ff:ff:ff:ff:ff:ff")
                 / ARP(op=1, hwsrc=mac, psrc=ip, hwdst="00:00:00:00:00:00", pdst=ip))


def send_garp(scenario: Scenario, holder: Node, mode: str) -> float:
    """Send one GARP for the VIP from ``holder``; returns when it left
    (monotonic, taken right after the send)."""
    mac = scenario.expected_mac(holder, mode)
    ifname = VIP_IF if mode == VMAC else "eth0"
    frame = scenario.frames.get(mac)
    if frame is None:
        frame = scenario.frames[mac] = garp_frame(mac, scenario.vip)
    sock = scenario.packet_socket(holder)
    before = time.monotonic()
    sock.sendto(frame, (ifname, ETH_P_ARP))
    return before

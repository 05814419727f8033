"""What a lab gateway's dataplane holds, on either backend, for the lab's
checks, the drills and the tests: the place of every MAC of a network.

On ``linux`` the kernel's FDB (read through the product's own Linux
backend, which only reads); on ``openflow`` the switch's flows, read with
``ovs-ofctl`` (a second controller would take the agent's listening port;
the lab, unlike the product, may read tools' output).
"""
from __future__ import annotations

import re

from gwagent.dataplane.linux import LinuxBackend
from gwagent.lab import vrrp
from gwagent.lab.ovs import Ovs
from gwagent.openflow import flows as fl
from gwagent.state import FloodEntry, MacEntry

_GROUP = re.compile(r"group_id=(\d+),")
_BUCKET_DST = re.compile(r"set_field:([0-9.]+)->tun_dst")
_MAC_FLOW = re.compile(r"cookie=0x([0-9a-f]+),.*\breg0=0x([0-9a-f]+),dl_dst=([0-9a-f:]+) "
                       r"actions=set_field:(0x1|0)->reg2,set_field:([0-9.]+)->tun_dst")


def node_of(lab, site: str, node: str | None = None) -> str:
    """The gateway node meant: ``node``, else the site's active one (the
    one that holds the site's addresses; the first if none does)."""
    return node or vrrp.active(lab, site) or lab.topology.site(site).gateways[0]


def ovs_of(lab, site: str, node: str | None = None) -> Ovs:
    node = node_of(lab, site, node)
    return Ovs(lab.ns(node), lab.ovs_dir(site, node))


def places(lab, site: str, node: str | None = None) -> set[MacEntry]:
    """Every MAC place the gateway of ``site`` holds (all networks): its
    active node's, or ``node``'s."""
    node = node_of(lab, site, node)
    ns = lab.ns(node)
    if lab.backend == "openflow":
        names = {net.transit_vni: net.name for net in lab.topology.networks}
        out = set()
        for line in ovs_of(lab, site, node).ofctl("gwa-ovs", "dump-flows").splitlines():
            m = _MAC_FLOW.search(line)
            if m and fl.kind_of(int(m[1], 16)) == fl.K_MAC:
                side = fl.SIDE_OF[1 if m[4] == "0x1" else 0]
                out.add(MacEntry(names.get(int(m[2], 16), "?"), m[3], side, m[5]))
        return out
    with LinuxBackend(ns) as backend:
        return set(backend.observe().macs)


def floods(lab, site: str, node: str | None = None) -> set[FloodEntry]:
    """Every flood destination the gateway of ``site`` holds: the all-zero
    FDB entries, or the buckets of the flood groups."""
    node = node_of(lab, site, node)
    ns = lab.ns(node)
    if lab.backend == "openflow":
        names = {net.transit_vni: net.name for net in lab.topology.networks}
        out = set()
        for line in ovs_of(lab, site, node).ofctl("gwa-ovs", "dump-groups").splitlines():
            m = _GROUP.search(line)
            if m:
                vni, side = fl.group_key(int(m[1]))
                out.update(FloodEntry(names.get(vni, "?"), side, dst)
                           for dst in _BUCKET_DST.findall(line))
        return out
    with LinuxBackend(ns) as backend:
        return set(backend.observe().floods)


def place_of(lab, site: str, network: str, mac: str) -> set[tuple[str, str | None]]:
    """The (side, VTEP) places of one MAC (empty: none; two: broken)."""
    return {(e.side, e.vtep) for e in places(lab, site) if e.network == network and e.mac == mac}


def delete_by_hand(lab, site: str, network: str, mac: str) -> None:
    """Take a MAC's place away as an operator's mistake would: its kernel
    entries, or its flow."""
    ns = lab.ns(node_of(lab, site))
    vni = lab.topology.network(network).transit_vni
    if lab.backend == "openflow":
        ovs_of(lab, site).ofctl("gwa-ovs", "del-flows", f"table={fl.UNICAST},reg0={vni},"
                                                        f"dl_dst={mac}")
        return
    with LinuxBackend(ns) as backend:
        for e in backend.observe().macs:
            if e.network == network and e.mac == mac:
                dev = f"gwa-{'vl' if e.side == 'site' else 'vt'}-{vni}"
                idx = backend.nl.ipr.link_lookup(ifname=dev)[0]
                backend.nl.ipr.fdb("del", ifindex=idx, lladdr=mac, dst=e.vtep)


def break_network_by_hand(lab, site: str, network: str) -> None:
    """Break a network as a mistake would: its site-side VXLAN device
    deleted, or its classify/flood/egress flows deleted."""
    ns = lab.ns(node_of(lab, site))
    vni = lab.topology.network(network).transit_vni
    if lab.backend == "openflow":
        ovs_of(lab, site).ofctl("gwa-ovs", "del-flows",
                                f"cookie={fl.cookie(fl.K_NETWORK, vni):#x}/-1")
        return
    with LinuxBackend(ns) as backend:
        for idx in backend.nl.ipr.link_lookup(ifname=f"gwa-vl-{vni}"):
            backend.nl.ipr.link("del", index=idx)


FOREIGN_MAC, FOREIGN_DST = "02:00:00:00:0f:01", "198.18.1.250"


def add_foreign(lab, site: str) -> dict:
    """Objects of someone else's on the gateway: a Linux bridge always; on
    linux a VXLAN device with entries and an entry appended to one of our
    devices; on openflow a flow on our bridge with another cookie and a
    bridge of its own with a flow."""
    ns = lab.ns(node_of(lab, site))
    vni = lab.topology.networks[0].transit_vni
    with LinuxBackend(ns) as backend:
        ipr = backend.nl.ipr
        ipr.link("add", ifname="foreign0", kind="bridge")
        if lab.backend == "linux":
            ipr.link("add", ifname="fx-900", kind="vxlan", vxlan_id=900,
                     vxlan_local=lab.topology.site(site).tunnel_ip, vxlan_port=4790,
                     vxlan_learning=0)
            fx = ipr.link_lookup(ifname="fx-900")[0]
            ipr.fdb("append", ifindex=fx, lladdr="00:00:00:00:00:00", dst=FOREIGN_DST)
            ipr.fdb("append", ifindex=fx, lladdr=FOREIGN_MAC, dst=FOREIGN_DST)
            owned = ipr.link_lookup(ifname=f"gwa-vt-{vni}")[0]
            ipr.fdb("append", ifindex=owned, lladdr=FOREIGN_MAC, dst=FOREIGN_DST)
    if lab.backend == "openflow":
        ovs = ovs_of(lab, site)
        ovs.ofctl("gwa-ovs", "add-flow", "cookie=0x1234,table=20,priority=5,actions=drop")
        ovs.vsctl("add-br", "fbr0", "--", "set", "bridge", "fbr0", "datapath_type=netdev")
        ovs.ofctl("fbr0", "add-flow", "cookie=0x99,priority=3,actions=drop")
    return {"vni": vni}


def foreign_state(lab, site: str, foreign: dict):
    ns = lab.ns(node_of(lab, site))
    if lab.backend == "openflow":
        ovs = ovs_of(lab, site)
        ours = [line.split(", ", 2)[-1].split(" ", 3)[-1] for line in
                ovs.ofctl("gwa-ovs", "dump-flows").splitlines() if "cookie=0x1234" in line]
        theirs = [line.split(" ")[-1] for line in ovs.ofctl("fbr0", "dump-flows").splitlines()
                  if "cookie=0x99" in line]
        return ours, theirs
    with LinuxBackend(ns) as backend:
        ipr = backend.nl.ipr
        fx = ipr.link_lookup(ifname="fx-900")
        owned = ipr.link_lookup(ifname=f"gwa-vt-{foreign['vni']}")
        entries = sorted((m["ifindex"] == owned[0], m.get_attr("NDA_LLADDR"),
                          m.get_attr("NDA_DST")) for m in ipr.fdb("dump")
                         if m["ifindex"] in fx + owned and
                         (m["ifindex"] in fx or m.get_attr("NDA_LLADDR") == FOREIGN_MAC))
        return bool(fx), entries


def remove_foreign(lab, site: str, foreign: dict) -> None:
    ns = lab.ns(node_of(lab, site))
    with LinuxBackend(ns) as backend:
        ipr = backend.nl.ipr
        for name in ("foreign0", "fx-900"):
            for idx in ipr.link_lookup(ifname=name):
                ipr.link("del", index=idx)
        if lab.backend == "linux":
            for idx in ipr.link_lookup(ifname=f"gwa-vt-{foreign['vni']}"):
                ipr.fdb("del", ifindex=idx, lladdr=FOREIGN_MAC, dst=FOREIGN_DST)
    if lab.backend == "openflow":
        ovs = ovs_of(lab, site)
        ovs.ofctl("gwa-ovs", "del-flows", "cookie=0x1234/-1")
        ovs.vsctl("--if-exists", "del-br", "fbr0")

"""Two gateway nodes per site: keepalived (VRRP) holds the site's addresses.

A site with ``gateways: [a-gw1, a-gw2]`` keeps its tunnel address
(198.18.<n>.1, what its computes send to) and its transit address
(198.18.0.<n>, what the peers send to) as virtual addresses of one VRRP
instance per site, run by keepalived in each node's namespace:

* adverts (VRRPv3, every ``ADVERT_MS``) on the site segment, from the
  nodes' own addresses; VRID = the site's number;
* the first node has the higher priority and preempts: it is master when
  it is up, and takes the addresses back when it returns (give-back);
* ``track_interface`` on the other NICs: a node that loses either NIC
  goes to FAULT and gives both addresses up;
* the addresses live on devices of their own with a *virtual MAC* that
  both nodes share (``vip-site`` and ``vip-transit``: macvlans on the NICs
  on ``linux``, internal ports of the underlay bridges on ``openflow``;
  02:67:77:<n>:00:01 and :02), VRRP's virtual MAC in spirit. On takeover
  keepalived's gratuitous ARP then only teaches the underlay switches
  where that MAC is now: no neighbour cache of a compute or a peer has to
  change. Why: measured on the OpenFlow lab, a peer's OVS learns a
  tunnel neighbour only from an ARP that misses its datapath cache, so
  the second takeover's GARP (identical to the first's, still cached) was
  never learnt and the peer sent to the dead node for seconds; with the
  MAC shared there is nothing to learn. Every device of a node answers ARP
  only for its own addresses (``arp_ignore``) and asks with them
  (``arp_announce``), so no NIC ties the site's addresses to its own MAC.

Why keepalived and not an election of the agent's own: the addresses must
move when the *node* dies (both NICs, the kernel, the power), which no
agent on that node can report; VRRP is what carriers already run and
monitor on their underlays, and keepalived's detection time (3 adverts
plus skew) is measured and documented (DESIGN.md). The agent only reads
who holds the addresses (``[gateway] high_availability = vrrp``): the
holder is the active node and the one registrar of the site.

Each node's keepalived is a lab process (``<node>-vrrp``), stopped by its
recorded PID; its notify script writes the node's VRRP state to
``<lab_dir>/<node>-vrrp/state``.
"""
from __future__ import annotations

import subprocess

from pyroute2 import IPRoute

from gwagent.lab.namespaces import index, sysctls_in
from gwagent.lab.namespaces import ipr as open_ipr
from gwagent.lab.ovs import Ovs
from gwagent.lab.processes import start_process

ADVERT_MS = 100
KEEPALIVED = "keepalived"
PRIORITY = (200, 100)

CONF = """\
global_defs {{
    router_id {node}
    vrrp_version 3
    script_user root
    enable_script_security
    vrrp_garp_master_delay 1
    vrrp_garp_master_repeat 3
}}
vrrp_instance site_{site} {{
    state BACKUP
    interface {site_nic}
    virtual_router_id {vrid}
    priority {priority}
    advert_int {advert}
    track_interface {{
        {track}
    }}
    virtual_ipaddress {{
        {tunnel_ip}/24 dev {site_vip}
        {transit_ip}/24 dev {transit_vip}
    }}
    notify {notify}
}}
"""

NOTIFY = """#!/bin/sh
# keepalived notify: TYPE NAME STATE PRIORITY
echo "$3" > {state}.tmp && mv {state}.tmp {state}
"""


VIP_DEVICES = ("vip-site", "vip-transit")
#: the metric of a node's own site-subnet route, behind the site address's (0)
NODE_ROUTE_METRIC = 100


def virtual_macs(site) -> tuple[str, str]:
    """The MACs of the site's tunnel and transit addresses (both nodes)."""
    return f"02:67:77:{site.number:02x}:00:01", f"02:67:77:{site.number:02x}:00:02"


def make_vip_devices(lab, site, node: str) -> None:
    """The devices that carry the site's addresses when the node is active,
    with the site's virtual MACs; and ARP answered by each device only
    for its own addresses."""
    ns = lab.ns(node)
    for nic, dev, mac, bridge in zip(("eth0", "eth1"), VIP_DEVICES, virtual_macs(site),
                                     ("ul-site", "ul-transit")):
        if lab.backend == "openflow":
            Ovs(ns, lab.ovs_dir(site.name, node)).vsctl(
                "add-port", bridge, dev, "--", "set", "interface", dev, "type=internal",
                f"mac=\"{mac}\"")
        else:
            with open_ipr(ns) as ipr:
                ipr.link("add", ifname=dev, kind="macvlan", link=index(ipr, nic),
                         macvlan_mode="private", address=mac)
        with open_ipr(ns) as ipr:
            ipr.link("set", index=index(ipr, dev), state="up")
    if lab.backend != "openflow":
        # The node's own site address shares the site's subnet: its prefix
        # route goes after the site address's (metric), so what the active
        # node sends from the site's address (VXLAN to the computes) leaves
        # by vip-site with the virtual MAC, not by eth0 with the NIC's.
        # Measured with Neutron's OVS agent on the computes: their OVS kept
        # the site's address at the NIC MAC of the node that sent last, and
        # after a give-back sent every frame to the node that had let go.
        address = f"{site.node_tunnel_ip(node)}/24"
        subprocess.run(["ip", "-n", ns, "addr", "del", address, "dev", "eth0"], check=True)
        subprocess.run(["ip", "-n", ns, "addr", "add", address, "dev", "eth0", "metric",
                        str(NODE_ROUTE_METRIC)], check=True)
    # arp_announce: the node's own ARP requests (a kernel resolving a
    # compute for a VXLAN packet from the site's address) carry the NIC's
    # own address, never the site's (measured: with the default, every
    # compute learnt the site's address at the active node's NIC MAC).
    sysctls_in(ns, {"net.ipv4.conf.all.arp_ignore": "1",
                    "net.ipv4.conf.all.arp_announce": "2"})


def config(site, node: str, nics: tuple[str, str], notify: str,
           advert_ms: int = ADVERT_MS) -> str:
    """One node's keepalived.conf (``nics``: where its own site and transit
    addresses live; VRRP's adverts go out of the first)."""
    # Every NIC the node's traffic needs: its addresses' devices and, under
    # OVS, the physical NICs behind the bridges (an internal port stays up
    # when its NIC goes down).
    track = [n for n in dict.fromkeys((nics[1], "eth0", "eth1")) if n != nics[0]]
    return CONF.format(node=node, site=site.name, site_nic=nics[0], transit_nic=nics[1],
                       track="\n        ".join(track),
                       site_vip=VIP_DEVICES[0], transit_vip=VIP_DEVICES[1],
                       vrid=site.number, priority=PRIORITY[site.gateways.index(node)],
                       advert=f"{advert_ms / 1000:g}", tunnel_ip=site.tunnel_ip,
                       transit_ip=site.transit_ip, notify=notify)


def start(lab, site, node: str, nics: tuple[str, str], advert_ms: int = ADVERT_MS) -> dict:
    """Write the node's configuration and start its keepalived (a lab process)."""
    workdir = lab.keepalived_dir(site.name, node)
    workdir.mkdir(parents=True, exist_ok=True)
    notify = workdir / "notify.sh"
    notify.write_text(NOTIFY.format(state=workdir / "state"))
    notify.chmod(0o700)
    conf = workdir / "keepalived.conf"
    conf.write_text(config(site, node, nics, str(notify), advert_ms))
    # No syslog: --log-console writes to its stderr, the process's log file.
    argv = ["ip", "netns", "exec", lab.ns(node), KEEPALIVED, "--dont-fork", "--no-syslog",
            "--log-console", "--log-detail", "--vrrp", "--use-file", str(conf),
            "--pid", str(workdir / "keepalived.pid"), "--vrrp_pid", str(workdir / "vrrp.pid")]
    return start_process(lab, f"{node}-vrrp", argv, group=True, order=1)


def state(lab, site: str, node: str) -> str | None:
    """The node's VRRP state as keepalived last reported it (MASTER,
    BACKUP, FAULT, STOP), or None before the first report."""
    try:
        return (lab.keepalived_dir(site, node) / "state").read_text().strip() or None
    except OSError:
        return None


def holds(lab, site, node: str) -> bool:
    """Whether the node holds both of the site's addresses now (read from
    its kernel: the truth that traffic follows)."""
    with IPRoute(netns=lab.ns(node), flags=0) as ipr:
        have = {a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(family=2)}
    return {site.tunnel_ip, site.transit_ip} <= have


def active(lab, site_name: str) -> str | None:
    """The site's gateway node that holds its addresses (None: none does;
    a site's only gateway always does)."""
    site = lab.topology.site(site_name)
    if not site.ha:
        return site.gateways[0]
    for node in site.gateways:
        if holds(lab, site, node):
            return node
    return None

"""Lab topology: the shape of a lab, validated once, with derived addresses.

A topology file (YAML) names what exists; every underlay address is derived
from the order of the sites and computes, so a file never carries an address
that could collide. The format::

    networks:                      # stretched networks, shared by every site
      - name: red
        transit_vni: 5001          # VNI between the gateways (same in every site)
        subnet: 198.19.10.0/24     # tenant subnet, inside 198.19.0.0/16;
      - name: blue                 # two networks may use the same subnet
        transit_vni: 5002
        subnet: 198.19.10.0/24
    sites:
      - name: a
        gateway: a-gw              # optional, default <site>-gw; or two nodes,
                                   # active/standby: gateways: [a-gw1, a-gw2]
        computes: [a-cn1, a-cn2]   # at least one
        segmentation_ids: {red: 1001, blue: 1002}   # one per network
      - name: b
        computes: [b-cn1, b-cn2]
        segmentation_ids: {red: 2001, blue: 2002}
    computes: ovs-agent            # optional: emulated (default) or ovs-agent
    vms:
      - {name: a1-red, site: a, compute: a-cn1, network: red, ip: 198.19.10.11}
      # optional per VM: mac (default fa:16:3e:xx:xx:xx derived from the
      # name; unique per network), port_id (default lab-<name>),
      # allowed_address_pairs: [{ip_address: 198.19.10.100, mac_address:
      # 00:00:5e:00:01:01}] (a pair's MAC may be shared by several VMs: a
      # VRRP virtual MAC, mobile among them)

Derived underlay (198.18.0.0/16, never written in the file): site number n
(1-based, in file order) owns the segment 198.18.<n>.0/24 with its gateway's
tunnel IP 198.18.<n>.1 and its computes at .11, .12, ...; the gateways meet on
the transit segment 198.18.0.0/24 at 198.18.0.<n>. Tenant subnets live in
198.19.0.0/16, so underlay and overlay can never overlap.

A site with two gateway nodes (``gateways: [a-gw1, a-gw2]``, issue 9) keeps
those two addresses as *virtual* ones, held by the active node by VRRP
(keepalived, one instance per site, adverts on the site segment): the
computes and the peers never see which node holds them. Each node has
addresses of its own, 198.18.<n>.2 and .3 on the site segment (VRRP's
adverts) and 198.18.255.<2n-1> and <2n> on the transit segment (a second
subnet on the same wire, beyond every site's; so at most 127 sites when
one has two gateways). The first node is the preferred master.

Why a separate shape and not the inventory format: the inventory is what one
site's cloud knows; the topology is what the lab builds (namespaces, underlay
segments, which compute hosts which VM). The lab derives each site's
inventory from it with :func:`site_snapshot`.
"""
from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import re
from pathlib import Path

import yaml

from gwagent.model import (AddressPair, Endpoint, Gateway, Network, Site, SiteSnapshot,
                           ValidationError, mac as check_mac)

UNDERLAY = ipaddress.ip_network("198.18.0.0/16")
TENANT_SPACE = ipaddress.ip_network("198.19.0.0/16")
TRANSIT_SEGMENT = ipaddress.ip_network("198.18.0.0/24")
MAX_SITES = 250
MAX_COMPUTES = 200
#: the underlay's MTU (``mtu:`` in a topology file): every veth of the
#: switch, the computes and the gateways; the VMs get it less VXLAN's 50
UNDERLAY_MTU, UNDERLAY_MTUS = 1500, (1280, 9216)
#: what a compute is (``computes:`` in a topology file): ``emulated``, Linux
#: bridges programmed by the lab's L2 population emulator (gwagent.lab.l2pop,
#: the light default), or ``ovs-agent``, an Open vSwitch per compute driven
#: by Neutron's own neutron-openvswitch-agent (gwagent.lab.ovs_agent; a
#: Neutron lab only)
EMULATED, OVS_AGENT = "emulated", "ovs-agent"
COMPUTE_KINDS = (EMULATED, OVS_AGENT)
MAX_HA_SITES = 127  # node transit addresses 198.18.255.<2n-1>, <2n>
HA_TRANSIT_SUBNET = ipaddress.ip_network("198.18.255.0/24")
NODE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,39}$")
RESERVED_NAMES = {"switch"}
TENANT_VNIS = (60000, 60099)  # the lab Neutrons' tenant VXLAN range (lab.neutron)
DEFAULT_FILE = Path(__file__).with_name("default.yaml")


class TopologyError(ValueError):
    """The topology file is wrong; the message says where and why."""


@dataclasses.dataclass(frozen=True)
class LabNetwork:
    name: str
    transit_vni: int
    subnet: str


@dataclasses.dataclass(frozen=True)
class LabSite:
    name: str
    number: int  # 1-based position in the file; fixes the underlay addresses
    gateways: tuple[str, ...]  # the gateway nodes: one, or two (active/standby)
    computes: tuple[str, ...]
    segmentation_ids: tuple[tuple[str, int], ...]  # (network, VNI), file order

    @property
    def ha(self) -> bool:
        """Two gateway nodes sharing the site's addresses by VRRP."""
        return len(self.gateways) > 1

    @property
    def gateway(self) -> str:
        """The site's gateway as its cloud knows it (the model's
        ``Gateway.host``, the owner of its remote ports): the node itself, or
        for two nodes the name they share, ``<site>-gw``."""
        return f"{self.name}-gw" if self.ha else self.gateways[0]

    def gateway_key(self, node: str | None = None) -> str:
        """What a gateway node's files and agent process are named by:
        ``<site>-gw`` for a site's only node, the node's name for two."""
        node = node or self.gateways[0]
        if node not in self.gateways:
            raise KeyError(node)
        return node if self.ha else f"{self.name}-gw"

    def node_tunnel_ip(self, node: str) -> str:
        """A gateway node's own address on the site segment."""
        return f"198.18.{self.number}.{2 + self.gateways.index(node)}" if self.ha \
            else self.tunnel_ip

    def node_transit_ip(self, node: str) -> str:
        """A gateway node's own address on the transit segment."""
        return (f"198.18.255.{2 * self.number - 1 + self.gateways.index(node)}" if self.ha
                else self.transit_ip)

    @property
    def segment(self) -> str:
        return f"198.18.{self.number}.0/24"

    @property
    def tunnel_ip(self) -> str:
        return f"198.18.{self.number}.1"

    @property
    def transit_ip(self) -> str:
        return f"198.18.0.{self.number}"

    def compute_ip(self, compute: str) -> str:
        return f"198.18.{self.number}.{11 + self.computes.index(compute)}"

    def segmentation_id(self, network: str) -> int:
        return dict(self.segmentation_ids)[network]


@dataclasses.dataclass(frozen=True)
class Vm:
    name: str
    site: str
    compute: str
    network: str
    ip: str
    mac: str
    port_id: str
    allowed_address_pairs: tuple[AddressPair, ...] = ()


@dataclasses.dataclass(frozen=True)
class Topology:
    networks: tuple[LabNetwork, ...]
    sites: tuple[LabSite, ...]
    vms: tuple[Vm, ...]
    mtu: int = UNDERLAY_MTU  # the underlay's
    computes: str = EMULATED  # what every compute is (COMPUTE_KINDS)

    @property
    def vm_mtu(self) -> int:
        """The VMs' MTU: the underlay's less VXLAN over IPv4."""
        return self.mtu - 50

    def site(self, name: str) -> LabSite:
        for site in self.sites:
            if site.name == name:
                return site
        raise KeyError(name)

    def network(self, name: str) -> LabNetwork:
        for net in self.networks:
            if net.name == name:
                return net
        raise KeyError(name)

    def vm(self, name: str) -> Vm:
        for vm in self.vms:
            if vm.name == name:
                return vm
        raise KeyError(name)

    def site_of_compute(self, compute: str) -> LabSite:
        for site in self.sites:
            if compute in site.computes:
                return site
        raise KeyError(compute)

    def prefixlen(self, network: str) -> int:
        return ipaddress.ip_network(self.network(network).subnet).prefixlen


def derive_mac(vm_name: str) -> str:
    """A stable Neutron-style MAC (fa:16:3e:..) from the VM's name."""
    digest = hashlib.sha256(vm_name.encode()).digest()
    return "fa:16:3e:" + ":".join(f"{b:02x}" for b in digest[:3])


def load(path: str | Path | None = None) -> Topology:
    """Read and validate a topology file (the default one without a path)."""
    path = Path(path) if path else DEFAULT_FILE
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise TopologyError(f"cannot read topology {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise TopologyError(f"{path}: not valid YAML: {exc}") from None
    try:
        return parse(data)
    except TopologyError as exc:
        raise TopologyError(f"{path}: {exc}") from None


def _need(mapping: dict, key: str, where: str):
    if key not in mapping:
        raise TopologyError(f"{where}.{key}: missing")
    return mapping[key]


def _node_name(value: object, where: str, seen: dict[str, str]) -> str:
    text = str(value) if value is not None else ""
    if not NODE_NAME_RE.match(text):
        raise TopologyError(f"{where}: {value!r}: must be 1-40 letters, digits, '-', '_' or '.'")
    if text in RESERVED_NAMES:
        raise TopologyError(f"{where}: {text!r}: reserved node name")
    if text in seen:
        raise TopologyError(f"{where}: {text!r}: name already used by {seen[text]}")
    seen[text] = where
    return text


def _mapping_list(data: dict, key: str) -> list[dict]:
    items = _need(data, key, "topology")
    if not isinstance(items, list) or not items:
        raise TopologyError(f"{key}: must be a non-empty list")
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise TopologyError(f"{key}[{i}]: must be a mapping")
    return items


def _unknown_keys(item: dict, known: set[str], where: str) -> None:
    extra = sorted(set(item) - known)
    if extra:
        raise TopologyError(f"{where}: unknown key {extra[0]!r} (known: {', '.join(sorted(known))})")


def parse(data: object) -> Topology:
    """Validate a topology's parsed content; raise TopologyError naming the field."""
    if not isinstance(data, dict):
        raise TopologyError("a topology must be a mapping with networks, sites and vms")
    _unknown_keys(data, {"networks", "sites", "vms", "mtu", "computes"}, "topology")
    try:
        return _parse(data)
    except ValidationError as exc:
        raise TopologyError(str(exc)) from None


def _parse(data: dict) -> Topology:
    networks: list[LabNetwork] = []
    for i, item in enumerate(_mapping_list(data, "networks")):
        where = f"networks[{i}]"
        _unknown_keys(item, {"name", "transit_vni", "subnet"}, where)
        net = Network(_need(item, "name", where), 1, _need(item, "transit_vni", where))
        try:
            subnet = ipaddress.ip_network(str(_need(item, "subnet", where)), strict=True)
        except ValueError as exc:
            raise TopologyError(f"{where}.subnet: {item['subnet']!r}: {exc}") from None
        if not subnet.subnet_of(TENANT_SPACE) or subnet.num_addresses < 4:
            raise TopologyError(f"{where}.subnet: {str(subnet)!r}: must be a subnet of "
                                f"{TENANT_SPACE} with room for hosts (the lab's tenant space)")
        if any(n.name == net.name for n in networks):
            raise TopologyError(f"{where}.name: {net.name!r}: network listed twice")
        if any(n.transit_vni == net.transit_vni for n in networks):
            raise TopologyError(f"{where}.transit_vni: {net.transit_vni}: used twice")
        networks.append(LabNetwork(net.name, net.transit_vni, str(subnet)))
    net_names = [n.name for n in networks]

    nodes: dict[str, str] = {}
    sites: list[LabSite] = []
    site_items = _mapping_list(data, "sites")
    if len(site_items) > MAX_SITES:
        raise TopologyError(f"sites: at most {MAX_SITES} sites")
    for i, item in enumerate(site_items):
        where = f"sites[{i}]"
        _unknown_keys(item, {"name", "gateway", "gateways", "computes", "segmentation_ids"},
                      where)
        name = Site(_need(item, "name", where), Gateway("x", "198.18.0.1", "198.18.0.1")).name
        if any(s.name == name for s in sites):
            raise TopologyError(f"{where}.name: {name!r}: site listed twice")
        gateways = _gateways(item, where, name, i + 1, nodes)
        computes = _need(item, "computes", where)
        if not isinstance(computes, list) or not computes:
            raise TopologyError(f"{where}.computes: must be a non-empty list of names")
        if len(computes) > MAX_COMPUTES:
            raise TopologyError(f"{where}.computes: at most {MAX_COMPUTES} per site")
        computes = tuple(_node_name(c, f"{where}.computes[{j}]", nodes)
                         for j, c in enumerate(computes))
        seg = _need(item, "segmentation_ids", where)
        if not isinstance(seg, dict):
            raise TopologyError(f"{where}.segmentation_ids: must map network name to VNI")
        for net in seg:
            if net not in net_names:
                raise TopologyError(f"{where}.segmentation_ids: {net!r}: unknown network "
                                    f"(networks: {', '.join(net_names)})")
        for net in net_names:
            if net not in seg:
                raise TopologyError(f"{where}.segmentation_ids.{net}: missing (every site "
                                    "carries every stretched network)")
        seg_ids = tuple((n.name, Network(n.name, seg[n.name], n.transit_vni).segmentation_id)
                        for n in networks)
        for net, number in seg_ids:
            if TENANT_VNIS[0] <= number <= TENANT_VNIS[1]:
                raise TopologyError(f"{where}.segmentation_ids.{net}: {number}: in the lab "
                                    f"Neutrons' tenant range {TENANT_VNIS[0]}-{TENANT_VNIS[1]}")
        sites.append(LabSite(name, i + 1, gateways, computes, seg_ids))
    keys = {f"{s.name}-gw" for s in sites}
    for site in sites:
        clash = sorted(keys.intersection(site.gateways)) if site.ha else []
        if clash:
            raise TopologyError(f"sites[{site.number - 1}].gateways: {clash[0]!r}: the name of "
                                "a site's gateway files; name the two nodes otherwise")

    vms: list[Vm] = []
    ips: dict[tuple[str, str], str] = {}
    macs: dict[tuple[str, str], str] = {}
    for i, item in enumerate(data.get("vms") or []):
        where = f"vms[{i}]"
        if not isinstance(item, dict):
            raise TopologyError(f"{where}: must be a mapping")
        _unknown_keys(item, {"name", "site", "compute", "network", "ip", "mac", "port_id",
                             "allowed_address_pairs"}, where)
        vms.append(_vm(item, where, networks, sites, nodes, ips, macs))
    mtu = data.get("mtu", UNDERLAY_MTU)
    if (not isinstance(mtu, int) or isinstance(mtu, bool)
            or not UNDERLAY_MTUS[0] <= mtu <= UNDERLAY_MTUS[1]):
        raise TopologyError(f"mtu: {mtu!r}: the underlay's MTU, an integer from "
                            f"{UNDERLAY_MTUS[0]} to {UNDERLAY_MTUS[1]}")
    computes = data.get("computes", EMULATED)
    if computes not in COMPUTE_KINDS:
        raise TopologyError(f"computes: {computes!r}: one of {', '.join(COMPUTE_KINDS)} "
                            "(ovs-agent: Neutron's own Open vSwitch agent on every compute, "
                            "a Neutron lab only)")
    topo = Topology(tuple(networks), tuple(sites), tuple(vms), mtu, computes)
    for site in topo.sites:
        site_snapshot(topo, site.name)  # the model's own checks (VNI reuse and the like)
    return topo


def _gateways(item: dict, where: str, site: str, number: int, nodes) -> tuple[str, ...]:
    """``gateway: NAME`` (default ``<site>-gw``) or ``gateways: [N1, N2]``."""
    if "gateway" in item and "gateways" in item:
        raise TopologyError(f"{where}: 'gateway' and 'gateways' both given: name one node "
                            "with 'gateway', or two (active/standby) with 'gateways'")
    if "gateways" not in item:
        return (_node_name(item.get("gateway", f"{site}-gw"), f"{where}.gateway", nodes),)
    names = item["gateways"]
    if not isinstance(names, list) or len(names) not in (1, 2):
        raise TopologyError(f"{where}.gateways: must list one or two gateway nodes "
                            "(two: active/standby, sharing the site's addresses by VRRP)")
    if len(names) == 2 and number > MAX_HA_SITES:
        raise TopologyError(f"{where}.gateways: two gateway nodes only in the first "
                            f"{MAX_HA_SITES} sites (their transit addresses are "
                            f"{HA_TRANSIT_SUBNET})")
    return tuple(_node_name(n, f"{where}.gateways[{j}]", nodes) for j, n in enumerate(names))


def _vm(item: dict, where: str, networks, sites, nodes, ips, macs) -> Vm:
    name = _node_name(_need(item, "name", where), f"{where}.name", nodes)
    site_name = str(_need(item, "site", where))
    site = next((s for s in sites if s.name == site_name), None)
    if site is None:
        raise TopologyError(f"{where}.site: {site_name!r}: unknown site")
    compute = str(_need(item, "compute", where))
    if compute not in site.computes:
        raise TopologyError(f"{where}.compute: {compute!r}: not a compute of site "
                            f"{site.name!r} ({', '.join(site.computes)})")
    net_name = str(_need(item, "network", where))
    net = next((n for n in networks if n.name == net_name), None)
    if net is None:
        raise TopologyError(f"{where}.network: {net_name!r}: unknown network")
    subnet = ipaddress.ip_network(net.subnet)
    try:
        addr = ipaddress.ip_address(str(_need(item, "ip", where)))
    except ValueError:
        raise TopologyError(f"{where}.ip: {item['ip']!r}: not an IP address") from None
    if addr not in subnet or addr in (subnet.network_address, subnet.broadcast_address):
        raise TopologyError(f"{where}.ip: {str(addr)!r}: not a host address of "
                            f"{net.name}'s subnet {net.subnet}")
    if (net.name, str(addr)) in ips:
        raise TopologyError(f"{where}.ip: {str(addr)!r}: already used on network "
                            f"{net.name!r} by {ips[(net.name, str(addr))]}")
    ips[(net.name, str(addr))] = name
    mac = check_mac(item.get("mac") or derive_mac(name), f"{where}.mac")
    pairs = item.get("allowed_address_pairs") or []
    if not isinstance(pairs, list) or not all(isinstance(p, dict) for p in pairs):
        raise TopologyError(f"{where}.allowed_address_pairs: must be a list of "
                            "{ip_address, mac_address}")
    pairs = tuple(AddressPair(p.get("ip_address"), p.get("mac_address", mac)) for p in pairs)
    # A VM's own MAC is unique per network; a MAC in allowed address pairs
    # may be shared (a VRRP virtual MAC: mobile among the VMs that claim it).
    if (net.name, mac) in macs:
        raise TopologyError(f"{where}.mac: {mac!r}: already used on network {net.name!r} "
                            f"by {macs[(net.name, mac)]}")
    macs[(net.name, mac)] = name
    return Vm(name, site.name, compute, net.name, str(addr), mac,
              str(item.get("port_id") or f"lab-{name}"), pairs)


def to_dict(topo: Topology) -> dict:
    """The topology in its file format (``parse(to_dict(t)) == t``)."""
    vms = []
    for vm in topo.vms:
        item = {"name": vm.name, "site": vm.site, "compute": vm.compute,
                "network": vm.network, "ip": vm.ip, "mac": vm.mac, "port_id": vm.port_id}
        if vm.allowed_address_pairs:
            item["allowed_address_pairs"] = [dataclasses.asdict(p)
                                             for p in vm.allowed_address_pairs]
        vms.append(item)
    return {
        "networks": [dataclasses.asdict(n) for n in topo.networks],
        "sites": [{"name": s.name,
                   **({"gateways": list(s.gateways)} if s.ha else {"gateway": s.gateway}),
                   "computes": list(s.computes),
                   "segmentation_ids": dict(s.segmentation_ids)} for s in topo.sites],
        "vms": vms,
        **({"mtu": topo.mtu} if topo.mtu != UNDERLAY_MTU else {}),
        **({"computes": topo.computes} if topo.computes != EMULATED else {}),
    }


def replace_vms(topo: Topology, vms: list[dict]) -> Topology:
    """A new, validated topology with ``vms`` (file-format dicts) instead."""
    data = to_dict(topo)
    data["vms"] = vms
    return parse(data)


def site_snapshot(topo: Topology, site_name: str) -> SiteSnapshot:
    """What the site's cloud knows: gateway, networks and its own VMs' ports."""
    site = topo.site(site_name)
    networks = tuple(Network(n.name, site.segmentation_id(n.name), n.transit_vni)
                     for n in topo.networks)
    endpoints = tuple(
        Endpoint(site=site.name, network=vm.network, mac=vm.mac,
                 vtep=site.compute_ip(vm.compute), ips=(vm.ip,),
                 allowed_address_pairs=vm.allowed_address_pairs, port_id=vm.port_id)
        for vm in topo.vms if vm.site == site.name)
    return SiteSnapshot(Site(site.name, Gateway(site.gateway, site.tunnel_ip, site.transit_ip,
                                                site.gateways if site.ha else ())),
                        networks, endpoints,
                        vteps=tuple(site.compute_ip(c) for c in site.computes))

"""The gateway's dataplane state in words of the domain, and the typed
operations that change it.

Both backends speak this vocabulary and nothing of each other's:
``observe()`` returns a :class:`GatewayState` holding only what the gateway
owns, normalised; ``apply()`` performs a list of operations and reports what
failed, per operation. Each backend compiles the words below into its own
objects (the Linux backend: a bridge, two VXLAN devices and FDB entries per
network; the OpenFlow backend: tables, cookie-marked flows and groups).

* A stretched network (:class:`NetworkSpec`) has a *segment* on each side:
  toward the site's computes (the site's segmentation ID, on the gateway's
  tunnel IP) and toward the peer gateways (the transit VNI, on the transit
  IP). The transit VNI identifies the network on the gateway: one gateway
  never carries a VNI twice.
* A MAC lives at one place (:class:`MacEntry`): a side and a VTEP (a
  compute's tunnel address on the site side, a peer gateway's transit
  address on the transit side). A mobile MAC is one of these too, put where
  the evidence says by the mobility table (:func:`with_mobile`).
* Floods (:class:`FloodEntry`): per side, the VTEPs that get a copy of
  every broadcast, unknown unicast and multicast frame (head-end
  replication).
* A network may be *one-sided* (``transit`` None): only the site segment,
  no peers. No gateway desires one; the lab's computes are clients of the
  planner and the Linux backend that way (gwagent.lab.l2pop), each
  compute's network one site segment on the compute's tunnel IP.

History: until the OpenFlow issue this module spoke the Linux kernel's terms
(devices, two FDB entries per MAC, kernel slots); those moved into
gwagent.dataplane, which now compiles this state.
"""
from __future__ import annotations

import dataclasses
from typing import Iterable, Mapping, NamedTuple, Union

from gwagent.model import Desired

SITE, TRANSIT = "site", "transit"
SIDES = (SITE, TRANSIT)


class Segment(NamedTuple):
    """One side of a stretched network: its VNI and the gateway's local
    tunnel address on that side (UDP port 4789)."""

    vni: int
    local_ip: str


@dataclasses.dataclass(frozen=True, order=True)
class NetworkSpec:
    """A stretched network on the gateway.

    ``transit_vni`` identifies the network (backends name its objects
    after it); ``transit`` None makes it one-sided (module docstring):
    then ``transit_vni`` is only that identity, which a one-sided
    network's user picks (the lab's computes: the site VNI)."""

    transit_vni: int
    name: str
    site: Segment
    transit: Segment | None

    @property
    def key(self) -> tuple:
        return ("network", self.transit_vni)

    def segment(self, side: str) -> Segment | None:
        return self.site if side == SITE else self.transit


class MacEntry(NamedTuple):
    # A named tuple, not a dataclass: a gateway holds hundreds of thousands
    # of these and builds them on every pass.
    network: str
    mac: str
    side: str
    vtep: str | None  # None only in observed state: present but broken


class FloodEntry(NamedTuple):
    network: str
    side: str
    vtep: str


class Location(NamedTuple):
    """Where a MAC is, as the gateway forwards to it: on the ``site`` side
    at a compute's VTEP, or on the ``transit`` side at a peer gateway."""

    side: str
    vtep: str


@dataclasses.dataclass(frozen=True)
class GatewayState:
    networks: tuple[NetworkSpec, ...] = ()
    macs: frozenset[MacEntry] = frozenset()
    floods: frozenset[FloodEntry] = frozenset()

    def network(self, name: str) -> NetworkSpec | None:
        for net in self.networks:
            if net.name == name:
                return net
        return None


@dataclasses.dataclass(frozen=True)
class NetworkOp:
    """``ensure``: create the network or make it match (a backend that must
    recreate it drops its entries, and the planner does not trust them);
    ``remove``: delete it with everything on it."""

    action: str  # "ensure" | "remove"
    network: NetworkSpec

    @property
    def key(self) -> tuple:
        return self.network.key


class MacOp(NamedTuple):
    """``set`` puts a MAC at ``entry``'s place in one step, replacing where
    it was (``previous``, as observed; None: nowhere), with no flood window;
    ``delete`` removes it (a missing entry counts as deleted)."""

    action: str  # "set" | "delete"
    entry: MacEntry
    previous: MacEntry | None = None

    @property
    def key(self) -> tuple:
        return ("mac", self.entry.network, self.entry.mac)


class FloodOp(NamedTuple):
    action: str  # "add" | "delete"
    entry: FloodEntry

    @property
    def key(self) -> tuple:
        return ("flood", self.entry)


Op = Union[NetworkOp, MacOp, FloodOp]


@dataclasses.dataclass(frozen=True)
class OpError:
    op: Op
    error: str


@dataclasses.dataclass(frozen=True)
class MobileSpec:
    """A mobile MAC as this gateway sees it: the distinct locations of the
    endpoints that claim it, and where it is until evidence (``home``: the
    location of the endpoint whose own MAC it is; None: nowhere, so frames
    to it flood like those to any unknown MAC)."""

    network: str
    mac: str
    candidates: frozenset[Location]
    home: Location | None = None


def gateway_mobile(desired: Desired) -> dict[tuple[str, str], MobileSpec]:
    """The model's mobile MACs whose claimants sit at more than one location
    from this gateway (two claimants behind one peer gateway are not mobile
    here: both are at that gateway)."""
    local = desired.local.site.name
    transit = {p.site.name: p.site.gateway.transit_ip for p in desired.peers}

    def where(site: str, vtep: str) -> Location:
        return Location(SITE, vtep) if site == local else Location(TRANSIT, transit[site])

    out = {}
    for key, mob in desired.mobile.items():
        candidates = frozenset(where(site, vtep) for site, _, vtep in mob.claimants)
        if len(candidates) > 1:
            home = where(mob.home[0], mob.home[2]) if mob.home else None
            out[key] = MobileSpec(mob.network, mob.mac, candidates, home)
    return out


def desired_dataplane(desired: Desired,
                      locations: Mapping[tuple[str, str], Location | None] | None = None,
                      mobile: Mapping[tuple[str, str], MobileSpec] | None = None
                      ) -> GatewayState:
    """What the gateway's dataplane must hold for ``desired``, with every
    mobile MAC where ``locations`` says (its home when absent)."""
    mobile = gateway_mobile(desired) if mobile is None else mobile
    return with_mobile(static_dataplane(desired, mobile), mobile, locations or {})


def static_dataplane(desired: Desired,
                     mobile: Mapping[tuple[str, str], MobileSpec] | None = None
                     ) -> GatewayState:
    """Everything but the mobile MACs' places (they follow the evidence:
    :func:`with_mobile`)."""
    gw = desired.local.site.gateway
    mobile = gateway_mobile(desired) if mobile is None else mobile
    networks = tuple(sorted(
        NetworkSpec(net.transit_vni, net.name, Segment(net.segmentation_id, gw.tunnel_ip),
                    Segment(net.transit_vni, gw.transit_ip))
        for net in desired.local.networks))
    macs: set[MacEntry] = set()
    floods: set[FloodEntry] = set()
    for net in desired.local.networks:
        for peer in desired.peers:
            floods.add(FloodEntry(net.name, TRANSIT, peer.site.gateway.transit_ip))
    for ep in desired.local.endpoints:
        floods.add(FloodEntry(ep.network, SITE, ep.vtep))
        for mac in ep.macs:
            if (ep.network, mac) not in mobile:
                macs.add(MacEntry(ep.network, mac, SITE, ep.vtep))
    for peer, ep in desired.remote_endpoints():
        vtep = peer.site.gateway.transit_ip
        for mac in ep.macs:
            if (ep.network, mac) not in mobile:
                macs.add(MacEntry(ep.network, mac, TRANSIT, vtep))
    return GatewayState(networks, frozenset(macs), frozenset(floods))


def mobile_entry(spec: MobileSpec, location: Location | None) -> MacEntry | None:
    """The entry that puts one mobile MAC at ``location`` (none: nowhere)."""
    if location is None:
        return None
    return MacEntry(spec.network, spec.mac, location.side, location.vtep)


def with_mobile(static: GatewayState, mobile: Mapping[tuple[str, str], MobileSpec],
                locations: Mapping[tuple[str, str], Location | None]) -> GatewayState:
    if not mobile:
        return static
    names = {net.name for net in static.networks}
    extra = []
    for key, spec in mobile.items():
        entry = mobile_entry(spec, locations.get(key, spec.home))
        if entry is not None and entry.network in names:
            extra.append(entry)
    return dataclasses.replace(static, macs=static.macs | frozenset(extra))


# -- who may send to the gateway ------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Admission:
    """The gateway's ingress filter: VXLAN to its address on a side is
    accepted only from that side's sources (the site's known VTEPs; the
    peer gateways' transit addresses). Everything else sent to those
    addresses is dropped and counted, per side and per offender."""

    site_ip: str
    site_sources: frozenset[str]
    transit_ip: str
    transit_sources: frozenset[str]

    def sides(self) -> tuple[tuple[str, str, frozenset[str]], ...]:
        """(side, local address, admitted sources) of both sides."""
        return ((SITE, self.site_ip, self.site_sources),
                (TRANSIT, self.transit_ip, self.transit_sources))


def admission(desired: Desired, peer_transit_ips: frozenset[str] = frozenset(),
              endpoint_vteps: Iterable[str] | None = None) -> Admission:
    """Who may send to the gateway of ``desired``: on the site side, the
    VTEPs its source knows (``vteps``: L2 agents' tunnel addresses, the
    inventory's) and those of its endpoints (``endpoint_vteps``, when the
    caller keeps them: gwagent.control.world); on the transit side, the
    peer gateways it knows, and ``peer_transit_ips`` (configured peers
    whose source has not answered yet)."""
    gw = desired.local.site.gateway
    if endpoint_vteps is None:
        endpoint_vteps = {ep.vtep for ep in desired.local.endpoints}
    site = set(desired.local.vteps) | set(endpoint_vteps)
    transit = {peer.site.gateway.transit_ip for peer in desired.peers} | set(peer_transit_ips)
    if gw.tunnel_ip == gw.transit_ip:  # one address for both sides: either side's sources
        site = transit = site | transit
    return Admission(gw.tunnel_ip, frozenset(site), gw.transit_ip, frozenset(transit))


@dataclasses.dataclass
class IngressCounters:
    """What the ingress filter dropped: per side, packets in all and per
    offender (outer source address; bounded, see the backends)."""

    dropped: dict[str, int] = dataclasses.field(default_factory=dict)
    offenders: dict[str, dict[str, int]] = dataclasses.field(default_factory=dict)


# -- whose MACs may come from where ------------------------------------------------

class Guard(NamedTuple):
    """No MAC hijack across clouds: a frame of ``network`` whose inner
    source is ``mac`` and that arrives on ``side`` is dropped and counted,
    unless its outer source is one of ``sources``."""

    network: str
    mac: str
    side: str
    sources: tuple[str, ...] = ()


def _other(side: str) -> str:
    return TRANSIT if side == SITE else SITE


def guards(static: GatewayState, mobile: Mapping[tuple[str, str], MobileSpec],
           by_source: bool = True) -> frozenset[Guard]:
    """The guards of a gateway whose static dataplane is ``static``: a MAC
    placed on one side never comes from the other (an endpoint of this site
    from a peer gateway; a remote endpoint from a compute of the site); a
    mobile MAC comes from a side only if a candidate of it is there, and
    with ``by_source`` (a backend that sees the outer source behind the
    tunnel: OpenFlow) only from the candidates' VTEPs. The guards do not
    change when a mobile MAC moves."""
    names = {net.name for net in static.networks if net.transit is not None}
    out = {Guard(m.network, m.mac, _other(m.side)) for m in static.macs if m.network in names}
    for spec in mobile.values():
        if spec.network not in names:
            continue
        for side in SIDES:
            sources = tuple(sorted({c.vtep for c in spec.candidates if c.side == side}))
            if not sources:
                out.add(Guard(spec.network, spec.mac, side))
            elif by_source:
                out.add(Guard(spec.network, spec.mac, side, sources))
    return frozenset(out)


@dataclasses.dataclass
class GuardCounters:
    """What the MAC guard dropped: per side, frames in all and per
    (network, MAC) claimed (bounded, see the backends)."""

    dropped: dict[str, int] = dataclasses.field(default_factory=dict)
    macs: dict[str, dict[tuple[str, str], int]] = dataclasses.field(default_factory=dict)

"""Dataplane state and the typed operations that change it.

Both backends (Linux netlink, OpenFlow) speak this vocabulary: ``observe()``
returns a :class:`DataplaneState` holding only what the gateway owns,
normalised; ``apply()`` performs a list of :class:`NetworkOp` and
:class:`FdbOp` and reports what failed, per operation.

Per stretched network the gateway has a bridge with two VXLAN ports: one
facing the site's computes (the site's segmentation ID, on the tunnel IP) and
one facing the peer gateways (the transit VNI, on the transit IP). Device
names carry the transit VNI behind the owner prefix ``gwa-``, so a name never
exceeds the kernel's 15 characters.

An :class:`FdbEntry` with ``dst`` is a VXLAN (``self``) entry: frames for
``mac`` leave ``dev`` toward ``dst``. Without ``dst`` it is a bridge
(``master``) entry sending ``mac`` to port ``dev``. The all-zero MAC with a
``dst`` is a head-end replication (flood) entry; there may be several per
device, one per destination.
"""
from __future__ import annotations

import dataclasses
import sys
from typing import Iterable, Mapping, NamedTuple, Union

from gwagent.model import Desired

PREFIX = "gwa-"
FLOOD_MAC = "00:00:00:00:00:00"


def is_owned_name(ifname: str) -> bool:
    return ifname.startswith(PREFIX)


@dataclasses.dataclass(frozen=True, order=True)
class Vxlan:
    name: str
    vni: int
    local_ip: str
    port: int = 4789


@dataclasses.dataclass(frozen=True, order=True)
class NetworkDevices:
    """The devices of one stretched network on the gateway."""

    network: str
    bridge: str
    site_side: Vxlan
    transit_side: Vxlan

    @property
    def names(self) -> tuple[str, str, str]:
        return (self.bridge, self.site_side.name, self.transit_side.name)

    @classmethod
    def for_network(cls, network: str, segmentation_id: int, transit_vni: int,
                    tunnel_ip: str, transit_ip: str) -> "NetworkDevices":
        name = sys.intern  # FDB entries compare by identity with observed ones
        return cls(
            network=network,
            bridge=name(f"{PREFIX}br-{transit_vni}"),
            site_side=Vxlan(name(f"{PREFIX}vl-{transit_vni}"), segmentation_id, tunnel_ip),
            transit_side=Vxlan(name(f"{PREFIX}vt-{transit_vni}"), transit_vni, transit_ip),
        )


class FdbEntry(NamedTuple):
    # A named tuple, not a dataclass: a gateway holds hundreds of thousands
    # of these and builds them on every pass (measured 4x cheaper).
    dev: str
    mac: str
    dst: str | None = None

    @property
    def is_bridge(self) -> bool:
        return self.dst is None

    @property
    def is_flood(self) -> bool:
        return self.mac == FLOOD_MAC


@dataclasses.dataclass(frozen=True)
class DataplaneState:
    networks: tuple[NetworkDevices, ...] = ()
    fdb: frozenset[FdbEntry] = frozenset()

    def device_names(self) -> set[str]:
        return {n for net in self.networks for n in net.names}


@dataclasses.dataclass(frozen=True)
class NetworkOp:
    """``ensure``: create the network's devices or make them match;
    ``remove``: delete them (their FDB entries go with them)."""

    action: str  # "ensure" | "remove"
    devices: NetworkDevices

    @property
    def key(self) -> tuple:
        return ("network", self.devices.bridge)


class FdbOp(NamedTuple):
    """``replace`` creates or moves a unicast entry in one step (no flood
    window); ``append`` adds one flood destination; ``delete`` removes the
    entry (a missing entry counts as deleted)."""

    action: str  # "replace" | "append" | "delete"
    entry: FdbEntry

    @property
    def key(self) -> tuple:
        return ("fdb", self.entry)


Op = Union[NetworkOp, FdbOp]


@dataclasses.dataclass(frozen=True)
class OpError:
    op: Op
    error: str


SITE, TRANSIT = "site", "transit"


class Location(NamedTuple):
    """Where a MAC is, as the gateway forwards to it: on the ``site`` side
    at a compute's VTEP, or on the ``transit`` side at a peer gateway."""

    side: str
    vtep: str


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
                      ) -> DataplaneState:
    """What the gateway's dataplane must hold for ``desired``, with every
    mobile MAC where ``locations`` says (its home when absent)."""
    static = static_dataplane(desired, mobile)
    mobile = gateway_mobile(desired) if mobile is None else mobile
    return with_mobile(static, mobile, locations or {})


def static_dataplane(desired: Desired,
                     mobile: Mapping[tuple[str, str], MobileSpec] | None = None
                     ) -> DataplaneState:
    """Everything but the mobile MACs' entries (they follow the evidence:
    :func:`with_mobile`)."""
    gw = desired.local.site.gateway
    mobile = gateway_mobile(desired) if mobile is None else mobile
    devices: dict[str, NetworkDevices] = {}
    fdb: set[FdbEntry] = set()
    for net in desired.local.networks:
        devs = NetworkDevices.for_network(net.name, net.segmentation_id, net.transit_vni,
                                          gw.tunnel_ip, gw.transit_ip)
        devices[net.name] = devs
        for peer in desired.peers:
            fdb.add(FdbEntry(devs.transit_side.name, FLOOD_MAC, peer.site.gateway.transit_ip))
    for ep in desired.local.endpoints:
        devs = devices[ep.network]
        _endpoint_entries(fdb, devs.site_side.name, _fixed(ep, mobile), ep.vtep)
        fdb.add(FdbEntry(devs.site_side.name, FLOOD_MAC, ep.vtep))
    for peer, ep in desired.remote_endpoints():
        devs = devices[ep.network]
        _endpoint_entries(fdb, devs.transit_side.name, _fixed(ep, mobile),
                          peer.site.gateway.transit_ip)
    return DataplaneState(tuple(sorted(devices.values())), frozenset(fdb))


def _fixed(ep, mobile) -> Iterable[str]:
    if not mobile:
        return ep.macs
    return [m for m in ep.macs if (ep.network, m) not in mobile]


def mobile_entries(networks: Iterable[NetworkDevices], spec: MobileSpec,
                   location: Location | None) -> tuple[FdbEntry, ...]:
    """The entries that put one mobile MAC at ``location`` (none: nowhere)."""
    if location is None:
        return ()
    for devs in networks:
        if devs.network == spec.network:
            dev = devs.site_side.name if location.side == SITE else devs.transit_side.name
            return (FdbEntry(dev, spec.mac, None), FdbEntry(dev, spec.mac, location.vtep))
    return ()


def with_mobile(static: DataplaneState, mobile: Mapping[tuple[str, str], MobileSpec],
                locations: Mapping[tuple[str, str], Location | None]) -> DataplaneState:
    if not mobile:
        return static
    extra = []
    for key, spec in mobile.items():
        extra.extend(mobile_entries(static.networks, spec, locations.get(key, spec.home)))
    return DataplaneState(static.networks, static.fdb | frozenset(extra))


def _endpoint_entries(fdb: set, dev: str, macs: Iterable[str], dst: str) -> None:
    for m in macs:
        fdb.add(FdbEntry(dev, m, None))
        fdb.add(FdbEntry(dev, m, dst))

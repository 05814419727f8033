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
from typing import Iterable, NamedTuple, Union

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


def desired_dataplane(desired: Desired) -> DataplaneState:
    """What the gateway's dataplane must hold for ``desired``."""
    gw = desired.local.site.gateway
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
        _endpoint_entries(fdb, devs.site_side.name, ep.macs, ep.vtep)
        fdb.add(FdbEntry(devs.site_side.name, FLOOD_MAC, ep.vtep))
    for peer, ep in desired.remote_endpoints():
        devs = devices[ep.network]
        _endpoint_entries(fdb, devs.transit_side.name, ep.macs, peer.site.gateway.transit_ip)
    return DataplaneState(tuple(sorted(devices.values())), frozenset(fdb))


def _endpoint_entries(fdb: set, dev: str, macs: Iterable[str], dst: str) -> None:
    for m in macs:
        fdb.add(FdbEntry(dev, m, None))
        fdb.add(FdbEntry(dev, m, dst))

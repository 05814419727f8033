"""The Linux backend: a bridge and two VXLAN devices per network, FDB entries.

It compiles the gateway's state (gwagent.state: networks, MAC places, flood
destinations) into kernel objects. Per stretched network the gateway holds
``gwa-br-<transit VNI>`` with two VXLAN ports, ``gwa-vl-<transit VNI>``
toward the site's computes (the site's segmentation ID, on the tunnel IP)
and ``gwa-vt-<transit VNI>`` toward the peer gateways (the transit VNI, on
the transit IP); UDP port 4789, VXLAN learning off and bridge-port learning
off on both (a learned frame would take over an entry we placed), everything
up. Each VXLAN device's MTU is its underlay link's less the encapsulation
(:func:`vxlan_mtus`): the gateway carries what the underlay carries, as OVS
does. A MAC's place is two FDB entries: a bridge entry sending it to the
side's port and a VXLAN entry sending it to the VTEP (:func:`compile_op`);
the all-zero MAC with a ``dst`` replicates floods to every listed VTEP.

A one-sided network (``NetworkSpec.transit`` None) has the bridge and the
site port only; a ``gwa-vt-`` device left from before is removed by
ensure(), and a network whose transit port is missing is observed as
one-sided (a gateway's network then differs from its desired one and is
ensured again, as before).

``learning=True`` (a constructor option, off by default and never on for a
gateway) gives a host whose MACs are not all placed by us the learning a
compute has: VXLAN learning and bridge-port learning on every VXLAN port,
so a MAC without an entry of ours is learned from the frames that arrive
(a mobile MAC on the lab's computes, gwagent.lab.l2pop, as Neutron's OVS
agent's learn flows do). Learned entries carry no ``extern_learn`` and are
never ours; our entries are static, so learning does not move them (the
kernel drops a frame that claims a pinned MAC from another VTEP). A frame
from a pinned MAC on another bridge port does take our bridge entry over
(the bridge clears its ``extern_learn``): the MAC then observes as broken
and the next pass sets or deletes it. A device whose learning differs
from the option is recreated or fixed, as below.

What is ours: links whose name starts with ``gwa-``, and FDB entries on them
marked ``extern_learn`` (``NTF_EXT_LEARNED``); we add every entry with that
mark and observe()/apply() never look at anything else, so foreign links and
foreign entries, even on our own devices, are left alone.

Measured limit of the mark: the vxlan driver keeps flags per MAC, not per
destination, and a user add or append without ``extern_learn`` clears the
flag for good (a later add with it does not set it back). Someone appending
a destination to our flood entry, or replacing one of our entries by hand,
therefore turns that MAC foreign: we leave it alone, our destinations stay
in it, and every pass re-sends them (a no-op, visible in the op counts)
until the network is removed or the entry deleted by hand.

One small type per kernel object (:class:`BridgeDevice`,
:class:`VxlanDevice`) with idempotent ``ensure()``/``remove()``: an existing
device that cannot be made right in place (wrong kind, VNI, local IP, UDP
port, VXLAN learning) is logged with the reason and recreated, as flannel's
``ensureLink`` does; a fixable one (master, port learning, MTU, alias, down) is
fixed in place. FDB operations go through the adapter's bulk path, many per
``send()``, with an error per entry.

The network's name cannot be read from a VXLAN device, so the bridge keeps
it in its alias (``IFLA_IFALIAS``) and observe() reads it back: a bridge we
did not name shows as a difference and ensure() names it.

observe() normalises in one place, :func:`normalise` and
:func:`group_networks`: a device that is missing, of the wrong kind, not a
port of its bridge, learning, or down is reported with VNI 0 (which cannot
be desired), a bridge that is missing, not a bridge or down with an empty
network name, so the planner ensures the network again; a MAC whose two
entries are not one clean pair is reported broken (VTEP None) and its
entries are kept for the compiler to clear.

History: until the OpenFlow issue the planner diffed these FDB entries
itself; the kernel's slots and pairs now live here only.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import re
import sys
import threading
import time
from typing import Iterable, NamedTuple, Sequence

from gwagent.dataplane import AuditedSet, Changes
from gwagent.dataplane.capture import MobilityTap
from gwagent.dataplane.guard import NftGuard
from gwagent.dataplane.ingress import IngressError, NftIngress
from gwagent.dataplane.netlink import (WINDOW, NTF_EXT_LEARNED, NTF_MASTER, RTM_DELLINK, RTM_DELNEIGH,
                                       RTM_NEWNEIGH, FdbRecord, FdbRequest, Link, Monitor,
                                       Netlink, NetlinkError)
from gwagent.hotpath import gc_paused, without_gc
from gwagent.state import (SITE, TRANSIT, Admission, FloodEntry, FloodOp, GatewayState,
                           GuardCounters, IngressCounters, MacEntry, MacOp, NetworkOp, NetworkSpec, Op, OpError,
                           Segment)

log = logging.getLogger(__name__)

PREFIX = "gwa-"
FLOOD_MAC = "00:00:00:00:00:00"
VXLAN_PORT = 4789
_NAME_RE = re.compile(re.escape(PREFIX) + r"(br|vl|vt)-(\d+)")
RTM_NEWLINK = 16


def is_owned_name(ifname: str) -> bool:
    return ifname.startswith(PREFIX)


@dataclasses.dataclass(frozen=True, order=True)
class Vxlan:
    name: str
    vni: int
    local_ip: str
    port: int = VXLAN_PORT


@dataclasses.dataclass(frozen=True, order=True)
class NetworkDevices:
    """The devices of one stretched network: a bridge named after the
    transit VNI behind the owner prefix (never more than the kernel's 15
    characters), with a VXLAN port per side."""

    transit_vni: int
    network: str
    bridge: str
    site_side: Vxlan
    transit_side: Vxlan | None  # None: a one-sided network

    @property
    def names(self) -> tuple[str, ...]:
        return (self.bridge, *(spec.name for spec in self.sides))

    @property
    def sides(self) -> tuple[Vxlan, ...]:
        return (self.site_side,) if self.transit_side is None else (self.site_side,
                                                                    self.transit_side)

    def device(self, side: str) -> str | None:
        if side == SITE:
            return self.site_side.name
        return None if self.transit_side is None else self.transit_side.name

    @property
    def transit_name(self) -> str:
        return f"{PREFIX}vt-{self.transit_vni}"

    @classmethod
    def of(cls, spec: NetworkSpec) -> "NetworkDevices":
        name = sys.intern  # FDB records compare by identity with these
        vni = spec.transit_vni
        transit = spec.transit
        return cls(vni, spec.name, name(f"{PREFIX}br-{vni}"),
                   Vxlan(name(f"{PREFIX}vl-{vni}"), spec.site.vni, spec.site.local_ip),
                   None if transit is None else
                   Vxlan(name(f"{PREFIX}vt-{vni}"), transit.vni, transit.local_ip))


class BridgeDevice:
    """The bridge of one network; its alias holds the network's name."""

    def __init__(self, nl: Netlink, name: str, network: str):
        self.nl, self.name, self.network = nl, name, network

    def ensure(self) -> int:
        """Make the bridge exist, named and up; return its ifindex."""
        link = self.nl.link(self.name)
        if link is not None and link.kind != "bridge":
            log.warning("%s is a %s device, not a bridge: recreating it", self.name,
                        link.kind or "plain")
            self.nl.link_del(link.index)
            link = None
        if link is None:
            self.nl.link_add(self.name, "bridge")
            link = self.nl.link(self.name)
        if link.alias != self.network:
            self.nl.link_set(link.index, ifalias=self.network)
        if not link.up:
            self.nl.link_set(link.index, state="up")
        return link.index

    def remove(self) -> None:
        link = self.nl.link(self.name)
        if link is not None:
            self.nl.link_del(link.index)


class VxlanDevice:
    """One VXLAN port of a network's bridge; ``learning``: VXLAN and
    bridge-port learning on (module docstring), else off; ``mtu``: its
    MTU (None: the kernel's default, 1500 without a lower device)."""

    def __init__(self, nl: Netlink, spec: Vxlan, learning: bool = False,
                 mtu: int | None = None):
        self.nl, self.spec, self.learning, self.mtu = nl, spec, bool(learning), mtu

    def ensure(self, bridge_index: int) -> int:
        """Make the device exist as specified, a port of the bridge that
        learns or not as asked, and up; return its ifindex."""
        name = self.spec.name
        link = self.nl.link(name)
        if link is not None:
            reasons = recreate_reasons(link, self.spec, self.learning)
            if reasons:
                log.warning("%s: %s: recreating it", name, "; ".join(reasons))
                self.nl.link_del(link.index)
                link = None
        created = link is None
        if created:
            self.nl.link_add(name, "vxlan", vxlan_id=self.spec.vni,
                             vxlan_local=self.spec.local_ip, vxlan_port=self.spec.port,
                             vxlan_learning=int(self.learning), master=bridge_index,
                             **({"mtu": self.mtu} if self.mtu else {}))
            link = self.nl.link(name)
        if self.mtu and link.mtu != self.mtu:
            if not created:
                log.warning("%s: MTU is %s, its underlay carries %s: setting it", name,
                            link.mtu, self.mtu)
            self.nl.link_set(link.index, mtu=self.mtu)
        if link.master != bridge_index:
            log.warning("%s: not a port of its bridge (master %s): enslaving it", name,
                        link.master)
            self.nl.link_set(link.index, master=bridge_index)
            link = self.nl.link(name)
        if link.port_learning is not self.learning:
            if not created:
                log.warning("%s: bridge-port learning is %s: turning it %s", name,
                            "off" if self.learning else "on", "on" if self.learning else "off")
            self.nl.brport_set(link.index, learning=int(self.learning))
        if not link.up:
            self.nl.link_set(link.index, state="up")
        return link.index

    def remove(self) -> None:
        link = self.nl.link(self.spec.name)
        if link is not None:
            self.nl.link_del(link.index)


def recreate_reasons(link: Link, spec: Vxlan, learning: bool = False) -> list[str]:
    """Why an existing device cannot serve as ``spec``, in words (empty: it can)."""
    if link.kind != "vxlan":
        return [f"is a {link.kind or 'plain'} device, not vxlan"]
    reasons = []
    if link.vni != spec.vni:
        reasons.append(f"VNI is {link.vni}, want {spec.vni}")
    if link.local != spec.local_ip:
        reasons.append(f"local IP is {link.local}, want {spec.local_ip}")
    if link.port != spec.port:
        reasons.append(f"UDP port is {link.port}, want {spec.port}")
    if bool(link.vxlan_learning) != learning:
        reasons.append(f"VXLAN learning is {'off' if learning else 'on'}")
    return reasons


def _unusable_reasons(link: Link | None, bridge: Link | None,
                      learning: bool = False, mtu: int | None = None) -> list[str]:
    """Why a VXLAN device is not a working port of its network, in words."""
    if link is None:
        return ["missing"]
    if link.kind != "vxlan":
        return [f"is a {link.kind or 'plain'} device"]
    reasons = []
    if bridge is None or link.master != bridge.index:
        reasons.append("not a port of the network's bridge")
    if bool(link.vxlan_learning) != learning or bool(link.port_learning) != learning:
        reasons.append("not learning" if learning else "learning")
    if mtu and link.mtu != mtu:
        reasons.append(f"MTU {link.mtu}, want {mtu}")
    if not link.up:
        reasons.append("down")
    return reasons


def group_networks(owned: Iterable[Link], learning: bool = False,
                   mtus: dict[str, int] | None = None) -> list[NetworkDevices]:
    """Group owned links into NetworkDevices by the transit VNI in their
    names, reporting unusable devices as differences and a network without
    a transit port as one-sided (module docstring); ``mtus``: the MTU a
    VXLAN device on each local address must have (:func:`vxlan_mtus`)."""
    mtus = mtus or {}
    groups: dict[int, dict[str, Link]] = {}
    for link in owned:
        m = _NAME_RE.fullmatch(link.name)
        if m:
            groups.setdefault(int(m[2]), {})[m[1]] = link
    out = []
    for vni, g in groups.items():
        br = g.get("br")
        usable = br is not None and br.kind == "bridge" and br.up
        network = (br.alias or "") if usable else ""
        sides: list[Vxlan | None] = []
        for role in ("vl", "vt"):
            name, link = f"{PREFIX}{role}-{vni}", g.get(role)
            if role == "vt" and link is None:
                sides.append(None)
            elif _unusable_reasons(link, br if usable else None, learning,
                                   mtus.get(link.local or "") if link else None):
                sides.append(Vxlan(name, 0, "", 0))
            else:
                sides.append(Vxlan(name, link.vni, link.local or "", link.port))
        out.append(NetworkDevices(vni, network, f"{PREFIX}br-{vni}", sides[0], sides[1]))
    return sorted(out)


def vxlan_mtus(address_mtus: dict[str, int]) -> dict[str, int]:
    """The MTU of a VXLAN device on each local address: its underlay
    link's, less the encapsulation (50 bytes over IPv4, 70 over IPv6), as
    the kernel derives it for a device with a lower link. A frame that
    fits the underlay crosses the gateway; one that does not is dropped
    where it enters, as on OVS (measured: at the kernel's default of 1500,
    a 9000-byte underlay's 8000-byte frames crossed the computes of a site
    and were dropped at its gateway)."""
    inner = {ip: mtu - (70 if ":" in ip else 50) for ip, mtu in address_mtus.items()}
    return {ip: mtu for ip, mtu in inner.items() if mtu >= 68}


class FdbEntry(NamedTuple):
    """One kernel FDB entry we own: with ``dst`` a VXLAN (``self``) entry
    sending ``mac`` out of ``dev`` toward ``dst``; without, a bridge
    (``master``) entry sending ``mac`` to port ``dev``."""

    dev: str
    mac: str
    dst: str | None = None


_BROKEN = object()


def normalise(records: Iterable[FdbRecord], owned: dict[int, Link],
              networks: Sequence[NetworkDevices]
              ) -> tuple[frozenset[MacEntry], frozenset[FloodEntry], dict]:
    """The MACs and flood destinations we own, in the planner's words, and
    the kernel entries of every MAC that is not one clean pair.

    Kernel quirks handled here and nowhere else: a bridge entry is dumped on
    its port with ``NDA_MASTER`` (and may come twice, with and without VLAN
    1: the VLAN is dropped); the bridge's own and local entries, and
    anything without ``extern_learn``, are not ours; a VXLAN entry's VNI and
    UDP port are omitted when they equal the device's. A VXLAN entry with
    another VNI or port is not ours to express and is skipped (a replace of
    the same MAC overwrites it).

    A MAC is at (side, VTEP) when its bridge entry points at the side's
    device and that device has exactly one VXLAN entry for it, and the other
    side none. Anything else (a lone half, two destinations, halves on
    different sides) is reported with VTEP None, so the planner sets it
    again; its entries are returned so the compiler can clear them.
    """
    index_of = {link.name: i for i, link in owned.items()}
    where: dict[int, tuple[str, str]] = {}
    for devs in networks:
        if not devs.network:
            continue
        for side, spec in ((SITE, devs.site_side), (TRANSIT, devs.transit_side)):
            index = index_of.get(spec.name) if spec is not None else None
            if index is not None and spec.vni:
                where[index] = (devs.network, side)
    bridges = {i for i, link in owned.items() if link.kind == "bridge"}
    vxlans = {i: (link.vni, link.port) for i, link in owned.items() if link.kind == "vxlan"}
    masters: dict[tuple[str, str], tuple[str, int]] = {}
    selfs: dict[tuple[str, str, str], object] = {}
    floods = set()
    for ifindex, _state, flags, mac, dst, _vlan, master, vni, port in records:
        if not flags & NTF_EXT_LEARNED:
            continue
        at = where.get(ifindex)
        if at is None:
            continue
        if master or flags & NTF_MASTER:
            if dst is None and (master or owned[ifindex].master) in bridges:
                masters[(at[0], mac)] = (at[1], ifindex)
        elif dst is not None:
            device = vxlans.get(ifindex)
            if device is None or vni not in (None, device[0]) or port not in (None, 0, device[1]):
                continue
            if mac == FLOOD_MAC:
                floods.add(FloodEntry(at[0], at[1], dst))
            else:
                key = (at[0], mac, at[1])
                selfs[key] = dst if key not in selfs else _BROKEN
    macs = set()
    add = macs.add
    broken: dict[tuple[str, str], list[FdbEntry]] = {}
    names = {i: link.name for i, link in owned.items()}
    if issubclass(MacEntry, tuple):  # 100k+ entries on an idle pass (a measured 2x)
        entry = functools.partial(tuple.__new__, MacEntry)
    else:
        def entry(values):
            return MacEntry(*values)
    for (network, mac), (side, ifindex) in masters.items():
        dst = selfs.pop((network, mac, side), None)
        other = selfs.pop((network, mac, TRANSIT if side == SITE else SITE), None)
        if dst is None or dst is _BROKEN or other is not None:
            add(entry((network, mac, side, None)))
            broken[(network, mac)] = [FdbEntry(names[ifindex], mac)]
        else:
            add(entry((network, mac, side, dst)))
    for network, mac, side in selfs:
        add(entry((network, mac, side, None)))
        broken.setdefault((network, mac), [])
    if broken:  # rare: list every VXLAN entry of the broken MACs
        for ifindex, _state, flags, mac, dst, _vlan, master, _vni, _port in records:
            at = where.get(ifindex)
            if (at and dst is not None and not master and flags & NTF_EXT_LEARNED
                    and (at[0], mac) in broken):
                broken[(at[0], mac)].append(FdbEntry(names[ifindex], mac, dst))
    return frozenset(macs), frozenset(floods), broken


def kernel_entries(state: GatewayState) -> frozenset[FdbEntry]:
    """Every FDB entry the kernel holds when it holds ``state`` (what the
    compiler writes; for tests and for reading the design)."""
    devices = {net.name: NetworkDevices.of(net) for net in state.networks}
    out = set()
    for m in state.macs:
        dev = devices[m.network].device(m.side)
        out.update((FdbEntry(dev, m.mac), FdbEntry(dev, m.mac, m.vtep)))
    out.update(FdbEntry(devices[f.network].device(f.side), FLOOD_MAC, f.vtep)
               for f in state.floods)
    return frozenset(out)


def network_spec(devs: NetworkDevices) -> NetworkSpec:
    """A network's devices as the planner sees them (a broken side has VNI 0)."""
    def segment(spec: Vxlan | None) -> Segment | None:
        if spec is None:
            return None
        return Segment(spec.vni, spec.local_ip) if spec.port == VXLAN_PORT else Segment(0, "")
    return NetworkSpec(devs.transit_vni, devs.network, segment(devs.site_side),
                       segment(devs.transit_side))


class LinuxBackend:
    """The Backend protocol (gwagent.dataplane) on a Linux namespace."""

    name = "linux"
    #: The MAC guard sees the inner frame only (gwagent.dataplane.guard).
    guard_by_source = False

    #: How long after we changed an entry its notification counts as our
    #: own echo (they are queued during the request; this is slack).
    ECHO_SECONDS = 2.0
    #: A write of more requests than this expects its echoes per device,
    #: not per entry: a cold start's 2M entries cost 2M keys held for the
    #: echo window (4 s of the pass and ~300 MB of its peak at 1M
    #: endpoints), while its echoes overflow the event socket anyway (then
    #: the dataplane is read whole).
    EXPECT_EACH = 50_000

    def __init__(self, netns: str | None = None, clock=time.monotonic, nl=None, monitor=None,
                 learning: bool = False):
        """``learning``: the VXLAN ports learn the MACs we do not place (a
        compute's; never a gateway's: module docstring)."""
        self.netns = netns
        self._ingress: NftIngress | None = None
        self._guard: NftGuard | None = None
        self._guard_audit = AuditedSet("MAC guard (nftables set bridge gwagent guard)",
                                       clock=clock)
        #: what this backend reads in full only on the agent's audit timer
        self.audited = (self._guard_audit,)
        self._guard_indexes: dict[str, int | None] = {}  # the ports' as the guard last synced
        self.clock = clock
        self.learning = bool(learning)
        self.nl = nl if nl is not None else Netlink(netns)  # a model of the kernel in unit tests
        self._monitor = monitor if monitor is not None else Monitor(netns)
        self._owned_ifindexes = {link.index for link in self.nl.links()
                                 if is_owned_name(link.name)}
        self._expected: dict[tuple, float] = {}  # (ifindex, mac, dst, type) -> until
        self._expected_devices: dict[int, float] = {}  # ifindex -> until (EXPECT_EACH)
        self._expected_lock = threading.Lock()
        self._fast_nl: Netlink | None = None
        self._fast_index: dict[str, int] = {}
        self._devices: dict[str, NetworkDevices] = {}  # network name -> devices
        self._broken: dict[tuple[str, str], list[FdbEntry]] = {}
        self._where: dict[int, tuple[str, str]] = {}  # port ifindex -> (network, side)
        self._changes = Changes()
        self._mtus: dict[str, int] = {}  # local address -> its VXLAN devices' MTU

    def underlay_changed(self) -> bool:
        """Whether the MTUs of the underlay addresses here differ from the
        last observe()'s (an address gained or lost by VRRP, a link's MTU
        changed)."""
        return vxlan_mtus(self.nl.address_mtus()) != self._mtus

    def _locate(self) -> None:
        self._where = {self._fast_index[spec.name]: (devs.network, side)
                       for devs in self._devices.values()
                       for side, spec in ((SITE, devs.site_side), (TRANSIT, devs.transit_side))
                       if spec is not None and spec.name in self._fast_index}

    # observe --------------------------------------------------------------

    def observe(self) -> GatewayState:
        links = self.nl.links()
        owned = {link.index: link for link in links if is_owned_name(link.name)}
        self._owned_ifindexes = set(owned)
        self._fast_index = {link.name: index for index, link in owned.items()}
        self._mtus = vxlan_mtus(self.nl.address_mtus(links))
        networks = group_networks(owned.values(), self.learning, self._mtus)
        with gc_paused():
            records = self.nl.fdb_dump(frozenset(owned), NTF_EXT_LEARNED)
            macs, floods, self._broken = normalise(records, owned, networks)
        self._devices = {devs.network: devs for devs in networks if devs.network}
        self._locate()
        return GatewayState(tuple(sorted(network_spec(d) for d in networks)), macs, floods)

    # apply -------------------------------------------------------------------

    @without_gc
    def apply(self, ops: Sequence[Op]) -> list[OpError]:
        errors: list[OpError] = []
        if any(isinstance(op, NetworkOp) and op.action == "ensure" and any(
                seg.local_ip not in self._mtus for seg in (op.network.site, op.network.transit)
                if seg is not None) for op in ops):
            # an address gained since the last observe() (a standby's, by VRRP)
            self._mtus = vxlan_mtus(self.nl.address_mtus())
        i = 0
        while i < len(ops):
            if isinstance(ops[i], NetworkOp):
                error = self._network(ops[i])
                if error:
                    errors.append(error)
                i += 1
                continue
            j = i
            while j < len(ops) and not isinstance(ops[j], NetworkOp):
                j += 1
            errors.extend(self._fdb(ops[i:j]))
            i = j
        return errors

    def _network(self, op: NetworkOp) -> OpError | None:
        devs = NetworkDevices.of(op.network)
        try:
            if op.action == "ensure":
                index = BridgeDevice(self.nl, devs.bridge, devs.network).ensure()
                made = {devs.bridge: index}
                for spec in devs.sides:
                    made[spec.name] = VxlanDevice(self.nl, spec, self.learning,
                                                  self._mtus.get(spec.local_ip)).ensure(index)
                if devs.transit_side is None:  # one-sided: no transit port
                    VxlanDevice(self.nl, Vxlan(devs.transit_name, 0, "")).remove()
                # the fast path may move a MAC onto them before the next observe()
                self._devices = {**self._devices, devs.network: devs}
                self._fast_index = {**self._fast_index, **made}
                self._locate()
            elif op.action == "remove":
                for spec in devs.sides:
                    VxlanDevice(self.nl, spec).remove()
                BridgeDevice(self.nl, devs.bridge, devs.network).remove()
                self._fast_index = {name: index for name, index in self._fast_index.items()
                                    if name not in devs.names}
            else:
                return OpError(op, f"unknown network action {op.action!r}")
        except (NetlinkError, OSError) as exc:
            return OpError(op, f"{op.action} network {devs.network!r} "
                               f"({', '.join(devs.names)}): {exc}")
        return None

    def move(self, ops: Sequence[MacOp]) -> list[OpError]:
        """Apply a mobile MAC's operation at once, from the mobility
        worker's thread: on a socket of its own, with the device indexes of
        the last observe() (a device recreated since fails the op; the next
        pass repairs it)."""
        if self._fast_nl is None:
            self._fast_nl = Netlink(self.netns) if isinstance(self.nl, Netlink) else self.nl
        return self._fdb(ops, self._fast_index, self._fast_nl)

    def _fdb(self, ops: Sequence[MacOp | FloodOp], index: dict[str, int] | None = None,
             nl: Netlink | None = None) -> list[OpError]:
        nl = nl or self.nl
        # The devices' indexes as of the last observe() and the networks made
        # since (a change to an owned link forces the next observe): a dump
        # of every link here cost a pass 1 s at 1000 networks for one entry.
        # A device not in them is looked up once by a dump.
        final = index is not None
        if index is None:
            index = self._fast_index
        devices, broken = self._devices, self._broken
        errors, reqs, owner = [], [], []
        for op in ops:
            net = devices.get(op.entry.network)
            if net is None:
                errors.append(OpError(op, f"{describe(op)}: network {op.entry.network!r} "
                                          f"has no devices"))
                continue
            entries = compile_op(op, net, broken)
            missing = sorted({e[1].dev for e in entries if e[1].dev not in index})
            if missing and not final:
                index, final = self._link_index(nl), True
                missing = sorted({e[1].dev for e in entries if e[1].dev not in index})
            if missing:
                errors.append(OpError(op, f"{describe(op)}: device {missing[0]} does not exist"))
                continue
            for action, e in entries:
                reqs.append(FdbRequest(action, index[e.dev], e.mac, e.dst))
                owner.append((op, e.dev))
        self._expect(reqs)
        try:
            failed = nl.fdb_bulk(reqs)
        except (NetlinkError, OSError) as exc:
            return errors + [OpError(op, f"{describe(op)}: {exc}")
                             for op in dict.fromkeys(op for op, _ in owner)]
        if len(reqs) > WINDOW:  # a long write: its first echoes count from its end
            self._expect(reqs)
        reported = set()
        for i, exc in sorted(failed.items()):
            op, dev = owner[i]
            if id(op) not in reported:
                reported.add(id(op))
                errors.append(OpError(op, f"{describe(op)}: device {dev}: {exc}"))
        return errors

    @staticmethod
    def _link_index(nl: Netlink) -> dict[str, int]:
        return {link.name: link.index for link in nl.links() if is_owned_name(link.name)}

    # ownership -------------------------------------------------------------

    def remove_all(self) -> int:
        """Delete every gwa-* link (their FDB entries go with them), ports
        before bridges, and the ingress filter's table; nothing else.
        Returns how many links were deleted."""
        owned = [link for link in self.nl.links() if is_owned_name(link.name)]
        owned.sort(key=lambda link: link.kind == "bridge")
        for link in owned:
            self.nl.link_del(link.index)
        self._owned_ifindexes.clear()
        try:
            self._ingress_filter().remove()
            self._mac_guard().remove()
        except IngressError:
            pass  # no libnftables here: no table of ours either
        return len(owned)

    # the ingress filter (gwagent.dataplane.ingress) ----------------------------
    def _ingress_filter(self) -> NftIngress:
        if self._ingress is None:
            self._ingress = NftIngress(self.netns)
        return self._ingress

    def admit(self, adm: Admission | None, keep: bool = False) -> IngressCounters:
        """Make the gateway's nftables table say ``adm`` (None: no table;
        ``keep``: removing no source admitted now); the drop counters."""
        if adm is None and self._ingress is None:
            try:
                self._ingress_filter()
            except IngressError:
                return IngressCounters()  # no libnftables: no table to remove
        return self._ingress_filter().sync(adm, keep)

    def _mac_guard(self) -> NftGuard:
        if self._guard is None:
            self._guard = NftGuard(self._ingress_filter().run, self._guard_audit)
        return self._guard

    def guard(self, guards, changed: tuple | None = None) -> GuardCounters:
        """Make the gateway's bridge-family table drop what ``guards`` say
        (None: no table); the drop counters. Networks as last observed.
        ``changed``: (guards, those gone since, those come), when the
        caller knows (gwagent.control.world)."""
        if guards is None and self._guard is None:
            try:
                self._mac_guard()
            except IngressError:
                return GuardCounters()  # no libnftables: no table to remove
        devices = {(devs.network, side): devs.device(side)
                   for devs in self._devices.values() for side in (SITE, TRANSIT)
                   if devs.device(side)}
        # The members hold the ports' indexes (nftables resolves the names
        # when they are added): a port made again, by us or anyone, needs
        # them read and written again. A new network's are only added, by
        # the diff against what was written (reading them all after every
        # network made cost minutes at 1M).
        indexes = {name: self._fast_index.get(name) for name in devices.values()}
        if any(self._guard_indexes.get(name, index) != index for name, index in indexes.items()):
            self._guard_audit.forget()
        counters = self._mac_guard().sync(guards, devices, f"{PREFIX}vl-", changed)
        self._guard_indexes = indexes
        return counters

    # events ----------------------------------------------------------------

    def fileno(self) -> int:
        return self._monitor.fileno()

    def _expect(self, reqs: Sequence[FdbRequest]) -> None:
        until = self.clock() + self.ECHO_SECONDS
        with self._expected_lock:
            if len(reqs) > self.EXPECT_EACH:
                for ifindex in {req.ifindex for req in reqs}:
                    self._expected_devices[ifindex] = until
                return
            for req in reqs:
                mtype = RTM_DELNEIGH if req.action == "delete" else RTM_NEWNEIGH
                self._expected[(req.ifindex, req.mac, req.dst, mtype)] = until

    def drain_events(self) -> bool:
        """Read every pending link/FDB event; True if one concerned what we
        own and is not the echo of a change of ours (an FDB event of the
        kind we caused, new or deleted, for an entry we changed in the last
        ``ECHO_SECONDS``: a foreign delete right after our add still
        counts; any event of an owned device, ours too, which is rare),
        or if events were lost (the socket overflowed). What they say
        waits in :meth:`take_changes`."""
        events, overflow = self._monitor.drain()
        changes = self._changes
        concerned = overflow
        if overflow:
            changes.lose("kernel events lost (socket overflow)")
        now = self.clock()
        with self._expected_lock:
            expected = self._expected
            if expected:
                for key in [k for k, until in expected.items() if until < now]:
                    del expected[key]
            devices = self._expected_devices
            if devices:
                for key in [k for k, until in devices.items() if until < now]:
                    del devices[key]
            for mtype, ifindex, what in events:
                if mtype in (RTM_NEWLINK, RTM_DELLINK):
                    owned = what is not None and is_owned_name(what)
                    if owned:
                        if mtype == RTM_NEWLINK:
                            self._owned_ifindexes.add(ifindex)
                        else:
                            self._owned_ifindexes.discard(ifindex)
                    if owned or ifindex in self._owned_ifindexes:  # ours too: rare, read
                        concerned = True
                        changes.lose(f"owned device {what or ifindex} changed")
                elif (ifindex in self._owned_ifindexes and what is not None
                      and what.flags & NTF_EXT_LEARNED and ifindex not in devices
                      and (ifindex, what.mac, _dst(what), mtype) not in expected):
                    concerned = True
                    self._foreign(mtype, ifindex, what, changes)
        return concerned

    def _foreign(self, mtype: int, ifindex: int, rec, changes: Changes) -> None:
        at = self._where.get(ifindex)
        if at is None:
            changes.lose(f"an entry of ours on device {ifindex} changed")
            return
        network, side = at
        if rec.mac == FLOOD_MAC and rec.dst is not None:
            changes.floods[FloodEntry(network, side, rec.dst)] = mtype == RTM_NEWNEIGH
            return
        changes.macs.add((network, rec.mac))
        if mtype == RTM_NEWNEIGH:  # to clear when the MAC is set again
            dev = self._devices[network].device(side)
            self._broken.setdefault((network, rec.mac), []).append(
                FdbEntry(dev, rec.mac, _dst(rec)))

    def take_changes(self) -> Changes:
        """What changed behind the agent's back since the last call."""
        changes, self._changes = self._changes, Changes()
        return changes

    def tap(self, local_ips: Sequence[str]):
        """The mobility tap on this namespace's underlay (see capture)."""
        if self._fast_nl is None:  # opened now: a namespace switch costs ~30 ms
            self._fast_nl = Netlink(self.netns)
        return MobilityTap(self.netns, local_ips)

    def close(self) -> None:
        if self._ingress is not None:
            self._ingress.close()
        self._monitor.close()
        self.nl.close()
        if self._fast_nl is not None and self._fast_nl is not self.nl:
            self._fast_nl.close()

    def __enter__(self) -> "LinuxBackend":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _dst(rec: FdbRecord) -> str | None:
    """The destination a request of ours names for this entry (none for a
    bridge entry)."""
    return None if rec.master or rec.flags & NTF_MASTER else rec.dst


def compile_op(op: MacOp | FloodOp, devs: NetworkDevices,
               broken: dict[tuple[str, str], list[FdbEntry]]) -> list[tuple[str, FdbEntry]]:
    """The kernel requests for one operation, in order: a MAC's place is a
    bridge entry on the side's port and a VXLAN entry toward the VTEP (both
    replaced, so a move never floods), and a move across sides deletes the
    VXLAN entry left on the other port; a flood destination is one appended
    all-zero entry."""
    e = op.entry
    if isinstance(op, FloodOp):
        return [("append" if op.action == "add" else "delete",
                 FdbEntry(devs.device(e.side), FLOOD_MAC, e.vtep))]
    dev = devs.device(e.side)
    if op.action == "set":
        out = [("replace", FdbEntry(dev, e.mac)), ("replace", FdbEntry(dev, e.mac, e.vtep))]
        prev = op.previous
        if prev is not None and prev.vtep is None:
            out.extend(("delete", f) for f in broken.get((e.network, e.mac), ())
                       if f.dst is not None and f != out[1][1])
        elif prev is not None and prev.side != e.side:
            out.append(("delete", FdbEntry(devs.device(prev.side), e.mac, prev.vtep)))
        return out
    if e.vtep is None:
        return [("delete", f) for f in broken.get((e.network, e.mac), ())]
    return [("delete", FdbEntry(dev, e.mac)), ("delete", FdbEntry(dev, e.mac, e.vtep))]


def describe(op: MacOp | FloodOp) -> str:
    e = op.entry
    if isinstance(op, FloodOp):
        return f"{op.action} flood {e.network} {e.side} {e.vtep}"
    where = f"{e.side} {e.vtep}" if e.vtep else f"{e.side} (broken)"
    return f"{op.action} {e.network} {e.mac} at {where}"

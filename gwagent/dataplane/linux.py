"""The Linux backend: a bridge and two VXLAN devices per network, FDB entries.

Per stretched network the gateway holds ``gwa-br-<transit VNI>`` with two
VXLAN ports, ``gwa-vl-<transit VNI>`` toward the site's computes (the site's
segmentation ID, on the tunnel IP) and ``gwa-vt-<transit VNI>`` toward the
peer gateways (the transit VNI, on the transit IP); UDP port 4789, VXLAN
learning off and bridge-port learning off on both (a learned frame would
take over an entry we placed), everything up. A remote MAC needs two FDB
entries, a bridge entry sending it to the right port and a VXLAN entry
sending it to the right VTEP; the all-zero MAC with a ``dst`` replicates
floods to every listed VTEP.

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
``ensureLink`` does; a fixable one (master, port learning, alias, down) is
fixed in place. FDB operations go through the adapter's bulk path, many per
``send()``, with an error per entry.

The network's name cannot be read from a VXLAN device, so the bridge keeps
it in its alias (``IFLA_IFALIAS``) and observe() reads it back: a bridge we
did not name shows as a difference and ensure() names it.

observe() normalises in one place, :func:`normalise_fdb` and
:func:`group_networks`; a device that is missing, of the wrong kind, not a
port of its bridge, learning, or down is reported as ``Vxlan(name, 0, "",
0)`` (VNI 0 cannot be desired), a bridge that is missing, not a bridge or
down with an empty network name, so the planner ensures the network again.
"""
from __future__ import annotations

import contextlib
import functools
import gc
import logging
import re
import sys
import threading
import time
from typing import Iterable, Sequence

from gwagent.dataplane.netlink import (NTF_EXT_LEARNED, NTF_MASTER, RTM_DELLINK, RTM_DELNEIGH,
                                       RTM_NEWNEIGH, FdbRecord, FdbRequest, Link, Monitor,
                                       Netlink, NetlinkError)
from gwagent.state import (PREFIX, DataplaneState, FdbEntry, FdbOp, NetworkDevices,
                           NetworkOp, Op, OpError, Vxlan, is_owned_name)

log = logging.getLogger(__name__)

_NAME_RE = re.compile(re.escape(PREFIX) + r"(br|vl|vt)-(\d+)")
RTM_NEWLINK = 16


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
    """One VXLAN port of a network's bridge."""

    def __init__(self, nl: Netlink, spec: Vxlan):
        self.nl, self.spec = nl, spec

    def ensure(self, bridge_index: int) -> int:
        """Make the device exist as specified, a non-learning port of the
        bridge, and up; return its ifindex."""
        name = self.spec.name
        link = self.nl.link(name)
        if link is not None:
            reasons = recreate_reasons(link, self.spec)
            if reasons:
                log.warning("%s: %s: recreating it", name, "; ".join(reasons))
                self.nl.link_del(link.index)
                link = None
        created = link is None
        if created:
            self.nl.link_add(name, "vxlan", vxlan_id=self.spec.vni,
                             vxlan_local=self.spec.local_ip, vxlan_port=self.spec.port,
                             vxlan_learning=0, master=bridge_index)
            link = self.nl.link(name)
        if link.master != bridge_index:
            log.warning("%s: not a port of its bridge (master %s): enslaving it", name,
                        link.master)
            self.nl.link_set(link.index, master=bridge_index)
            link = self.nl.link(name)
        if link.port_learning is not False:
            if not created:
                log.warning("%s: bridge-port learning is on: turning it off", name)
            self.nl.brport_set(link.index, learning=0)
        if not link.up:
            self.nl.link_set(link.index, state="up")
        return link.index

    def remove(self) -> None:
        link = self.nl.link(self.spec.name)
        if link is not None:
            self.nl.link_del(link.index)


def recreate_reasons(link: Link, spec: Vxlan) -> list[str]:
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
    if link.vxlan_learning:
        reasons.append("VXLAN learning is on")
    return reasons


def _unusable_reasons(link: Link | None, bridge: Link | None) -> list[str]:
    """Why a VXLAN device is not a working port of its network, in words."""
    if link is None:
        return ["missing"]
    if link.kind != "vxlan":
        return [f"is a {link.kind or 'plain'} device"]
    reasons = []
    if bridge is None or link.master != bridge.index:
        reasons.append("not a port of the network's bridge")
    if link.vxlan_learning or link.port_learning:
        reasons.append("learning")
    if not link.up:
        reasons.append("down")
    return reasons


def group_networks(owned: Iterable[Link]) -> list[NetworkDevices]:
    """Group owned links into NetworkDevices by the transit VNI in their
    names, reporting unusable devices as differences (module docstring)."""
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
        sides = []
        for role in ("vl", "vt"):
            name, link = f"{PREFIX}{role}-{vni}", g.get(role)
            if _unusable_reasons(link, br if usable else None):
                sides.append(Vxlan(name, 0, "", 0))
            else:
                sides.append(Vxlan(name, link.vni, link.local or "", link.port))
        out.append(NetworkDevices(network, f"{PREFIX}br-{vni}", sides[0], sides[1]))
    return sorted(out)


def normalise_fdb(records: Iterable[FdbRecord], owned: dict[int, Link]) -> frozenset[FdbEntry]:
    """The FDB entries we own, as the planner sees them.

    Kernel quirks handled here and nowhere else: a bridge entry is dumped on
    its port with ``NDA_MASTER`` (and may come twice, with and without VLAN
    1: the VLAN is dropped and the set merges them); the bridge's own and
    local entries, and anything without ``extern_learn``, are not ours; a
    VXLAN entry's VNI and UDP port are omitted when they equal the device's.
    A VXLAN entry with another VNI or port cannot be expressed as an
    FdbEntry and is skipped (a replace of the same MAC overwrites it).
    """
    names = {i: sys.intern(link.name) for i, link in owned.items()}
    bridges = {i for i, link in owned.items() if link.kind == "bridge"}
    masters = {i: link.master for i, link in owned.items()}
    vxlans = {i: (link.vni, link.port) for i, link in owned.items() if link.kind == "vxlan"}
    # 200k+ entries on an idle pass: build the named tuples without the
    # Python-level __new__ when FdbEntry is one (a measured 2x on this loop).
    if issubclass(FdbEntry, tuple):
        entry = functools.partial(tuple.__new__, FdbEntry)
    else:
        def entry(values):
            return FdbEntry(*values)
    out = set()
    add = out.add
    for ifindex, _state, flags, mac, dst, _vlan, master, vni, port in records:
        if not flags & NTF_EXT_LEARNED:
            continue
        name = names.get(ifindex)
        if name is None:
            continue
        if master or flags & NTF_MASTER:
            if dst is None and (master or masters[ifindex]) in bridges:
                add(entry((name, mac, None)))
        elif dst is not None:
            device = vxlans.get(ifindex)
            if device is None or vni not in (None, device[0]) or port not in (None, 0, device[1]):
                continue
            add(entry((name, mac, dst)))
    return frozenset(out)


class LinuxBackend:
    """The Backend protocol (gwagent.dataplane) on a Linux namespace."""

    #: How long after we changed an entry its notification counts as our
    #: own echo (they are queued during the request; this is slack).
    ECHO_SECONDS = 2.0

    def __init__(self, netns: str | None = None, clock=time.monotonic):
        self.netns = netns
        self.clock = clock
        self.nl = Netlink(netns)
        self._monitor = Monitor(netns)
        self._owned_ifindexes = {link.index for link in self.nl.links()
                                 if is_owned_name(link.name)}
        self._expected: dict[tuple[int, str, int], float] = {}  # (ifindex, mac, type) -> until
        self._expected_lock = threading.Lock()
        self._fast_nl: Netlink | None = None
        self._fast_index: dict[str, int] = {}

    # observe --------------------------------------------------------------

    def observe(self) -> DataplaneState:
        owned = {link.index: link for link in self.nl.links() if is_owned_name(link.name)}
        self._owned_ifindexes = set(owned)
        self._fast_index = {link.name: index for index, link in owned.items()}
        with _gc_paused():
            records = self.nl.fdb_dump(frozenset(owned), NTF_EXT_LEARNED)
            fdb = normalise_fdb(records, owned)
        return DataplaneState(tuple(group_networks(owned.values())), fdb)

    # apply -------------------------------------------------------------------

    def apply(self, ops: Sequence[Op]) -> list[OpError]:
        errors: list[OpError] = []
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
        devs = op.devices
        try:
            if op.action == "ensure":
                index = BridgeDevice(self.nl, devs.bridge, devs.network).ensure()
                for spec in (devs.site_side, devs.transit_side):
                    VxlanDevice(self.nl, spec).ensure(index)
            elif op.action == "remove":
                for spec in (devs.site_side, devs.transit_side):
                    VxlanDevice(self.nl, spec).remove()
                BridgeDevice(self.nl, devs.bridge, devs.network).remove()
            else:
                return OpError(op, f"unknown network action {op.action!r}")
        except (NetlinkError, OSError) as exc:
            return OpError(op, f"{op.action} network {devs.network!r} "
                               f"({', '.join(devs.names)}): {exc}")
        return None

    def move(self, ops: Sequence[FdbOp]) -> list[OpError]:
        """Apply a mobile MAC's few FDB operations at once, from the
        mobility worker's thread: on a socket of its own, with the device
        indexes of the last observe() (a device recreated since fails the
        op; the next pass repairs it)."""
        if self._fast_nl is None:
            self._fast_nl = Netlink(self.netns)
        return self._fdb(ops, self._fast_index, self._fast_nl)

    def _fdb(self, ops: Sequence[FdbOp], index: dict[str, int] | None = None,
             nl: Netlink | None = None) -> list[OpError]:
        nl = nl or self.nl
        if index is None:
            index = {link.name: link.index for link in nl.links() if is_owned_name(link.name)}
        errors, reqs, sent = [], [], []
        for op in ops:
            e = op.entry
            if not is_owned_name(e.dev):
                errors.append(OpError(op, f"{_describe(op)}: {e.dev} is not a gateway device"))
            elif e.dev not in index:
                errors.append(OpError(op, f"{_describe(op)}: device {e.dev} does not exist"))
            else:
                reqs.append(FdbRequest(op.action, index[e.dev], e.mac, e.dst))
                sent.append(op)
        self._expect(reqs)
        try:
            failed = nl.fdb_bulk(reqs)
        except (NetlinkError, OSError) as exc:
            return errors + [OpError(op, f"{_describe(op)}: {exc}") for op in sent]
        errors.extend(OpError(sent[i], f"{_describe(sent[i])}: {exc}")
                      for i, exc in sorted(failed.items()))
        return errors

    # ownership -------------------------------------------------------------

    def remove_all(self) -> int:
        """Delete every gwa-* link (their FDB entries go with them), ports
        before bridges; nothing else. Returns how many were deleted."""
        owned = [link for link in self.nl.links() if is_owned_name(link.name)]
        owned.sort(key=lambda link: link.kind == "bridge")
        for link in owned:
            self.nl.link_del(link.index)
        self._owned_ifindexes.clear()
        return len(owned)

    # events ----------------------------------------------------------------

    def fileno(self) -> int:
        return self._monitor.fileno()

    def _expect(self, reqs: Sequence[FdbRequest]) -> None:
        until = self.clock() + self.ECHO_SECONDS
        with self._expected_lock:
            for req in reqs:
                mtype = RTM_DELNEIGH if req.action == "delete" else RTM_NEWNEIGH
                self._expected[(req.ifindex, req.mac, mtype)] = until

    def drain_events(self) -> bool:
        """Read every pending link/FDB event; True if one concerned an owned
        device and is not the echo of a change of ours (an FDB event of the
        kind we caused, new or deleted, for an entry we changed in the last
        ``ECHO_SECONDS``: a foreign delete right after our add still
        counts), or if events were
        lost (the socket overflowed)."""
        events, concerned = self._monitor.drain()
        now = self.clock()
        with self._expected_lock:
            expected = self._expected
            if expected:
                for key in [k for k, until in expected.items() if until < now]:
                    del expected[key]
            for mtype, ifindex, name in events:
                if mtype in (RTM_NEWLINK, RTM_DELLINK):
                    if name is not None and is_owned_name(name):
                        concerned = True
                        if mtype == RTM_NEWLINK:
                            self._owned_ifindexes.add(ifindex)
                        else:
                            self._owned_ifindexes.discard(ifindex)
                    elif ifindex in self._owned_ifindexes:
                        concerned = True
                elif ifindex in self._owned_ifindexes and (ifindex, name, mtype) not in expected:
                    concerned = True
        return concerned

    def tap(self, local_ips: Sequence[str]):
        """The mobility tap on this namespace's underlay (see capture)."""
        from gwagent.dataplane.capture import MobilityTap
        if self._fast_nl is None:  # opened now: a namespace switch costs ~30 ms
            self._fast_nl = Netlink(self.netns)
        return MobilityTap(self.netns, local_ips)

    def close(self) -> None:
        self._monitor.close()
        self.nl.close()
        if self._fast_nl is not None:
            self._fast_nl.close()

    def __enter__(self) -> "LinuxBackend":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@contextlib.contextmanager
def _gc_paused():
    """Hold the cyclic garbage collector while building 200k+ acyclic
    tuples: its passes over a large heap doubled the decode time here."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _describe(op: FdbOp) -> str:
    e = op.entry
    where = f" dst {e.dst}" if e.dst else " (bridge entry)"
    return f"{op.action} {e.mac} on {e.dev}{where}"

"""The OpenFlow backend: the gateway's state compiled into flows and groups.

The Backend protocol (gwagent.dataplane) on an Open vSwitch bridge of ours:
OVSDB makes the bridge and its VXLAN port (gwagent.openflow.ovsdb), the
embedded os-ken controller carries the flows (gwagent.openflow.switch), and
gwagent.openflow.flows builds them (the pipeline is described there).

observe() dumps the flows of our cookie and the bridge's groups and reads
the gateway's state back from them: a network is whole when both sides'
classify, flood and egress flows agree and its groups exist (else its side
reads VNI 0 and the planner ensures it again); a MAC is where its unicast
flow says; floods are the groups' buckets. apply() sends one atomic bundle
per network, so a network is never half programmed; flood destinations
change by rewriting the side's group with all its buckets. move() is the
mobility fast path: one flow add over the old one and a barrier, outside
any bundle (one round trip; a single flow-mod is atomic by itself).
The mobility evidence comes from the same tap as on Linux (a classic BPF
filter on the underlay, gwagent.dataplane.capture), which sees a gateway's
VXLAN frames before the switch does on either datapath.
"""
from __future__ import annotations

import collections
import logging
import time
from typing import Sequence

from os_ken.ofproto import ofproto_v1_4 as ofp

from gwagent.dataplane import AuditedSet, Changes
from gwagent.dataplane.capture import MobilityTap
from gwagent.hotpath import difference, follow, without_gc
from gwagent.openflow import flows as fl
from gwagent.openflow.evidence import PacketInTap
from gwagent.openflow.ovsdb import Bridge
from gwagent.openflow.switch import Switch, SwitchError
from gwagent.state import (SITE, TRANSIT, Admission, FloodEntry, FloodOp, GatewayState,
                           Guard, GuardCounters, IngressCounters, MacEntry, MacOp, NetworkOp, NetworkSpec, Op, OpError,
                           Segment)

LOG = logging.getLogger(__name__)
BROKEN = Segment(0, "")
EVIDENCE = ("tap", "packet-in")


class OpenFlowBackend:
    name = "openflow"
    #: The MAC guard matches the outer source too (flows.py, GUARD).
    guard_by_source = True

    #: How long after we deleted a flow its removal counts as our own echo.
    ECHO_SECONDS = 2.0

    def __init__(self, netns: str | None, ovsdb: str, bridge: str = "gwa-ovs",
                 vxlan_port: str = "gwa-vxlan", datapath_type: str = "system",
                 listen_address: str = "127.0.0.1", listen_port: int = 6653,
                 timeout: float = 10.0, switch=None, ovsdb_bridge=None,
                 evidence: str = "tap", evidence_rate: int = 100,
                 evidence_burst: int = 25, clock=time.monotonic):
        self.netns = netns
        if evidence not in EVIDENCE:
            raise ValueError(f"mobility evidence {evidence!r}: one of {', '.join(EVIDENCE)}")
        self.evidence, self.evidence_rate, self.evidence_burst = (evidence, evidence_rate,
                                                                   evidence_burst)
        # (switch, ovsdb_bridge: models of both, in the unit tests)
        self.switch = switch or Switch(netns, listen_address, listen_port, timeout)
        self.bridge = ovsdb_bridge or Bridge(ovsdb, bridge, vxlan_port,
                                             f"tcp:{listen_address}:{listen_port}",
                                             datapath_type, timeout)
        self.port = self.bridge.ensure()
        self.switch.wait_connected()
        self._vni: dict[str, int] = {}                       # network name -> transit VNI
        self._nets: dict[int, NetworkSpec] = {}
        self._floods: dict[tuple[int, str], set[str]] = {}   # (vni, side) -> VTEPs
        self._groups: set[int] = set()
        self._encoders: dict[int, fl.MacFlowBytes] = {}
        self.clock = clock
        self._expected: dict[tuple[int, str | None], float] = {}  # (vni, MAC|None) -> until
        self._seen_changes = self.switch.changes
        self._changes = Changes()
        self._guard_audit = AuditedSet("MAC guard (table GUARD)", clock=clock)
        #: what this backend reads in full only on the agent's audit timer
        self.audited = (self._guard_audit,)
        self._guard_encoders: dict[int, fl.GuardFlowBytes] = {}
        self._guard_want: tuple = (None, None, frozenset())
        self._guard_step: tuple | None = None  # how the guards last changed (hotpath.follow)

    # observe ---------------------------------------------------------------
    @without_gc
    def observe(self) -> GatewayState:
        port = self.bridge.ofport()
        if port is None:  # made again: none of its flows are there
            self._guard_audit.forget()
        self.port = port or self.bridge.ensure()
        names = self.bridge.network_names()
        stats = self.switch.dump_flows(fl.COOKIE_BASE, fl.COOKIE_MASK)
        groups = self.switch.dump_groups()
        classify, egress, flood_to = {}, {}, {}
        pipeline = 0
        macs = set()
        for st in stats:
            kind, vni = fl.kind_of(st.cookie), fl.vni_of(st.cookie)
            if kind == fl.K_MAC:
                a = fl.actions_of(st)
                name = names.get(vni)
                side = fl.SIDE_OF.get(a.get("reg2"))
                if name and side and a.get("goto") == fl.EGRESS:
                    macs.add(MacEntry(name, st.match["eth_dst"], side, a.get("tun_ipv4_dst")))
            elif kind == fl.K_NETWORK:
                a, m = fl.actions_of(st), st.match
                if st.table_id == fl.CLASSIFY and m.get("in_port") == self.port:
                    side = fl.SIDE_OF.get(a.get("reg1"))
                    if a.get("reg0") == vni and side and a.get("goto") == fl.GUARD:
                        classify[(vni, side)] = Segment(m.get("tunnel_id"),
                                                        m.get("tun_ipv4_dst"))
                elif st.table_id == fl.UNICAST:
                    flood_to[(vni, fl.SIDE_OF.get(m.get("reg1")))] = a.get("group")
                elif st.table_id == fl.EGRESS and a.get("output") == ofp.OFPP_IN_PORT:
                    egress[(vni, fl.SIDE_OF.get(m.get("reg2")))] = Segment(
                        a.get("tunnel_id"), a.get("tun_ipv4_src"))
            elif kind in (fl.K_PIPELINE, fl.K_HIJACK):
                pipeline += 1
        group_ids = {g.group_id: g for g in groups}
        floods: set[FloodEntry] = set()
        self._floods = collections.defaultdict(set)
        for gid, g in group_ids.items():
            vni, side = fl.group_key(gid)
            for entry in fl.flood_entries(names.get(vni, ""), gid, g.buckets):
                self._floods[(vni, side)].add(entry.vtep)
                if entry.network:
                    floods.add(entry)
        self._groups = set(group_ids)
        networks = []
        for vni in sorted({v for v, _ in classify} | {v for v, _ in egress} | set(names)):
            segs = []
            for side in (SITE, TRANSIT):
                other = TRANSIT if side == SITE else SITE
                seg = classify.get((vni, side))
                whole = (seg is not None and egress.get((vni, side)) == seg
                         and flood_to.get((vni, side)) == fl.group_id(vni, other)
                         and fl.group_id(vni, other) in group_ids
                         and pipeline == len(fl.pipeline()))
                segs.append(seg if whole else BROKEN)
            networks.append(NetworkSpec(vni, names.get(vni, ""), segs[0], segs[1]))
        self._vni = {net.name: net.transit_vni for net in networks if net.name}
        self._nets = {net.transit_vni: net for net in networks}
        return GatewayState(tuple(networks), frozenset(macs), frozenset(floods))

    # apply -----------------------------------------------------------------
    @without_gc
    def apply(self, ops: Sequence[Op]) -> list[OpError]:
        errors: list[OpError] = []
        batches: dict[int | None, list[Op]] = {}
        ensured = {op.network.name: op.network.transit_vni for op in ops
                   if isinstance(op, NetworkOp) and op.action == "ensure"}
        vnis = {**self._vni, **ensured}
        for op in ops:
            vni = (op.network.transit_vni if isinstance(op, NetworkOp)
                   else vnis.get(op.entry.network))
            if vni is None:
                errors.append(OpError(op, f"{describe(op)}: network {op.entry.network!r} "
                                          f"has no flows on the switch"))
                continue
            batches.setdefault(vni, []).append(op)
        for vni, batch in batches.items():
            errors.extend(self._network_batch(vni, batch))
        return errors

    def move(self, ops: Sequence[MacOp]) -> list[OpError]:
        """A mobile MAC's move: its flow added over the old one (same match
        and priority, so OVS replaces it in one step: atomic by itself),
        then a barrier. One round trip where a bundle takes two (open, adds
        and barrier, then commit); errors per message. Anything but MAC
        sets on known networks goes through apply()."""
        vnis = [self._vni.get(op.entry.network) for op in ops]
        if not ops or None in vnis or any(not isinstance(op, MacOp) or op.action != "set"
                                          for op in ops):
            return self.apply(ops)
        msgs = [fl.Prebuilt(self._encoder(vni), op.entry) for op, vni in zip(ops, vnis)]
        try:
            failed = self.switch.request(msgs)
        except SwitchError as exc:
            return [OpError(op, f"{describe(op)}: {exc}") for op in ops]
        return [OpError(op, f"{describe(op)}: {failed[i]}") for i, op in enumerate(ops)
                if i in failed]

    def _network_batch(self, vni: int, ops: list[Op]) -> list[OpError]:
        msgs, owner = [], []
        removed = named = encoder = None
        touched: set[str] = set()
        for op in ops:
            if isinstance(op, MacOp) and op.action == "set":  # the bulk of a batch first
                if encoder is None:
                    encoder = self._encoder(vni)
                msgs.append(fl.Prebuilt(encoder, op.entry))
                owner.append(op)
            elif isinstance(op, NetworkOp) and op.action == "ensure":
                net = op.network
                for side in (SITE, TRANSIT):
                    exists = fl.group_id(vni, side) in self._groups
                    msgs.append(fl.group(net, side, self._floods.get((vni, side), ()), self.port,
                                         ofp.OFPGC_MODIFY if exists else ofp.OFPGC_ADD))
                    owner.append(op)
                for msg in fl.network_flows(net, self.port) + fl.pipeline():
                    msgs.append(msg)
                    owner.append(op)
                named = net
            elif isinstance(op, NetworkOp):
                self._expect_removed(vni, None)
                for msg in fl.delete_network(vni):
                    msgs.append(msg)
                    owner.append(op)
                removed = op.network
            elif isinstance(op, MacOp):
                msgs.append(fl.delete_mac(op.entry.mac, vni))
                owner.append(op)
                self._expect_removed(vni, op.entry.mac)
            else:
                vteps = self._floods.setdefault((vni, op.entry.side), set())
                (vteps.add if op.action == "add" else vteps.discard)(op.entry.vtep)
                touched.add(op.entry.side)
        net = named or self._nets.get(vni)
        for side in sorted(touched):
            if net is not None and removed is None:
                msgs.append(fl.group(net, side, self._floods[(vni, side)], self.port,
                                     ofp.OFPGC_MODIFY))
                owner.append(("flood", side))
        try:
            failed = self.switch.bundle(msgs)
        except SwitchError as exc:
            return [OpError(op, f"{describe(op)}: {exc}") for op in ops]
        if not failed:
            if named is not None:
                self._groups |= {fl.group_id(vni, SITE), fl.group_id(vni, TRANSIT)}
                self._nets[vni] = named
                self._vni[named.name] = vni
                self.bridge.set_network_name(vni, named.name)
            if removed is not None:
                self._groups -= {fl.group_id(vni, SITE), fl.group_id(vni, TRANSIT)}
                self._nets.pop(vni, None)
                self._vni.pop(removed.name, None)
                self.bridge.set_network_name(vni, None)
            return []
        # The bundle is atomic: nothing of it landed. The refused message's
        # own reason goes to its operations, the others say they rolled back.
        self._floods = {}  # re-read at the next observe
        return [OpError(op, f"{describe(op)}: {_reason(failed, owner, op)}") for op in ops]

    # the ingress filter --------------------------------------------------------
    def admit(self, adm: Admission | None, keep: bool = False) -> IngressCounters:
        """Make table ADMIT say ``adm`` (None: no filter), adding and
        deleting only what differs, in one bundle (``keep``: deleting no
        admitted source); the drop counters."""
        port = self.port or self.bridge.ofport()
        if port is None:
            return IngressCounters()  # no bridge yet: the next pass makes it
        mask = fl.COOKIE_MASK | 0xFF << 24
        # keyed by address, not side: a gateway may use one address for both
        have_admit, have_drop, counters = {}, {}, IngressCounters()
        for st in self.switch.dump_flows(fl.cookie(fl.K_ADMIT), mask, fl.ADMIT):
            side, m = fl.SIDE_OF[fl.vni_of(st.cookie) & 1], st.match
            if st.table_id != fl.ADMIT or m.get("in_port") != port:
                continue
            if st.priority == fl.P_ADMIT:
                have_admit[(m.get("tun_ipv4_dst"), m.get("tun_ipv4_src"))] = side
            elif st.priority == fl.P_ADMIT_DROP:
                have_drop[m.get("tun_ipv4_dst")] = side
                counters.dropped[side] = st.packet_count
        for st in self.switch.dump_flows(fl.cookie(fl.K_OFFENDER), mask, fl.OFFENDERS):
            side = fl.SIDE_OF[fl.vni_of(st.cookie) & 1]
            src = st.match.get("tun_ipv4_src")
            if src:
                counters.offenders.setdefault(side, {})[src] = st.packet_count
        if adm is None:
            if have_admit or have_drop:
                self.switch.bundle(fl.delete_filter())
            return IngressCounters()
        want_admit, want_drop = {}, {}
        for side, local, sources in adm.sides():
            want_drop.setdefault(local, side)
            for src in sources:
                want_admit.setdefault((local, src), side)
        msgs = ([fl.delete_admit_flow(side, local, src, port)
                 for (local, src), side in sorted(have_admit.items())
                 if (local, src) not in want_admit and not keep]
                + [fl.delete_admit_flow(side, local, None, port)
                   for local, side in sorted(have_drop.items()) if local not in want_drop]
                + [fl.admit_flow(side, local, src, port)
                   for (local, src), side in sorted(want_admit.items())
                   if (local, src) not in have_admit]
                + [fl.admit_drop_flow(side, local, port)
                   for local, side in sorted(want_drop.items()) if local not in have_drop])
        failed = self.switch.bundle(msgs) if msgs else {}
        if failed:
            raise SwitchError(f"ingress filter refused: {next(iter(failed.values()))}")
        return counters

    # the MAC guard -----------------------------------------------------------
    def _guards_there(self) -> set[Guard]:
        """Read table GUARD (the audit: one flow per MAC of the world)."""
        names = {vni: net.name for vni, net in self._nets.items()}
        found: dict[tuple, list] = {}
        for st in self.switch.dump_flows(fl.GUARD_BASE, fl.COOKIE_MASK):
            m = st.match
            key = (names.get(fl.vni_of(st.cookie)), m.get("eth_src"),
                   fl.SIDE_OF.get(m.get("reg1")))
            if st.table_id != fl.GUARD or None in key:
                continue
            sources = found.setdefault(key, [])
            if st.priority == fl.P_GUARD_SOURCE and m.get("tun_ipv4_src"):
                sources.append(m["tun_ipv4_src"])
            elif st.priority != fl.P_GUARD:
                continue
            else:
                sources.append(None)  # the guard's own flow
        return {Guard(net, mac, side, tuple(sorted(s for s in srcs if s)))
                for (net, mac, side), srcs in found.items() if None in srcs}

    def guard(self, guards, changed: tuple | None = None) -> GuardCounters:
        """Make table GUARD say ``guards`` (None: none), in one bundle per
        change; the drop counters of table HIJACKS. ``changed``: (guards,
        those gone since, those come), when the caller knows
        (gwagent.control.world)."""
        counters = GuardCounters()
        names = {vni: net.name for vni, net in self._nets.items()}
        # each dump in its own table: a dump by cookie alone made the switch
        # scan every flow of the bridge, 0.7 s a pass at 1M endpoints
        for st in self.switch.dump_flows(fl.cookie(fl.K_HIJACK), fl.COOKIE_MASK | 0xFF << 24,
                                         fl.HIJACKS):
            if st.table_id == fl.HIJACKS and st.priority == fl.P_HIJACK:
                counters.dropped[fl.SIDE_OF[fl.vni_of(st.cookie) & 1]] = st.packet_count
        for st in self.switch.dump_flows(fl.cookie(fl.K_HIJACKER),
                                         fl.COOKIE_MASK | 0xFF << 24, fl.HIJACKERS):
            m = st.match
            net, side = names.get(m.get("reg0")), fl.SIDE_OF.get(m.get("reg1"))
            if net and side and m.get("eth_src"):
                counters.macs.setdefault(side, {})[(net, m["eth_src"])] = st.packet_count
        if self._guard_want[0] is not guards or self._guard_want[1] != self._vni:
            vnis = self._vni
            made, self._guard_step = follow(
                self._guard_want[::2], guards,
                lambda gs: frozenset(g for g in gs if g.network in vnis),
                same=self._guard_want[1] == vnis, changed=changed)
            self._guard_want = (guards, dict(vnis), made)
        want = self._guard_want[2]  # computed once per change of the guards or networks
        have = self._guard_audit.have(self._guards_there)
        gone, add = difference(have, want, self._guard_step) if have is not want else ((), ())
        if not (gone or add):
            self._guard_audit.wrote(want)  # (equal as read: the same object from now on)
            return counters if guards is not None else GuardCounters()
        if want:
            msgs = [fl.delete_guard(self._vni[g.network], g.side, g.mac) for g in sorted(gone)
                    if g.network in self._vni]
        else:  # none: one delete by the guards' cookie
            msgs = [fl.delete_guards()]
        for g in sorted(add):  # the bulk path for all but a mobile MAC's
            vni = self._vni[g.network]
            if g.sources:
                msgs += fl.guard_flows(vni, g.side, g.mac, g.sources)
            else:
                encoder = self._guard_encoders.get(vni)
                if encoder is None:
                    encoder = self._guard_encoders[vni] = fl.GuardFlowBytes(vni)
                msgs.append(fl.Prebuilt(encoder, g))
        try:
            failed = self.switch.bundle(msgs) if msgs else {}
        except SwitchError:
            self._guard_audit.forget()
            raise
        if failed:
            self._guard_audit.forget()
            raise SwitchError(f"MAC guard refused: {next(iter(failed.values()))}")
        self._guard_audit.wrote(want)
        return counters if guards is not None else GuardCounters()

    def _encoder(self, vni: int) -> fl.MacFlowBytes:
        encoder = self._encoders.get(vni)
        if encoder is None:
            encoder = self._encoders[vni] = fl.MacFlowBytes(vni)
        return encoder

    # ownership, events ----------------------------------------------------------
    def remove_all(self) -> int:
        """Delete the gateway's bridge (every flow and group on it is ours)."""
        return 1 if self.bridge.remove() else 0

    def tap(self, local_ips: Sequence[str]):
        """The mobility evidence: the Linux backend's BPF tap on the
        underlay (the default, measured fastest; flows.py) or packet-ins
        of table MOBILITY (``evidence="packet-in"``, gwagent.openflow.evidence)."""
        if self.evidence == "packet-in":
            return PacketInTap(self.switch, self.evidence_rate, self.evidence_burst)
        return MobilityTap(self.netns, local_ips)

    def fileno(self) -> int:
        return self.switch.fileno()

    def drain_events(self) -> bool:
        """True when the switch (re)connected or went away (after a restart
        of OVS its flows are gone, and a pass puts them back), or when a
        flow of ours was deleted by someone else: a removal the switch
        reports that is not the echo of a delete of ours from the last
        ``ECHO_SECONDS``: one per MAC flow we deleted, any of a network we
        removed. What they say waits in :meth:`take_changes`."""
        if not self.switch.drain():
            return False
        changes = self.switch.changes
        concerned = changes != self._seen_changes
        if concerned:
            self._changes.lose("the switch connected again")
        self._seen_changes = changes
        now = self.clock()
        self._expected = {k: until for k, until in self._expected.items() if until >= now}
        for value, mac in self.switch.removed():
            vni = fl.vni_of(value)
            if (vni, None) in self._expected:
                continue
            if self._expected.pop((vni, mac), None) is None:
                concerned = True
                net = self._nets.get(vni)
                if mac is None or net is None or not net.name:
                    self._changes.lose(f"a flow of ours (transit VNI {vni}) was deleted")
                else:
                    self._changes.macs.add((net.name, mac))
        return concerned

    def take_changes(self) -> Changes:
        """What changed behind the agent's back since the last call."""
        changes, self._changes = self._changes, Changes()
        return changes

    def _expect_removed(self, vni: int, mac: str | None) -> None:
        self._expected[(vni, mac)] = self.clock() + self.ECHO_SECONDS

    def close(self) -> None:
        self.switch.close()
        self.bridge.close()

    def __enter__(self) -> "OpenFlowBackend":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _reason(failed: dict[int, str], owner: list, op: Op) -> str:
    for i, o in enumerate(owner):
        if o is op and i in failed:
            return failed[i]
    return next(iter(failed.values()))


def describe(op: Op) -> str:
    if isinstance(op, NetworkOp):
        return f"{op.action} network {op.network.name!r} (transit VNI {op.network.transit_vni})"
    e = op.entry
    if isinstance(op, FloodOp):
        return f"{op.action} flood {e.network} {e.side} {e.vtep}"
    return f"{op.action} {e.network} {e.mac} at {e.side} {e.vtep}"

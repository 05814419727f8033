"""Pure flow builders: the gateway's pipeline as OpenFlow 1.4 messages.

Every function returns messages (os-ken parser objects) and does nothing
else, in the style of faucet's ``valve_of``; the backend sends them in
bundles. Names say what a flow does in the gateway's words, as Neutron's
``br_tun`` does. The pipeline, on one bridge with one flow-based VXLAN port
(``remote_ip=flow local_ip=flow key=flow``) serving both sides:

table 0, ADMIT
    the ingress filter (``[gateway] ingress_filter``, state.Admission):
    ``in_port=vxlan, tun_dst=LOCAL_IP, tun_src=SOURCE`` goes on to
    CLASSIFY for every admitted source of the side whose address LOCAL_IP
    is (the site's known VTEPs; the peer gateways); any other source to
    that address is counted by the side's drop flow, whose ``learn``
    writes a flow per offender (outer source) into OFFENDERS, where its
    counter counts what that offender sent (idle 300 s; the OFFENDERS
    table holds at most 4096, evicting the oldest: ovsdb.py). Without a
    filter, one flow passes everything on.
table 1, CLASSIFY
    ``in_port=vxlan, tun_id=VNI, tun_dst=LOCAL_IP`` (one flow per network
    and side) loads the network (its transit VNI) into ``reg0`` and the
    ingress side into ``reg1``; anything else is dropped by the table miss
    (``fail_mode=secure``: nothing is forwarded that we did not say).
table 2, GUARD
    no MAC hijack across clouds (``[gateway] mac_guard``, state.guards):
    ``reg0=NET, reg1=SIDE, eth_src=MAC`` (a flow per guard, under cookie
    :data:`GUARD_BASE`) sends a frame whose source MAC may not come from
    that side to HIJACKS; for a mobile MAC, flows of higher priority that
    also match ``tun_src`` let its candidates' VTEPs on that side go on.
    Everything else goes on to MOBILITY.
table 3, MOBILITY
    the watch on mobile MACs. With ``[openflow] mobility_evidence =
    packet-in`` (gwagent.openflow.evidence) a watch ``(VNI, MAC,
    exclude)`` is a flow ``tun_id=VNI, eth_src=MAC`` that copies the
    frame's first 64 bytes to the controller and goes on to UNICAST, under
    flows of higher priority for the excluded outer sources (the MAC's
    current place) that only go on; every packet-in passes the controller
    meter (``OFPM_CONTROLLER``, 100 packets/s, burst 25: a flood loses its
    copies, never its forwarding). By default (``tap``) the evidence comes
    from the BPF tap on the underlay (gwagent.dataplane.capture), as on
    Linux, and the table only passes everything on.

    Chosen by measurement (bench/test_openflow.py, ``-k mobility``; one OVS,
    userspace datapath, GARPs from a peer, medians of 40 and of 12 rounds
    interleaved, two runs on a busy 2-core machine):

    =====================================  ==========  ==========  ==========
    GARP sent ->                           BPF tap     packet-in   ``learn``
    =====================================  ==========  ==========  ==========
    evidence in the agent's hands          0.24 ms     1.7-2.3 ms  -
    (kernel receive stamp)                 0.03 ms     -           -
    traffic forwarded to the new place     4.4-12 ms   9.5-12 ms   500 ms
    =====================================  ==========  ==========  ==========

    The tap sees the frame in the kernel before OVS does; a packet-in
    crosses OVS's upcall, its main thread, TCP and os-ken's parser. The
    move itself (one flow-mod in a bundle, 3-9 ms) dominates both, so the
    tap stays the default and packet-in is the option for datapaths whose
    underlay the kernel never sees (DPDK, offloaded NICs), where it is the
    only evidence, with no 4096-instruction filter limit. A packet-in
    watch also misses frames for a few milliseconds after a watch change,
    until OVS's revalidators carry it into the datapath's flow cache (14
    of 40 GARPs sent right after the change were missed; the BPF filter
    swaps atomically).

    ``learn`` (the switch rewriting the MAC's flow itself, as Neutron's
    br-tun does) was measured and rejected: OVS does not revalidate the
    datapath's cached flows on a learned change, so traffic follows only
    at the next periodic revalidation (``max-revalidator``, 500 ms); and
    a learned move has no sequence number, no damping (a flapping MAC
    flaps the switch), is limited to the candidates only by one flow per
    candidate, needs a resubmit table (a learned flow carries no goto),
    and writes a flow the planner owns, so the next pass would undo it
    unless the agent heard of the move anyway (a packet-in: "both").
table 4, UNICAST
    ``reg0=NET, eth_dst=MAC`` (one flow per MAC) loads the MAC's side into
    ``reg2`` and its VTEP into ``tun_dst``; the per-network default sends
    floods and unknown unicast to the other side's flood group.
table 5, EGRESS
    ``reg1 == reg2`` (ingress side is the MAC's side) drops, as a Linux
    bridge never sends a frame back out of the port it came in by; else
    the side's VNI (VNI translation) and local address are set and the
    frame leaves by the VXLAN port.
table 6, OFFENDERS
    the offenders' flows that ADMIT learns (drop, counted).
table 7, HIJACKS
    a flow per side counts what GUARD sends here, and its ``learn`` writes
    a flow per (network, side, MAC) claimed into HIJACKERS.
table 8, HIJACKERS
    the learned flows (drop), whose counters count what each MAC's claims
    sent after the switch learned it (idle 300 s, at most 4096: ovsdb.py).
groups
    one ``ALL`` group per network and side, a bucket per VTEP (head-end
    replication), each bucket setting the tunnel's key, source and
    destination.

Every flow carries a cookie of :data:`COOKIE_BASE` with the kind and the
network in its low bits, so the backend observes and deletes only what is
its own (:data:`COOKIE_MASK`), never a foreign flow. Every flow but the
watches carries ``send_flow_rem``: a flow of ours that someone deletes is
reported by the switch (``OFPT_FLOW_REMOVED``, reason delete) and the agent
repairs it at once, as the Linux backend does from netlink events. A flow
modified in place, or a group changed behind our back, has no such event
and is repaired by the next resync.
"""
from __future__ import annotations

import ipaddress
import socket
import struct
from typing import NamedTuple

from os_ken.ofproto import ofproto_v1_4 as ofp
from os_ken.ofproto import ofproto_v1_4_parser as parser

from gwagent.dataplane.capture import Evidence
from gwagent.state import SITE, TRANSIT, FloodEntry, MacEntry, NetworkSpec

ADMIT, CLASSIFY, GUARD, MOBILITY, UNICAST, EGRESS, OFFENDERS, HIJACKS, HIJACKERS = range(9)
TABLES = (ADMIT, CLASSIFY, GUARD, MOBILITY, UNICAST, EGRESS, OFFENDERS, HIJACKS, HIJACKERS)

COOKIE_BASE = 0x67776100 << 32        # "gwa\0"
COOKIE_MASK = 0xFFFFFFFF << 32
#: The guards' flows (one per MAC of the world) are ours under a base of
#: their own, so that a pass's dump of COOKIE_BASE leaves them out: they
#: are read by an audit (gwagent.dataplane.AuditedSet).
GUARD_BASE = 0x67776147 << 32         # "gwaG"
OWNED_MASK = 0xFFFFFF00 << 32         # "gwa" and any fourth byte: everything of ours
K_PIPELINE, K_NETWORK, K_MAC, K_WATCH, K_ADMIT, K_OFFENDER = 1, 2, 3, 4, 5, 6  # bits 24-31
K_HIJACK, K_HIJACKER = 7, 8

SIDE_BIT = {SITE: 0, TRANSIT: 1}
SIDE_OF = {0: SITE, 1: TRANSIT}

P_DEFAULT, P_NET, P_MAC, P_HAIRPIN = 1, 10, 100, 200
P_WATCH, P_WATCH_EXCLUDE = 100, 110
P_ADMIT, P_ADMIT_DROP, P_OFFENDER = 100, 10, 10
P_GUARD, P_GUARD_SOURCE, P_HIJACK, P_HIJACKER = 10, 20, 1, 10
#: seconds an offender's flow in OFFENDERS (a hijacker's in HIJACKERS) lives
#: after its last packet
OFFENDER_IDLE = 300

#: How much of an evidence frame the switch sends to the controller: the
#: inner Ethernet header is all the evidence needs (the tunnel fields come
#: in the packet-in's match), and a GARP whole is 42 bytes.
EVIDENCE_LEN = 64


class Dp(NamedTuple):
    """What os-ken's message classes need of a datapath to serialise."""

    ofproto: object = ofp
    ofproto_parser: object = parser


DP = Dp()


def cookie(kind: int, vni: int = 0) -> int:
    return COOKIE_BASE | (kind << 24) | vni


def kind_of(value: int) -> int:
    return (value >> 24) & 0xFF


def vni_of(value: int) -> int:
    return value & 0xFFFFFF


def group_id(vni: int, side: str) -> int:
    """Stable per network and side (a transit VNI has 24 bits)."""
    return (vni << 1) | SIDE_BIT[side]


def group_key(gid: int) -> tuple[int, str]:
    return gid >> 1, SIDE_OF[gid & 1]


def _flow(table: int, priority: int, match, instructions, value: int,
          command=ofp.OFPFC_ADD, removal: bool = True):
    """One flow of ours. ``removal``: the switch tells the controller when
    anyone deletes it (``OFPFF_SEND_FLOW_REM``; a replace by an add of the
    same match does not count), so the backend repairs a flow deleted
    behind its back at once instead of at the next resync."""
    return parser.OFPFlowMod(DP, cookie=value, cookie_mask=0, table_id=table,
                             command=command, priority=priority, buffer_id=ofp.OFP_NO_BUFFER,
                             out_port=ofp.OFPP_ANY, out_group=ofp.OFPG_ANY,
                             flags=ofp.OFPFF_SEND_FLOW_REM if removal else 0, match=match,
                             instructions=instructions)


def _apply(*actions, goto: int | None = None):
    out = [parser.OFPInstructionActions(ofp.OFPIT_APPLY_ACTIONS, list(actions))] if actions \
        else []
    if goto is not None:
        out.append(parser.OFPInstructionGotoTable(goto))
    return out


def _tunnel(vni: int, local_ip: str, port: int):
    # Every frame came in by the one VXLAN port (CLASSIFY matches it), and
    # OpenFlow drops an output to the input port unless it says IN_PORT.
    return [parser.OFPActionSetField(tunnel_id=vni),
            parser.OFPActionSetField(tun_ipv4_src=local_ip),
            parser.OFPActionOutput(ofp.OFPP_IN_PORT)]


# -- the fixed part of the pipeline ----------------------------------------

def pipeline() -> list:
    """Flows every gateway has: pass through ADMIT (what the filter does
    not drop) and MOBILITY, drop hairpins."""
    value = cookie(K_PIPELINE)
    out = [_flow(ADMIT, P_DEFAULT, parser.OFPMatch(), _apply(goto=CLASSIFY), value),
           _flow(GUARD, P_DEFAULT, parser.OFPMatch(), _apply(goto=MOBILITY), value),
           _flow(MOBILITY, P_DEFAULT, parser.OFPMatch(), _apply(goto=UNICAST), value)]
    for bit in (0, 1):
        out.append(_flow(EGRESS, P_HAIRPIN, parser.OFPMatch(reg1=bit, reg2=bit), [], value))
        learn = parser.NXActionLearn(
            table_id=HIJACKERS, priority=P_HIJACKER, idle_timeout=OFFENDER_IDLE,
            cookie=cookie(K_HIJACKER, bit),
            specs=[parser.NXFlowSpecMatch(src=(field, 0), dst=(field, 0), n_bits=bits)
                   for field, bits in (("reg0", 32), ("reg1", 32), ("eth_src", 48))])
        out.append(_flow(HIJACKS, P_HIJACK, parser.OFPMatch(reg1=bit),
                         _apply(learn, goto=HIJACKERS), cookie(K_HIJACK, bit), removal=False))
    return out


# -- one network -------------------------------------------------------------

def network_flows(net: NetworkSpec, port: int) -> list:
    """A network's classify, flood-default and egress flows (an add
    overwrites a flow of the same match and priority: ensure is idempotent)."""
    value = cookie(K_NETWORK, net.transit_vni)
    out = []
    for side in (SITE, TRANSIT):
        seg, bit = net.segment(side), SIDE_BIT[side]
        other = TRANSIT if side == SITE else SITE
        out.append(_flow(CLASSIFY, P_NET, parser.OFPMatch(
            in_port=port, tunnel_id=seg.vni, tun_ipv4_dst=seg.local_ip),
            _apply(parser.OFPActionSetField(reg0=net.transit_vni),
                   parser.OFPActionSetField(reg1=bit), goto=GUARD), value))
        out.append(_flow(UNICAST, P_NET, parser.OFPMatch(reg0=net.transit_vni, reg1=bit),
                         _apply(parser.OFPActionGroup(group_id(net.transit_vni, other))),
                         value))
        out.append(_flow(EGRESS, P_NET, parser.OFPMatch(reg0=net.transit_vni, reg2=bit),
                         _apply(*_tunnel(seg.vni, seg.local_ip, port)), value))
    return out


def group(net: NetworkSpec, side: str, vteps, port: int, command: int):
    """The flood group of one side: a bucket per VTEP, in a stable order."""
    seg = net.segment(side)
    buckets = [parser.OFPBucket(actions=[parser.OFPActionSetField(tun_ipv4_dst=vtep)]
                                + _tunnel(seg.vni, seg.local_ip, port))
               for vtep in sorted(vteps, key=ipaddress.IPv4Address)]
    return parser.OFPGroupMod(DP, command=command, type_=ofp.OFPGT_ALL,
                              group_id=group_id(net.transit_vni, side), buckets=buckets)


def delete_group(vni: int, side: str):
    return parser.OFPGroupMod(DP, command=ofp.OFPGC_DELETE, type_=ofp.OFPGT_ALL,
                              group_id=group_id(vni, side), buckets=[])


def delete_network(vni: int) -> list:
    """Every flow of one network, by cookie (any kind, and its guards'),
    and its groups."""
    del_flows = parser.OFPFlowMod(
        DP, cookie=cookie(0, vni), cookie_mask=COOKIE_MASK | 0xFFFFFF, table_id=ofp.OFPTT_ALL,
        command=ofp.OFPFC_DELETE, out_port=ofp.OFPP_ANY, out_group=ofp.OFPG_ANY,
        match=parser.OFPMatch())
    del_guards = parser.OFPFlowMod(
        DP, cookie=guard_cookie(vni), cookie_mask=COOKIE_MASK | 0xFFFFFFFF,
        table_id=ofp.OFPTT_ALL, command=ofp.OFPFC_DELETE, out_port=ofp.OFPP_ANY,
        out_group=ofp.OFPG_ANY, match=parser.OFPMatch())
    return [del_flows, del_guards, delete_group(vni, SITE), delete_group(vni, TRANSIT)]


# -- MACs -----------------------------------------------------------------

def mac_flow(entry: MacEntry, vni: int):
    """Put one MAC at its side and VTEP (an add over the old flow of the
    same match is a move in one message: no flood window)."""
    return _flow(UNICAST, P_MAC, parser.OFPMatch(reg0=vni, eth_dst=entry.mac),
                 _apply(parser.OFPActionSetField(reg2=SIDE_BIT[entry.side]),
                        parser.OFPActionSetField(tun_ipv4_dst=entry.vtep), goto=EGRESS),
                 cookie(K_MAC, vni))


def delete_mac(mac: str, vni: int):
    return parser.OFPFlowMod(
        DP, cookie=cookie(K_MAC, vni), cookie_mask=COOKIE_MASK | 0xFFFFFFFF,
        table_id=UNICAST, command=ofp.OFPFC_DELETE_STRICT, priority=P_MAC,
        out_port=ofp.OFPP_ANY, out_group=ofp.OFPG_ANY,
        match=parser.OFPMatch(reg0=vni, eth_dst=mac))


def delete_all() -> list:
    """Every flow and group of ours (groups: ours are the only groups on
    the gateway's own bridge)."""
    return [parser.OFPFlowMod(DP, cookie=COOKIE_BASE, cookie_mask=OWNED_MASK,
                              table_id=ofp.OFPTT_ALL, command=ofp.OFPFC_DELETE,
                              out_port=ofp.OFPP_ANY, out_group=ofp.OFPG_ANY,
                              match=parser.OFPMatch()),
            parser.OFPGroupMod(DP, command=ofp.OFPGC_DELETE, type_=ofp.OFPGT_ALL,
                               group_id=ofp.OFPG_ALL, buckets=[])]


# -- the ingress filter --------------------------------------------------------

def admit_flow(side: str, local_ip: str, source: str, port: int):
    """VXLAN from ``source`` to the gateway's ``local_ip`` goes on."""
    return _flow(ADMIT, P_ADMIT, parser.OFPMatch(in_port=port, tun_ipv4_dst=local_ip,
                                                 tun_ipv4_src=source),
                 _apply(goto=CLASSIFY), cookie(K_ADMIT, SIDE_BIT[side]), removal=False)


def admit_drop_flow(side: str, local_ip: str, port: int):
    """Anything else to ``local_ip``: counted here, and per offender by
    the flow this one's ``learn`` writes into OFFENDERS (which drops)."""
    learn = parser.NXActionLearn(
        table_id=OFFENDERS, priority=P_OFFENDER, idle_timeout=OFFENDER_IDLE,
        cookie=cookie(K_OFFENDER, SIDE_BIT[side]),
        specs=[parser.NXFlowSpecMatch(src=("tun_ipv4_dst", 0), dst=("tun_ipv4_dst", 0),
                                      n_bits=32),
               parser.NXFlowSpecMatch(src=("tun_ipv4_src", 0), dst=("tun_ipv4_src", 0),
                                      n_bits=32)])
    return _flow(ADMIT, P_ADMIT_DROP, parser.OFPMatch(in_port=port, tun_ipv4_dst=local_ip),
                 _apply(learn, goto=OFFENDERS), cookie(K_ADMIT, SIDE_BIT[side]),
                 removal=False)


def delete_admit_flow(side: str, local_ip: str, source: str | None, port: int):
    """One admit flow (``source``), or the side's drop flow (None)."""
    match = (parser.OFPMatch(in_port=port, tun_ipv4_dst=local_ip, tun_ipv4_src=source)
             if source else parser.OFPMatch(in_port=port, tun_ipv4_dst=local_ip))
    return parser.OFPFlowMod(
        DP, cookie=cookie(K_ADMIT, SIDE_BIT[side]), cookie_mask=COOKIE_MASK | 0xFFFFFFFF,
        table_id=ADMIT, command=ofp.OFPFC_DELETE_STRICT,
        priority=P_ADMIT if source else P_ADMIT_DROP, out_port=ofp.OFPP_ANY,
        out_group=ofp.OFPG_ANY, match=match)


def delete_filter() -> list:
    """Every flow of the filter: the admits, the drops, the offenders'."""
    return [parser.OFPFlowMod(DP, cookie=cookie(kind), cookie_mask=COOKIE_MASK | 0xFF << 24,
                              table_id=ofp.OFPTT_ALL, command=ofp.OFPFC_DELETE,
                              out_port=ofp.OFPP_ANY, out_group=ofp.OFPG_ANY,
                              match=parser.OFPMatch())
            for kind in (K_ADMIT, K_OFFENDER)]


# -- mobility evidence (packet-in) ------------------------------------------

def watch_flows(watches) -> list:
    """Table MOBILITY for the watches ``(vni, mac, exclude)`` that the
    mobility worker asks of a tap (gwagent.dataplane.capture.Watch): a frame
    whose tunnel key is ``vni`` and inner source ``mac`` is copied to the
    controller (its first :data:`EVIDENCE_LEN` bytes, through the
    controller meter) and goes on to UNICAST; from an excluded outer source
    (the MAC's current place, a suppressed rogue) it only goes on. The
    same evidence as the tap's BPF filter: any frame, not only ARP."""
    value = cookie(K_WATCH)
    out = []
    for vni, mac, exclude in watches:
        mac = mac.lower()
        out.append(_flow(MOBILITY, P_WATCH, parser.OFPMatch(tunnel_id=vni, eth_src=mac),
                         _apply(parser.OFPActionOutput(ofp.OFPP_CONTROLLER, EVIDENCE_LEN),
                                goto=UNICAST), value, removal=False))
        for src in sorted(set(exclude)):
            out.append(_flow(MOBILITY, P_WATCH_EXCLUDE, parser.OFPMatch(
                tunnel_id=vni, eth_src=mac, tun_ipv4_src=src), _apply(goto=UNICAST), value,
                removal=False))
    return out


def delete_watches():
    """Every watch flow (any network): a watch list is replaced whole."""
    return parser.OFPFlowMod(DP, cookie=cookie(K_WATCH), cookie_mask=COOKIE_MASK | 0xFF << 24,
                             table_id=MOBILITY, command=ofp.OFPFC_DELETE,
                             out_port=ofp.OFPP_ANY, out_group=ofp.OFPG_ANY,
                             match=parser.OFPMatch())


def evidence_meter(rate: int, burst: int, command=ofp.OFPMC_ADD):
    """The controller meter (``OFPM_CONTROLLER``): OVS runs every
    packet-in through it, in a clone of the packet, so a frame over the
    rate loses its copy to the controller, never its forwarding (a meter
    instruction on the watch flow would drop the frame itself)."""
    return parser.OFPMeterMod(DP, command=command, flags=ofp.OFPMF_PKTPS | ofp.OFPMF_BURST,
                              meter_id=ofp.OFPM_CONTROLLER,
                              bands=[parser.OFPMeterBandDrop(rate=rate, burst_size=burst)])


def evidence_of(msg, at: float) -> Evidence | None:
    """Pure: a packet-in read as the tap's evidence (the VNI and outer
    addresses from its match, the inner source MAC and ethertype from its
    data, ``at`` when the agent got it); None unless a watch flow's."""
    if kind_of(msg.cookie) != K_WATCH or msg.cookie & COOKIE_MASK != COOKIE_BASE:
        return None
    data, match = bytes(msg.data), msg.match
    if len(data) < 14:
        return None
    try:
        vni, src, dst = match["tunnel_id"], match["tun_ipv4_src"], match["tun_ipv4_dst"]
    except KeyError:
        return None
    return Evidence(vni, data[6:12].hex(":"), src, dst, at, data[12:14] == b"\x08\x06")


# -- reading flows back -------------------------------------------------------

def flood_entries(name: str, gid: int, buckets) -> set[FloodEntry]:
    _, side = group_key(gid)
    out = set()
    for bucket in buckets:
        for action in bucket.actions:
            if getattr(action, "key", None) == "tun_ipv4_dst":
                out.add(FloodEntry(name, side, action.value))
    return out


def actions_of(stats) -> dict[str, object]:
    """The set-field values and outputs of a flow's apply-actions."""
    out: dict[str, object] = {}
    for inst in stats.instructions:
        for action in getattr(inst, "actions", ()):
            if isinstance(action, parser.OFPActionSetField):
                out[action.key] = action.value
            elif isinstance(action, parser.OFPActionOutput):
                out["output"] = action.port
            elif isinstance(action, parser.OFPActionGroup):
                out["group"] = action.group_id
        if isinstance(inst, parser.OFPInstructionGotoTable):
            out["goto"] = inst.table_id
    return out


# -- the bulk path -----------------------------------------------------------

BUNDLE_FLAGS = ofp.OFPBF_ATOMIC | ofp.OFPBF_ORDERED


_XID, _BUNDLE = 0x0BADCAFE, 0x0D15EA5E


def _template(msg, needles: dict[str, bytes], expect: tuple[str, ...], formats: dict):
    """``msg`` wrapped in a bundle add and serialised once with placeholder
    values, cut at every placeholder: (the fixed pieces, the placeholders'
    order, one ``struct`` pack of pieces and values, the size). The order is
    checked against ``expect``, so a change in os-ken's layout fails loudly."""
    wrapped = parser.OFPBundleAddMsg(DP, _BUNDLE, BUNDLE_FLAGS, msg, [])
    wrapped.set_xid(_XID)
    wrapped.serialize()
    buf = bytes(wrapped.buf)
    needles = {"xid": _XID.to_bytes(4, "big"), "bundle": _BUNDLE.to_bytes(4, "big"), **needles}
    cuts = []
    for name, needle in needles.items():
        at = buf.find(needle)
        while at >= 0:
            cuts.append((at, name, len(needle)))
            at = buf.find(needle, at + 1)
    cuts.sort()
    pieces, order, start = [], [], 0
    for at, name, size in cuts:
        pieces.append(buf[start:at])
        order.append(name)
        start = at + size
    pieces.append(buf[start:])
    if tuple(order) != expect:
        raise RuntimeError(f"os-ken's bundle-add layout changed: placeholders in the order "
                           f"{order}, {expect} expected")
    fmt = ">" + "".join(f"{len(piece)}s{formats[name]}"
                        for piece, name in zip(pieces, order)) + f"{len(pieces[-1])}s"
    return pieces, tuple(order), struct.Struct(fmt).pack, len(buf)


class MacFlowBytes:
    """``mac_flow()`` already wrapped in a bundle add, as bytes, by patching
    one template that os-ken serialised: os-ken takes about 240 us to build
    and serialise one such message here (100k flows: 24 s, where
    ``ovs-ofctl --bundle`` takes a few), a patch a few microseconds. The
    template is checked to hold each placeholder exactly where the patch
    writes, so a change in os-ken's layout fails loudly, never silently.

    :meth:`encode_many` packs a run of them with one precompiled
    ``struct`` per side (the template's fixed pieces and the four values in
    one C call a message): 100k messages in 0.23 s against 0.67 s by
    :meth:`encode` one at a time (side by side, loaded machine)."""

    #: the placeholders in the order the template holds them (checked)
    ORDER = ("xid", "bundle", "xid", "mac", "ip")
    _FORMAT = {"xid": "I", "bundle": "I", "mac": "6s", "ip": "4s"}

    MAC, IP = "02:de:ad:be:ef:01", "203.0.113.77"

    def __init__(self, vni: int):
        self.vni = vni
        self._pieces = {}
        self._ips: dict[str, bytes] = {}
        self._structs = {}
        for side in (SITE, TRANSIT):
            pieces, order, pack, size = _template(
                mac_flow(MacEntry("", self.MAC, side, self.IP), vni),
                {"mac": bytes.fromhex(self.MAC.replace(":", "")),
                 "ip": ipaddress.IPv4Address(self.IP).packed}, self.ORDER, self._FORMAT)
            self._pieces[side] = (pieces, order)
            self._structs[side] = (pack, pieces)
            self.size = size

    def message(self, entry: MacEntry):
        return mac_flow(entry, self.vni)

    def encode(self, entry: MacEntry, xid: int, bundle_id: int) -> bytes:
        pieces, order = self._pieces[entry.side]
        ip = self._ips.get(entry.vtep)
        if ip is None:
            ip = self._ips[entry.vtep] = socket.inet_aton(entry.vtep)
        values = {"xid": xid.to_bytes(4, "big"), "bundle": bundle_id.to_bytes(4, "big"),
                  "mac": bytes.fromhex(entry.mac.replace(":", "")), "ip": ip}
        out = [pieces[0]]
        for name, piece in zip(order, pieces[1:]):
            out.append(values[name])
            out.append(piece)
        return b"".join(out)

    def encode_many(self, entries, xid: int, bundle_id: int) -> bytes:
        """``encode(entries[i], xid + i, bundle_id)`` for every entry, joined."""
        structs, ips, out = self._structs, self._ips, []
        append, fromhex, aton = out.append, bytes.fromhex, socket.inet_aton
        for entry in entries:
            pack, (p0, p1, p2, p3, p4, p5) = structs[entry.side]
            ip = ips.get(entry.vtep)
            if ip is None:
                ip = ips[entry.vtep] = aton(entry.vtep)
            append(pack(p0, xid, p1, bundle_id, p2, xid, p3,
                        fromhex(entry.mac.replace(":", "")), p4, ip, p5))
            xid += 1
        return b"".join(out)


class Prebuilt:
    """One message of a bundle that encodes itself (the bulk path: a
    MacFlowBytes or GuardFlowBytes and its entry), with the os-ken message
    it stands for (for models of the switch and logs)."""

    __slots__ = ("encoder", "entry")

    def __init__(self, encoder, entry):
        self.encoder, self.entry = encoder, entry

    def encode(self, xid: int, bundle_id: int) -> bytes:
        return self.encoder.encode(self.entry, xid, bundle_id)

    def flow_mod(self, xid: int) -> bytes:
        """The bare flow-mod, outside any bundle (the bundle add's message)."""
        return self.encoder.encode(self.entry, xid, 0)[16:]

    def message(self):
        return self.encoder.message(self.entry)


# -- the MAC guard ---------------------------------------------------------------

def guard_cookie(vni: int) -> int:
    return GUARD_BASE | vni


def guard_flows(vni: int, side: str, mac: str, sources=()) -> list:
    """A guard (state.Guard) of network ``vni``: frames from ``side`` with
    source ``mac`` go to HIJACKS, those from ``sources`` (its candidates'
    VTEPs there) on to MOBILITY."""
    bit, value = SIDE_BIT[side], guard_cookie(vni)
    out = [_flow(GUARD, P_GUARD, parser.OFPMatch(reg0=vni, reg1=bit, eth_src=mac),
                 _apply(goto=HIJACKS), value, removal=False)]
    out += [_flow(GUARD, P_GUARD_SOURCE,
                  parser.OFPMatch(reg0=vni, reg1=bit, eth_src=mac, tun_ipv4_src=src),
                  _apply(goto=MOBILITY), value, removal=False) for src in sources]
    return out


def delete_guards():
    """Every guard's flow (the guards' cookie base)."""
    return parser.OFPFlowMod(
        DP, cookie=GUARD_BASE, cookie_mask=COOKIE_MASK, table_id=GUARD,
        command=ofp.OFPFC_DELETE, out_port=ofp.OFPP_ANY, out_group=ofp.OFPG_ANY,
        match=parser.OFPMatch())


def delete_guard(vni: int, side: str, mac: str):
    """A guard's flows, its sources' with it (a loose delete)."""
    return parser.OFPFlowMod(
        DP, cookie=guard_cookie(vni), cookie_mask=COOKIE_MASK | 0xFFFFFFFF, table_id=GUARD,
        command=ofp.OFPFC_DELETE, out_port=ofp.OFPP_ANY, out_group=ofp.OFPG_ANY,
        match=parser.OFPMatch(reg0=vni, reg1=SIDE_BIT[side], eth_src=mac))


class GuardFlowBytes:
    """The bulk path of the guards without sources (all but a mobile MAC's):
    ``guard_flows(vni, side, mac)`` as bytes patched from a template, as
    :class:`MacFlowBytes` does (os-ken built and encoded 100,000 of them in
    16.5 s). Its entries are the guards (state.Guard)."""

    ORDER = ("xid", "bundle", "xid", "mac")
    _FORMAT = {"xid": "I", "bundle": "I", "mac": "6s"}
    MAC = MacFlowBytes.MAC

    def __init__(self, vni: int):
        self.vni = vni
        self._structs = {}
        for side in (SITE, TRANSIT):
            pieces, _, pack, self.size = _template(
                guard_flows(vni, side, self.MAC)[0],
                {"mac": bytes.fromhex(self.MAC.replace(":", ""))}, self.ORDER, self._FORMAT)
            self._structs[side] = (pack, pieces)

    def message(self, guard):
        return guard_flows(self.vni, guard.side, guard.mac)[0]

    def encode(self, guard, xid: int, bundle_id: int) -> bytes:
        return self.encode_many([guard], xid, bundle_id)

    def encode_many(self, guards, xid: int, bundle_id: int) -> bytes:
        structs, out, fromhex = self._structs, [], bytes.fromhex
        for g in guards:
            pack, (p0, p1, p2, p3, p4) = structs[g.side]
            out.append(pack(p0, xid, p1, bundle_id, p2, xid, p3,
                            fromhex(g.mac.replace(":", "")), p4))
            xid += 1
        return b"".join(out)

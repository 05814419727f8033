"""The OpenFlow compiler on a model of a switch that forwards.

:class:`FakeSwitch` behaves as OVS does with our messages, not as a call
recorder: flows keyed by table, priority and match (an add over the same
key replaces it), strict and cookie-masked deletes, groups that must exist
to be modified and must not to be added, bundles that land whole or not at
all, and ``forward``, which walks a frame through the tables (highest
priority match first, registers and tunnel fields set by the actions) to
the tunnels it leaves by. After applying a plan, a frame's path must reach
the right VTEP with the right VNI.
"""
from __future__ import annotations

import dataclasses
import random

from os_ken.ofproto import ofproto_parser
from os_ken.ofproto import ofproto_v1_4 as ofp
from os_ken.ofproto import ofproto_v1_4_parser as parser

from gwagent.control.planner import plan
from gwagent.model import Desired, Gateway, Site
from gwagent.openflow import flows as fl
from gwagent.openflow.backend import OpenFlowBackend
from gwagent.state import (SITE, TRANSIT, Location, MacEntry, MacOp, MobileSpec, admission,
                           desired_dataplane, guards)

from builders import endpoint, site

PORT = 7


class Stat:
    def __init__(self, table_id, priority, cookie, match, instructions, flags=0):
        self.table_id, self.priority, self.cookie = table_id, priority, cookie
        self.match, self.instructions, self.flags = match, instructions, flags
        self.packet_count = 0


class Group:
    def __init__(self, group_id, buckets):
        self.group_id, self.buckets = group_id, buckets


class PacketIn:
    """What OVS sends for a CONTROLLER output: the flow's cookie, the
    pipeline fields in the match, the frame cut at max_len."""

    def __init__(self, cookie, match, data):
        self.cookie, self.match, self.data = cookie, match, data


class FakeSwitch:
    """Flows, groups and meters as OVS keeps them: a bundle lands whole or
    not at all; a deleted flow with ``send_flow_rem`` is reported (by its
    cookie and MAC), whoever deleted it."""

    connects = 1
    changes = 1

    def wait_connected(self, timeout=None):
        return self

    def __init__(self):
        self.flows: dict[tuple, Stat] = {}
        self.groups: dict[int, Group] = {}
        self.meters: dict[int, tuple] = {}
        self.listeners: list = []
        self.reported: list = []
        self.add(parser.OFPFlowMod(fl.DP, cookie=0x1234, table_id=20, priority=5,
                                   match=parser.OFPMatch(), instructions=[]))

    @staticmethod
    def _key(msg):
        return (msg.table_id, msg.priority, tuple(sorted(msg.match.iteritems())))

    def add(self, msg):
        self.flows[self._key(msg)] = Stat(msg.table_id, msg.priority, msg.cookie, msg.match,
                                          msg.instructions, msg.flags)

    def delete_by_hand(self, **match):
        """Another controller's or ``ovs-ofctl del-flows``'s delete."""
        for key, stat in list(self.flows.items()):
            if all(stat.match.get(k) == v for k, v in match.items()):
                self._removed(self.flows.pop(key), self.reported)

    @staticmethod
    def _removed(stat, out):
        if stat.flags & ofp.OFPFF_SEND_FLOW_REM:
            out.append((stat.cookie, stat.match.get("eth_dst")))

    def drain(self):
        return bool(self.reported)

    def removed(self):
        out, self.reported = self.reported, []
        return out

    def _apply(self, msg, flows, groups, removed):
        if isinstance(msg, parser.OFPGroupMod):
            if msg.command == ofp.OFPGC_ADD:
                if msg.group_id in groups:
                    raise ValueError("group exists")
                groups[msg.group_id] = Group(msg.group_id, msg.buckets)
            elif msg.command == ofp.OFPGC_MODIFY:
                if msg.group_id not in groups:
                    raise ValueError("unknown group")
                groups[msg.group_id] = Group(msg.group_id, msg.buckets)
            else:
                groups.pop(msg.group_id, None)
            return
        if msg.command == ofp.OFPFC_ADD:   # a replace reports no removal
            flows[self._key(msg)] = Stat(msg.table_id, msg.priority, msg.cookie, msg.match,
                                         msg.instructions, msg.flags)
        elif msg.command == ofp.OFPFC_DELETE_STRICT:
            stat = flows.get(self._key(msg))
            if stat is not None and stat.cookie & msg.cookie_mask == msg.cookie & msg.cookie_mask:
                self._removed(flows.pop(self._key(msg)), removed)
        else:
            for key, stat in list(flows.items()):   # loose: any flow the match covers
                if ((msg.table_id == ofp.OFPTT_ALL or stat.table_id == msg.table_id)
                        and stat.cookie & msg.cookie_mask == msg.cookie & msg.cookie_mask
                        and all(stat.match.get(k) == v for k, v in msg.match.iteritems())):
                    self._removed(flows.pop(key), removed)

    def request(self, msgs):
        errors = {}
        for i, msg in enumerate(msgs):
            if isinstance(msg, fl.Prebuilt):   # a bare flow-mod (a move): applied alone
                inner = msg.flow_mod(1)
                msg = ofproto_parser.msg(fl.DP, *ofproto_parser.header(inner), inner)
                try:
                    self._apply(msg, self.flows, self.groups, self.reported)
                except ValueError as exc:
                    errors[i] = str(exc)
                continue
            assert isinstance(msg, parser.OFPMeterMod)
            if msg.command == ofp.OFPMC_ADD and msg.meter_id in self.meters:
                errors[i] = "meter exists"
            elif msg.command == ofp.OFPMC_MODIFY and msg.meter_id not in self.meters:
                errors[i] = "unknown meter"
            else:
                self.meters[msg.meter_id] = tuple((b.rate, b.burst_size) for b in msg.bands)
        return errors

    def listen(self, listener):
        self.listeners.append(listener)

    def unlisten(self, listener):
        self.listeners.remove(listener)

    def bundle(self, msgs):
        flows, groups, removed = dict(self.flows), dict(self.groups), []
        for i, msg in enumerate(msgs):
            if isinstance(msg, fl.Prebuilt):   # the bulk path's bytes decode to this
                inner = msg.encode(1, 1)[16:]   # after the bundle-add header
                msg = ofproto_parser.msg(fl.DP, *ofproto_parser.header(inner), inner)
            try:
                self._apply(msg, flows, groups, removed)
            except ValueError as exc:
                return {j: str(exc) for j in range(len(msgs))}
        self.flows, self.groups = flows, groups
        self.reported.extend(removed)
        return {}

    def dump_flows(self, cookie, mask, table=ofp.OFPTT_ALL):
        return [s for s in self.flows.values() if s.cookie & mask == cookie & mask
                and table in (ofp.OFPTT_ALL, s.table_id)]

    def dump_groups(self):
        return list(self.groups.values())

    def forward(self, tun_id, tun_dst, eth_dst, eth_src="02:00:00:00:00:99",
                tun_src="198.18.9.9", ethertype=0x0800) -> set[tuple[int, str, str]]:
        """(VNI, outer source, outer destination) of every copy that leaves;
        a CONTROLLER output becomes a packet-in to the listeners (at most
        the meter's burst of them per call: the meter drops the copy, never
        the frame)."""
        fields = {"in_port": PORT, "tunnel_id": tun_id, "tun_ipv4_dst": tun_dst,
                  "tun_ipv4_src": tun_src, "eth_dst": eth_dst, "eth_src": eth_src,
                  "reg0": 0, "reg1": 0, "reg2": 0}
        frame = (bytes.fromhex(eth_dst.replace(":", "")) + bytes.fromhex(eth_src.replace(":", ""))
                 + ethertype.to_bytes(2, "big") + bytes(46))
        self._frame, self._sent = frame, 0
        return self._table(0, fields)

    def _table(self, table, fields) -> set:
        candidates = sorted((s for s in self.flows.values() if s.table_id == table),
                            key=lambda s: -s.priority)
        for stat in candidates:
            if all(fields.get(k) == v for k, v in stat.match.iteritems()):
                stat.packet_count += 1
                return self._run(stat, dict(fields))
        return set()  # table miss: dropped (fail_mode=secure)

    def _actions(self, actions, fields, stat=None) -> set:
        out = set()
        for action in actions:
            if isinstance(action, parser.OFPActionSetField):
                fields[action.key] = action.value
            elif isinstance(action, parser.OFPActionOutput) and \
                    action.port == ofp.OFPP_CONTROLLER:
                self._packet_in(stat, fields, action.max_len)
            elif isinstance(action, parser.OFPActionOutput):
                assert action.port == ofp.OFPP_IN_PORT
                out.add((fields["tunnel_id"], fields["tun_ipv4_src"], fields["tun_ipv4_dst"]))
            elif isinstance(action, parser.NXActionLearn):
                # a flow matching the learned fields' values of this frame,
                # no actions (drop), written before the frame goes on
                match = parser.OFPMatch(**{spec.dst[0]: fields[spec.src[0]]
                                           for spec in action.specs})
                learned = parser.OFPFlowMod(fl.DP, cookie=action.cookie,
                                            table_id=action.table_id,
                                            priority=action.priority, match=match,
                                            instructions=[])
                if self._key(learned) not in self.flows:
                    self.add(learned)
            elif isinstance(action, parser.OFPActionGroup):
                for bucket in self.groups[action.group_id].buckets:
                    out |= self._actions(bucket.actions, dict(fields))
        return out

    def _packet_in(self, stat, fields, max_len) -> None:
        meter = self.meters.get(ofp.OFPM_CONTROLLER)
        if meter is not None and self._sent >= meter[0][1]:
            return
        self._sent += 1
        match = {k: fields[k] for k in ("in_port", "tunnel_id", "tun_ipv4_src",
                                        "tun_ipv4_dst", "reg0", "reg1")}
        for listener in self.listeners:
            listener.packet_in(PacketIn(stat.cookie, match, self._frame[:max_len]), 1.0)

    def _run(self, stat, fields) -> set:
        out = set()
        for inst in stat.instructions:
            if isinstance(inst, parser.OFPInstructionActions):
                out |= self._actions(inst.actions, fields, stat)
            elif isinstance(inst, parser.OFPInstructionGotoTable):
                out |= self._table(inst.table_id, fields)
        return out


class FakeBridge:
    def __init__(self):
        self.names = {}

    def ensure(self):
        return PORT

    def ofport(self):
        return PORT

    def network_names(self):
        return dict(self.names)

    def set_network_name(self, vni, name):
        if name is None:
            self.names.pop(vni, None)
        else:
            self.names[vni] = name

    def close(self):
        pass


def backend():
    sw = FakeSwitch()
    return OpenFlowBackend(None, "", switch=sw, ovsdb_bridge=FakeBridge()), sw


def state(a_eps=(), b_eps=(), c_eps=None, nets=("red", "blue")):
    peers = [site("b", b_eps, nets)]
    if c_eps is not None:
        peers.append(site("c", c_eps, nets))
    return desired_dataplane(Desired(site("a", a_eps, nets), tuple(peers)))


def converge(be, desired):
    assert be.apply(plan(desired, be.observe())) == []
    assert be.observe() == desired
    assert plan(desired, be.observe()) == []


GW_SITE, GW_TRANSIT = "198.18.1.1", "198.18.200.1"


def test_a_frame_from_a_compute_reaches_the_peer_gateway_on_the_transit_vni():
    a1, b2, c6 = endpoint("a", "red", 1), endpoint("b", "red", 2), endpoint("c", "red", 6)
    be, sw = backend()
    converge(be, state([a1], [b2], c_eps=[c6]))
    assert sw.forward(1001, GW_SITE, b2.mac) == {(5001, GW_TRANSIT, "198.18.200.2")}
    assert sw.forward(1001, GW_SITE, c6.mac) == {(5001, GW_TRANSIT, "198.18.200.3")}
    # from a peer to a local VM: the site's VNI, toward its compute
    assert sw.forward(5001, GW_TRANSIT, a1.mac) == {(1001, GW_SITE, a1.vtep)}
    # broadcast from a compute: every peer; from a peer: every local VTEP
    assert sw.forward(1001, GW_SITE, "ff:ff:ff:ff:ff:ff") == {
        (5001, GW_TRANSIT, "198.18.200.2"), (5001, GW_TRANSIT, "198.18.200.3")}
    assert sw.forward(5001, GW_TRANSIT, "ff:ff:ff:ff:ff:ff") == {(1001, GW_SITE, a1.vtep)}
    # a frame never goes back to the side it came from, and another VNI is dropped
    assert sw.forward(1001, GW_SITE, a1.mac) == set()
    assert sw.forward(4242, GW_SITE, b2.mac) == set()
    # blue knows no b2: unknown unicast floods to the peers, on blue's transit VNI
    assert sw.forward(1002, GW_SITE, b2.mac) == {
        (5002, GW_TRANSIT, "198.18.200.2"), (5002, GW_TRANSIT, "198.18.200.3")}


def test_a_random_walk_always_converges_and_foreign_flows_stay():
    rng = random.Random(11)
    pool = {s: [endpoint(s, net, n, compute=rng.randint(1, 3)) for net in ("red", "blue")
                for n in range(1, 10)] for s in "abc"}
    be, sw = backend()
    for _ in range(30):
        pick = {s: rng.sample(pool[s], rng.randint(0, 7)) for s in "abc"}
        nets = ("red", "blue") if rng.random() < .8 else ("red",)
        converge(be, state(pick["a"], pick["b"], pick["c"] if rng.random() < .5 else None,
                           nets=nets))
    assert any(s.cookie == 0x1234 for s in sw.flows.values())


def test_a_move_is_one_flow_add_and_frames_follow_it():
    old = state([endpoint("a", "red", 1, compute=1)], [endpoint("b", "red", 2)])
    new = state([endpoint("a", "red", 1, compute=2)], [endpoint("b", "red", 2)])
    be, sw = backend()
    converge(be, old)
    ops = plan(new, be.observe())
    assert [op.action for op in ops] == ["set", "add", "delete"]  # the MAC; its VTEP's flood
    converge(be, new)
    mac = endpoint("a", "red", 1).mac
    assert sw.forward(5001, GW_TRANSIT, mac) == {(1001, GW_SITE, "198.18.1.12")}


def test_a_mobile_macs_move_is_one_flow_mod_outside_a_bundle_and_frames_follow():
    old = state([endpoint("a", "red", 1, compute=1)], [endpoint("b", "red", 2)])
    be, sw = backend()
    converge(be, old)
    before = be.observe()
    entry = next(e for e in before.macs if e.mac == endpoint("a", "red", 1).mac)
    moved = MacEntry(entry.network, entry.mac, entry.side, "198.18.1.12")
    sw.bundle = None   # a move never opens a bundle
    assert be.move([MacOp("set", moved, entry)]) == []
    assert sw.forward(5001, GW_TRANSIT, entry.mac) == {(1001, GW_SITE, "198.18.1.12")}
    after = be.observe()   # that MAC moved, and nothing else changed
    assert after.macs == (before.macs - {entry}) | {moved}
    assert (after.networks, after.floods) == (before.networks, before.floods)


def test_a_run_of_mac_flows_packs_to_the_per_message_patch_and_decodes():
    encoder = fl.MacFlowBytes(5001)
    entries = [MacEntry("red", f"02:00:00:00:{i:02x}:01", (SITE, TRANSIT)[i % 2],
                        f"198.18.1.{10 + i % 3}") for i in range(7)]
    packed = encoder.encode_many(entries, 100, 9)
    assert packed == b"".join(encoder.encode(e, 100 + i, 9) for i, e in enumerate(entries))
    for i, e in enumerate(entries):
        one = packed[i * encoder.size:(i + 1) * encoder.size]
        inner = one[16:]
        msg = ofproto_parser.msg(fl.DP, *ofproto_parser.header(inner), inner)
        want = fl.mac_flow(e, 5001)
        assert (msg.xid, msg.match["eth_dst"], fl.actions_of(msg)) == (
            100 + i, e.mac, fl.actions_of(want))
        assert fl.Prebuilt(encoder, e).flow_mod(100 + i) == inner


def test_a_refused_bundle_leaves_the_network_as_it_was():
    desired = state([endpoint("a", "red", 1)], [endpoint("b", "red", 2)], nets=("red",))
    be, sw = backend()
    ops = plan(desired, be.observe())
    be._groups.add(fl.group_id(5001, "site"))   # a stale belief: modify of a missing group
    errors = be.apply(ops)
    assert errors and not [s for s in sw.flows.values() if fl.kind_of(s.cookie) != 0]
    converge(be, desired)


def test_every_flow_of_ours_carries_the_cookie():
    be, sw = backend()
    converge(be, state([endpoint("a", "red", 1)], [endpoint("b", "red", 2)]))
    ours = [s for s in sw.flows.values() if s.cookie != 0x1234]
    assert ours and all(s.cookie & fl.COOKIE_MASK == fl.COOKIE_BASE for s in ours)


def test_a_flow_of_ours_deleted_by_someone_else_wakes_the_agent_but_our_own_deletes_do_not():
    a1, b2 = endpoint("a", "red", 1), endpoint("b", "red", 2)
    now = [100.0]
    sw = FakeSwitch()
    be = OpenFlowBackend(None, "", switch=sw, ovsdb_bridge=FakeBridge(), clock=lambda: now[0])
    converge(be, state([a1], [b2]))
    assert be.drain_events() is False
    # our own changes: a MAC withdrawn, a network removed (all its flows)
    converge(be, state([a1], [], nets=("red", "blue")))
    converge(be, state([a1], [], nets=("red",)))
    assert sw.reported and be.drain_events() is False
    # someone deletes a MAC flow of ours: the agent must look at once
    sw.delete_by_hand(eth_dst=a1.mac)
    assert be.drain_events() is True
    converge(be, state([a1], [], nets=("red",)))
    assert sw.forward(5001, GW_TRANSIT, a1.mac) == {(1001, GW_SITE, a1.vtep)}
    # right after our own delete of a MAC, someone else's delete of it still
    # counts (each delete of ours has one echo); and long after, too
    converge(be, state([], [], nets=("red",)))
    converge(be, state([a1], [], nets=("red",)))
    sw.delete_by_hand(eth_dst=a1.mac)
    assert be.drain_events() is True
    converge(be, state([], [], nets=("red",)))
    now[0] += be.ECHO_SECONDS + 1
    converge(be, state([a1], [], nets=("red",)))
    be.drain_events()
    sw.delete_by_hand(eth_dst=a1.mac)
    assert be.drain_events() is True
    # a network's classify flow deleted by hand counts too
    converge(be, state([a1], [], nets=("red",)))
    sw.delete_by_hand(tunnel_id=1001)
    assert be.drain_events() is True


# -- mobility evidence by packet-in ------------------------------------------

VMAC = "02:00:5e:00:01:07"


def mobile_world():
    """A gateway whose red network has a peer gateway's MAC, with a
    packet-in tap watching the mobile MAC ``VMAC`` (now at 198.18.200.2)."""
    from gwagent.openflow.evidence import PacketInTap
    b2 = endpoint("b", "red", 2)
    be, sw = backend()
    be.desired = state([endpoint("a", "red", 1)], [b2], nets=("red",))
    converge(be, be.desired)
    be.evidence = "packet-in"
    tap = be.tap([GW_SITE, GW_TRANSIT])
    assert isinstance(tap, PacketInTap)
    return be, sw, tap, b2


def test_a_watched_mac_from_a_new_place_is_evidence_and_still_forwarded():
    be, sw, tap, b2 = mobile_world()
    tap.watch([(5001, VMAC, ("198.18.200.2",))])
    # a GARP from the mobile MAC behind another peer gateway
    out = sw.forward(5001, GW_TRANSIT, "ff:ff:ff:ff:ff:ff", eth_src=VMAC,
                     tun_src="198.18.200.3", ethertype=0x0806)
    assert out == {(1001, GW_SITE, "198.18.1.11")}          # flooded to the site as before
    [ev] = tap.read()
    assert (ev.vni, ev.mac, ev.src, ev.dst, ev.arp) == (5001, VMAC, "198.18.200.3",
                                                        GW_TRANSIT, True)
    # any frame is evidence (as on the BPF tap), but not from the current place
    sw.forward(5001, GW_TRANSIT, "02:00:00:00:00:01", eth_src=VMAC, tun_src="198.18.200.2")
    assert tap.read() == []
    sw.forward(5001, GW_TRANSIT, "02:00:00:00:00:01", eth_src=VMAC, tun_src="198.18.200.3")
    assert [e.arp for e in tap.read()] == [False]
    # another VNI, another MAC: nothing
    sw.forward(1001, GW_SITE, "ff:ff:ff:ff:ff:ff", eth_src=VMAC, tun_src="198.18.1.11")
    sw.forward(5001, GW_TRANSIT, "ff:ff:ff:ff:ff:ff", eth_src=b2.mac, tun_src="198.18.200.3")
    assert tap.read() == []


def test_watches_are_replaced_whole_and_queued_evidence_is_checked_again():
    be, sw, tap, _ = mobile_world()
    tap.watch([(5001, VMAC, ()), (1001, VMAC, ())])
    sw.forward(5001, GW_TRANSIT, "ff:ff:ff:ff:ff:ff", eth_src=VMAC, tun_src="198.18.200.3")
    tap.watch([(1001, VMAC, ())])       # queued above under the old list: no longer evidence
    assert tap.read() == []
    watch_flows = [s for s in sw.flows.values() if fl.kind_of(s.cookie) == fl.K_WATCH]
    assert {s.match["tunnel_id"] for s in watch_flows} == {1001}
    tap.watch([])
    assert not [s for s in sw.flows.values() if fl.kind_of(s.cookie) == fl.K_WATCH]
    # and the pipeline is whole: a pass has nothing to do
    assert be.observe() == be.desired and plan(be.desired, be.observe()) == []


def test_the_controller_meter_bounds_packet_ins_never_forwarding():
    be, sw, tap, _ = mobile_world()
    assert sw.meters[ofp.OFPM_CONTROLLER] == ((100, 25),)
    tap.watch([(5001, VMAC, ())])
    sw.meters[ofp.OFPM_CONTROLLER] = ((100, 0),)   # a meter with nothing left
    out = sw.forward(5001, GW_TRANSIT, "ff:ff:ff:ff:ff:ff", eth_src=VMAC,
                     tun_src="198.18.200.3")
    assert out and tap.read() == []


def test_a_reconnected_switch_gets_its_meter_and_watches_back():
    be, sw, tap, _ = mobile_world()
    tap.watch([(5001, VMAC, ())])
    sw.flows = {k: v for k, v in sw.flows.items() if fl.kind_of(v.cookie) != fl.K_WATCH}
    sw.meters.clear()                    # OVS restarted: flows and meters gone
    tap.connected()
    assert tap.read() == []              # the read re-installs
    assert ofp.OFPM_CONTROLLER in sw.meters
    sw.forward(5001, GW_TRANSIT, "ff:ff:ff:ff:ff:ff", eth_src=VMAC, tun_src="198.18.200.3")
    assert len(tap.read()) == 1
    tap.close()
    assert sw.listeners == []


def test_the_default_tap_is_the_bpf_tap_and_packet_in_is_an_option():
    import pytest
    be, _ = backend()
    assert be.evidence == "tap"
    with pytest.raises(ValueError, match="mobility evidence"):
        OpenFlowBackend(None, "", switch=FakeSwitch(), ovsdb_bridge=FakeBridge(),
                        evidence="learn")


def test_a_packet_in_of_another_flow_is_no_evidence():
    msg = PacketIn(fl.cookie(fl.K_MAC, 5001), {"tunnel_id": 5001, "tun_ipv4_src": "1.2.3.4",
                                               "tun_ipv4_dst": "5.6.7.8"}, bytes(60))
    assert fl.evidence_of(msg, 0.0) is None
    msg.cookie = fl.cookie(fl.K_WATCH)
    assert fl.evidence_of(msg, 2.5).at == 2.5


def test_the_ingress_filter_passes_admitted_sources_only_and_counts_the_rest():
    a1, a2 = endpoint("a", "red", 1), endpoint("a", "red", 2, compute=2)
    b1 = endpoint("b", "red", 21)
    desired = Desired(site("a", [a1, a2]), (site("b", [b1]),))
    be, sw = backend()
    assert be.apply(plan(desired_dataplane(desired), be.observe())) == []
    # without a filter, anyone's frame goes through
    assert sw.forward(5001, GW_TRANSIT, a1.mac, tun_src="198.18.200.99") == {
        (1001, GW_SITE, a1.vtep)}
    adm = admission(desired)
    assert adm.site_sources == {a1.vtep, a2.vtep} and adm.transit_sources == {"198.18.200.2"}
    be.admit(adm)
    assert sw.forward(5001, GW_TRANSIT, a1.mac, tun_src="198.18.200.2") == {
        (1001, GW_SITE, a1.vtep)}
    assert sw.forward(1001, GW_SITE, b1.mac, tun_src=a2.vtep) == {
        (5001, GW_TRANSIT, "198.18.200.2")}
    for _ in range(3):
        assert sw.forward(5001, GW_TRANSIT, a1.mac, tun_src="198.18.200.99") == set()
    assert sw.forward(1001, GW_SITE, b1.mac, tun_src="198.18.1.99") == set()
    counters = be.admit(adm)   # nothing to change: the counters
    assert counters.dropped == {TRANSIT: 3, SITE: 1}
    # per offender, by the flows the side's drop learned (this model writes
    # a learned flow before the frame goes on, so it counts the first too)
    assert counters.offenders == {TRANSIT: {"198.18.200.99": 3}, SITE: {"198.18.1.99": 1}}
    # a new compute is admitted, a gone one is not; the drops' flows stay
    a3 = endpoint("a", "red", 3, compute=3)
    moved = Desired(site("a", [a1, a3]), (site("b", [b1]),))
    before = len(sw.flows)
    be.admit(admission(moved))
    assert len(sw.flows) == before
    assert sw.forward(1001, GW_SITE, b1.mac, tun_src=a3.vtep) != set()
    assert sw.forward(1001, GW_SITE, b1.mac, tun_src=a2.vtep) == set()
    assert be.admit(admission(moved)).dropped[SITE] == 2
    # off: every flow of the filter goes, learned ones too; anyone passes again
    be.admit(None)
    assert not [st for st in sw.flows.values()
                if fl.kind_of(st.cookie) in (fl.K_ADMIT, fl.K_OFFENDER)]
    assert sw.forward(5001, GW_TRANSIT, a1.mac, tun_src="198.18.200.99") != set()
    # the known VTEPs of a site's source are admitted with no endpoint on them
    known = Desired(dataclasses.replace(site("a", [a1]), vteps=("198.18.1.30",)),
                    (site("b", [b1]),))
    assert admission(known).site_sources == {a1.vtep, "198.18.1.30"}
    assert admission(known, frozenset({"198.18.200.7"})).transit_sources == {
        "198.18.200.2", "198.18.200.7"}


def test_one_address_for_both_sides_admits_either_sides_sources_without_churn():
    a1, b1 = endpoint("a", "red", 1), endpoint("b", "red", 21)
    one = Site("a", Gateway("gw-a", "198.18.1.1", "198.18.1.1"))
    desired = Desired(dataclasses.replace(site("a", [a1]), site=one), (site("b", [b1]),))
    adm = admission(desired)
    assert adm.site_sources == adm.transit_sources == {a1.vtep, "198.18.200.2"}
    be, sw = backend()
    be.admit(adm)
    before = dict(sw.flows)
    be.admit(adm)   # nothing to change: no flow replaced (its counters stay)
    assert sw.flows.keys() == before.keys() and all(sw.flows[k] is v for k, v in before.items())


# -- the MAC guard ------------------------------------------------------------------

def test_the_mac_guard_drops_claims_of_the_other_sides_macs_and_lets_candidates_through():
    """A peer gateway sending an endpoint of this site's MAC, or a compute
    a remote endpoint's, is dropped and counted; a mobile MAC passes from
    its candidates' VTEPs only (on OpenFlow, per source), and a move
    changes no guard."""
    a1, b2, c6 = endpoint("a", "red", 1), endpoint("b", "red", 2), endpoint("c", "red", 6)
    clock = [0.0]
    sw = FakeSwitch()
    be = OpenFlowBackend(None, "", switch=sw, ovsdb_bridge=FakeBridge(), clock=lambda: clock[0])
    static = state([a1], [b2], c_eps=[c6], nets=("red",))
    converge(be, static)
    vmac = "02:00:5e:00:01:07"
    mobile = {("red", vmac): MobileSpec("red", vmac, frozenset({
        Location(SITE, a1.vtep), Location(TRANSIT, "198.18.200.2")}), Location(SITE, a1.vtep))}
    want = guards(static, mobile)
    assert be.guard(want).dropped == {SITE: 0, TRANSIT: 0}

    def fwd(side, src, eth_src, dst="ff:ff:ff:ff:ff:ff"):
        vni, local = (1001, GW_SITE) if side == SITE else (5001, GW_TRANSIT)
        return sw.forward(vni, local, dst, eth_src=eth_src, tun_src=src)
    peer_b, peer_c = "198.18.200.2", "198.18.200.3"
    assert fwd(TRANSIT, peer_b, b2.mac) != set()          # a peer's own endpoint
    assert fwd(TRANSIT, peer_b, a1.mac) == set()          # one of this site's
    assert fwd(TRANSIT, peer_c, a1.mac) == set()
    assert fwd(SITE, a1.vtep, a1.mac) != set()
    assert fwd(SITE, a1.vtep, c6.mac) == set()            # a remote endpoint's, from a compute
    assert fwd(TRANSIT, peer_b, vmac) != set()            # the mobile MAC from its candidates
    assert fwd(SITE, a1.vtep, vmac) != set()
    assert fwd(TRANSIT, peer_c, vmac) == set()            # ... and from no one else
    assert fwd(SITE, "198.18.1.99", vmac) == set()
    counters = be.guard(want)
    assert counters.dropped == {TRANSIT: 3, SITE: 2}
    assert counters.macs == {TRANSIT: {("red", a1.mac): 2, ("red", vmac): 1},
                             SITE: {("red", c6.mac): 1, ("red", vmac): 1}}
    # nothing to change: no message; a guard gone goes alone, with its sources
    before = dict(sw.flows)
    be.guard(want)
    assert sw.flows == before
    fewer = want - {g for g in want if g.mac == vmac}
    be.guard(fewer)
    assert fwd(TRANSIT, peer_c, vmac) != set()
    assert fwd(TRANSIT, peer_b, a1.mac) == set()
    # a guard flow deleted by hand is put back by the next audit
    sw.delete_by_hand(eth_src=a1.mac)
    be.guard(fewer)
    assert fwd(TRANSIT, peer_b, a1.mac) != set()          # not yet: the audit is not due
    clock[0] += 61
    be.guard(fewer)
    assert fwd(TRANSIT, peer_b, a1.mac) == set()
    # off: no guard flow is left, and claims pass
    be.guard(None)
    assert not sw.dump_flows(fl.GUARD_BASE, fl.COOKIE_MASK)
    assert fwd(TRANSIT, peer_b, a1.mac) != set()


def test_guard_flows_pack_to_the_bytes_os_ken_makes_of_them():
    """The guards' bulk path writes exactly what os-ken would, per side."""
    from gwagent.state import Guard
    enc = fl.GuardFlowBytes(5001)
    run = [Guard("red", "fa:16:3e:00:00:01", SITE), Guard("red", "fa:16:3e:00:00:02", TRANSIT)]
    want = b""
    for xid, g in enumerate(run, start=7):
        msg = parser.OFPBundleAddMsg(fl.DP, 9, fl.BUNDLE_FLAGS,
                                     fl.guard_flows(5001, g.side, g.mac)[0], [])
        msg.set_xid(xid)
        msg.serialize()
        want += bytes(msg.buf)
    assert enc.encode_many(run, 7, 9) == want

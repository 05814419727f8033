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

import random

from os_ken.ofproto import ofproto_parser
from os_ken.ofproto import ofproto_v1_4 as ofp
from os_ken.ofproto import ofproto_v1_4_parser as parser

from gwagent.control.planner import plan
from gwagent.model import Desired
from gwagent.openflow import flows as fl
from gwagent.openflow.backend import OpenFlowBackend
from gwagent.state import desired_dataplane

from builders import endpoint, site

PORT = 7


class Stat:
    def __init__(self, table_id, priority, cookie, match, instructions):
        self.table_id, self.priority, self.cookie = table_id, priority, cookie
        self.match, self.instructions = match, instructions


class Group:
    def __init__(self, group_id, buckets):
        self.group_id, self.buckets = group_id, buckets


class FakeSwitch:
    connects = 1

    def wait_connected(self, timeout=None):
        return self

    def __init__(self):
        self.flows: dict[tuple, Stat] = {}
        self.groups: dict[int, Group] = {}
        self.add(parser.OFPFlowMod(fl.DP, cookie=0x1234, table_id=7, priority=5,
                                   match=parser.OFPMatch(), instructions=[]))

    @staticmethod
    def _key(msg):
        return (msg.table_id, msg.priority, tuple(sorted(msg.match.iteritems())))

    def add(self, msg):
        self.flows[self._key(msg)] = Stat(msg.table_id, msg.priority, msg.cookie, msg.match,
                                          msg.instructions)

    def _apply(self, msg, flows, groups):
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
        if msg.command == ofp.OFPFC_ADD:
            flows[self._key(msg)] = Stat(msg.table_id, msg.priority, msg.cookie, msg.match,
                                         msg.instructions)
        elif msg.command == ofp.OFPFC_DELETE_STRICT:
            stat = flows.get(self._key(msg))
            if stat is not None and stat.cookie & msg.cookie_mask == msg.cookie & msg.cookie_mask:
                del flows[self._key(msg)]
        else:
            for key, stat in list(flows.items()):
                if ((msg.table_id == ofp.OFPTT_ALL or stat.table_id == msg.table_id)
                        and stat.cookie & msg.cookie_mask == msg.cookie & msg.cookie_mask):
                    del flows[key]

    def bundle(self, msgs):
        flows, groups = dict(self.flows), dict(self.groups)
        for i, msg in enumerate(msgs):
            if isinstance(msg, fl.Prebuilt):   # the bulk path's bytes decode to this
                inner = msg.encode(1, 1)[16:]   # after the bundle-add header
                msg = ofproto_parser.msg(fl.DP, *ofproto_parser.header(inner), inner)
            try:
                self._apply(msg, flows, groups)
            except ValueError as exc:
                return {j: str(exc) for j in range(len(msgs))}
        self.flows, self.groups = flows, groups
        return {}

    def dump_flows(self, cookie, mask):
        return [s for s in self.flows.values() if s.cookie & mask == cookie & mask]

    def dump_groups(self):
        return list(self.groups.values())

    def forward(self, tun_id, tun_dst, eth_dst) -> set[tuple[int, str, str]]:
        """(VNI, outer source, outer destination) of every copy that leaves."""
        fields = {"in_port": PORT, "tunnel_id": tun_id, "tun_ipv4_dst": tun_dst,
                  "eth_dst": eth_dst, "reg0": 0, "reg1": 0, "reg2": 0}
        return self._table(0, fields)

    def _table(self, table, fields) -> set:
        candidates = sorted((s for s in self.flows.values() if s.table_id == table),
                            key=lambda s: -s.priority)
        for stat in candidates:
            if all(fields.get(k) == v for k, v in stat.match.iteritems()):
                return self._run(stat.instructions, dict(fields))
        return set()  # table miss: dropped (fail_mode=secure)

    def _actions(self, actions, fields) -> set:
        out = set()
        for action in actions:
            if isinstance(action, parser.OFPActionSetField):
                fields[action.key] = action.value
            elif isinstance(action, parser.OFPActionOutput):
                assert action.port == ofp.OFPP_IN_PORT
                out.add((fields["tunnel_id"], fields["tun_ipv4_src"], fields["tun_ipv4_dst"]))
            elif isinstance(action, parser.OFPActionGroup):
                for bucket in self.groups[action.group_id].buckets:
                    out |= self._actions(bucket.actions, dict(fields))
        return out

    def _run(self, instructions, fields) -> set:
        out = set()
        for inst in instructions:
            if isinstance(inst, parser.OFPInstructionActions):
                out |= self._actions(inst.actions, fields)
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

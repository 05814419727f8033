"""The OpenFlow backend against a real ovs-vswitchd (userspace datapath),
in throwaway namespaces: a gateway with OVS, a compute behind its site side
and a peer gateway behind its transit side, both Linux VXLAN devices.

Every test asserts what the switch holds (read back by observe() and, for
ownership, by ``ovs-ofctl``) or that packets cross; none looks at calls.
"""
from __future__ import annotations

import dataclasses
import secrets
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from pyroute2 import netns

from gwagent.control.planner import plan
from gwagent.lab import probe
from gwagent.lab.ovs import Ovs, missing
from gwagent.openflow import flows as fl
from gwagent.openflow.backend import OpenFlowBackend
from gwagent.state import (SITE, TRANSIT, Admission, FloodEntry, GatewayState, MacEntry,
                           NetworkOp, NetworkSpec, Segment)

from labs import wait_for

pytestmark = pytest.mark.functional

GW_SITE, GW_TRANSIT, COMPUTE, PEER = "198.18.1.1", "198.18.200.1", "198.18.1.11", "198.18.200.2"
RED = NetworkSpec(5001, "red", Segment(1001, GW_SITE), Segment(5001, GW_TRANSIT))


def sh(*argv):
    subprocess.run(argv, check=True, capture_output=True)


def mac_of(ns: str) -> str:
    out = subprocess.run(["ip", "-n", ns, "-br", "link", "show", "vx"], check=True,
                         capture_output=True, text=True).stdout
    return out.split()[2]


@pytest.fixture
def world(tmp_path):
    if missing():
        pytest.fail(f"the OpenFlow tests need {missing()}")
    p = f"gwq{secrets.token_hex(2)}-"
    gw, c, peer = p + "gw", p + "c", p + "p"
    for ns in (gw, c, peer):
        netns.create(ns)
        sh("ip", "-n", ns, "link", "set", "lo", "up")
    ovs = Ovs(gw, Path(tmp_path) / "ovs")
    try:
        for far, a, b, gw_ip, far_ip in ((c, p + "s", p + "s0", GW_SITE, COMPUTE),
                                         (peer, p + "t", p + "t0", GW_TRANSIT, PEER)):
            sh("ip", "link", "add", a, "type", "veth", "peer", "name", b)
            sh("ip", "link", "set", a, "netns", gw)
            sh("ip", "link", "set", b, "netns", far)
            sh("ip", "-n", gw, "link", "set", a, "up")
            sh("ip", "-n", far, "addr", "add", f"{far_ip}/24", "dev", b)
            sh("ip", "-n", far, "link", "set", b, "up")
            vni = 1001 if far == c else 5001
            sh("ip", "-n", far, "link", "add", "vx", "type", "vxlan", "id", str(vni), "local",
               far_ip, "remote", gw_ip, "dstport", "4789")
            sh("ip", "-n", far, "link", "set", "vx", "mtu", "1450", "up")
            sh("ip", "-n", far, "addr", "add", "10.9.0.1/24" if far == c else "10.9.0.2/24",
               "dev", "vx")
        ovs.start()
        ovs.attach_underlay(p + "us", p + "s", f"{GW_SITE}/24", (c, p + "s0"))
        ovs.attach_underlay(p + "ut", p + "t", f"{GW_TRANSIT}/24", (peer, p + "t0"))
        world = {"gw": gw, "c": c, "p": peer, "ovs": ovs, "prefix": p}
        world["desired"] = GatewayState(
            (RED,), frozenset({MacEntry("red", mac_of(c), SITE, COMPUTE),
                               MacEntry("red", mac_of(peer), TRANSIT, PEER)}),
            frozenset({FloodEntry("red", SITE, COMPUTE), FloodEntry("red", TRANSIT, PEER)}))
        yield world
    finally:
        ovs.stop()
        for ns in (gw, c, peer):
            if ns in netns.listnetns():
                netns.remove(ns)
        shutil.rmtree(tmp_path / "ovs", ignore_errors=True)


def backend_for(world) -> OpenFlowBackend:
    return OpenFlowBackend(world["gw"], world["ovs"].db_sock, "gwa-ovs", "gwa-vxlan", "netdev",
                           "127.0.0.1", 6653, timeout=10)


@pytest.fixture
def backend(world):
    be = backend_for(world)
    try:
        yield be
    finally:
        be.close()


def reconcile(be, desired) -> None:
    assert be.apply(plan(desired, be.observe())) == []


def crosses(world) -> bool:
    return probe.ping(world["c"], "10.9.0.2", attempts=1, timeout=0.5) is not None


def test_converges_and_traffic_crosses_with_vni_translation(world, backend):
    reconcile(backend, world["desired"])
    assert backend.observe() == world["desired"]
    assert plan(world["desired"], backend.observe()) == []
    wait_for(lambda: crosses(world), 10)


def test_the_ingress_filter_drops_what_is_not_admitted_and_counts_it_per_offender(world,
                                                                                 backend):
    """Real OVS: with the compute not admitted, its traffic stops and its
    drops are counted (the side's flow, the offender's learned flow);
    admitted again, it crosses; the filter off leaves no flow of it."""
    reconcile(backend, world["desired"])
    wait_for(lambda: crosses(world), 10)
    only_peer = Admission(GW_SITE, frozenset({"198.18.1.12"}), GW_TRANSIT, frozenset({PEER}))
    backend.admit(only_peer)
    wait_for(lambda: not crosses(world), 10)   # once OVS revalidated its cached flows
    for _ in range(5):
        crosses(world)

    def counted():
        """the compute's drops are counted by side and by offender"""
        c = backend.admit(only_peer)
        return c.dropped.get(SITE, 0) >= 5 and c.offenders.get(SITE, {}).get(COMPUTE) and c
    counters = wait_for(counted, 10, 0.2)
    assert counters.dropped.get(TRANSIT, 0) == 0
    backend.admit(dataclasses.replace(only_peer, site_sources=frozenset({COMPUTE})))
    wait_for(lambda: crosses(world), 10)
    backend.admit(None)
    mask = fl.COOKIE_MASK | 0xFF << 24
    for kind in (fl.K_ADMIT, fl.K_OFFENDER):
        flows = world["ovs"].ofctl("gwa-ovs", "dump-flows",
                                   f"cookie={fl.cookie(kind):#x}/{mask:#x}")
        assert "priority" not in flows, flows
    assert crosses(world)


def test_a_mac_moves_in_one_flow_and_a_network_goes_whole(world, backend):
    desired = world["desired"]
    reconcile(backend, desired)
    pmac = mac_of(world["p"])
    moved = GatewayState(desired.networks,
                         (desired.macs - {MacEntry("red", pmac, TRANSIT, PEER)})
                         | {MacEntry("red", pmac, TRANSIT, "198.18.200.3")}, desired.floods)
    ops = plan(moved, backend.observe())
    assert [op.action for op in ops] == ["set"]
    reconcile(backend, moved)
    assert backend.observe() == moved
    reconcile(backend, GatewayState())
    assert backend.observe() == GatewayState()
    ovs = world["ovs"]
    assert "reg0=" not in ovs.ofctl("gwa-ovs", "dump-flows")   # only the fixed pipeline
    assert "group_id" not in ovs.ofctl("gwa-ovs", "dump-groups")


def test_a_flow_deleted_behind_our_back_is_reported_and_our_own_deletes_are_not(world,
                                                                                 backend):
    desired = world["desired"]
    reconcile(backend, desired)
    backend.drain_events()
    # our own delete (the peer's MAC withdrawn) and its echo, then a replace
    pmac = mac_of(world["p"])
    fewer = GatewayState(desired.networks,
                         desired.macs - {MacEntry("red", pmac, TRANSIT, PEER)}, desired.floods)
    reconcile(backend, fewer)
    reconcile(backend, desired)
    ovs = world["ovs"]
    ovs.ofctl("gwa-ovs", "add-flow", "cookie=0x1234,table=20,priority=5,actions=drop")
    ovs.ofctl("gwa-ovs", "del-flows", "cookie=0x1234/-1")   # a foreign flow: not ours to see
    assert "send_flow_rem" in ovs.ofctl("gwa-ovs", "dump-flows", f"table={fl.UNICAST}")
    woke = []

    def only_echoes():
        """our own removals came back and were told from foreign ones"""
        woke.append(backend.drain_events())
        return len(woke) > 10
    wait_for(only_echoes, 5, 0.05)
    assert not any(woke)
    # someone deletes the peer's MAC flow: the switch says so, the agent looks
    ovs.ofctl("gwa-ovs", "del-flows", f"table={fl.UNICAST},reg0=5001,dl_dst={pmac}")
    wait_for(backend.drain_events, 5)
    reconcile(backend, desired)
    assert backend.observe() == desired


def test_foreign_flows_are_never_touched(world, backend):
    ovs = world["ovs"]
    ovs.ofctl("gwa-ovs", "add-flow", "cookie=0x1234,table=20,priority=5,actions=drop")
    reconcile(backend, world["desired"])
    reconcile(backend, GatewayState())
    flows = ovs.ofctl("gwa-ovs", "dump-flows")
    assert "cookie=0x1234" in flows and "table=7" in flows


def test_a_refused_message_leaves_its_network_untouched(world, backend, monkeypatch):
    # One message the switch refuses (a goto backwards, as a builder bug
    # would write); the network's bundle is atomic, so none of it lands.
    real = fl.mac_flow

    def bad(entry, vni):
        msg = real(entry, vni)
        msg.instructions[-1] = fl.parser.OFPInstructionGotoTable(fl.CLASSIFY)
        return msg
    monkeypatch.setattr(fl, "mac_flow", bad)
    backend._encoders.clear()                        # the bulk path's templates, too
    errors = backend.apply(plan(world["desired"], backend.observe()))
    assert errors and all("red" in e.error for e in errors)
    assert any("OpenFlow error" in e.error for e in errors)
    flows = world["ovs"].ofctl("gwa-ovs", "dump-flows")
    assert "reg0=0x1389" not in flows and "tun_id=0x3e9" not in flows
    assert "group_id" not in world["ovs"].ofctl("gwa-ovs", "dump-groups")
    monkeypatch.setattr(fl, "mac_flow", real)
    backend._encoders.clear()
    reconcile(backend, world["desired"])            # the next pass lands it whole
    assert backend.observe() == world["desired"]


def test_ovs_restart_under_traffic_is_repaired(world, backend):
    reconcile(backend, world["desired"])
    wait_for(lambda: crosses(world), 10)
    before = backend.switch.connects
    ovs = world["ovs"]
    ovs.stop_switch()
    started = time.monotonic()
    ovs.start_switch()
    wait_for(lambda: backend.switch.connects > before, 15)
    assert backend.drain_events() is True          # the agent is woken
    reconcile(backend, world["desired"])
    wait_for(lambda: crosses(world), 10)
    took = time.monotonic() - started
    print(f"OVS restart to traffic restored: {took:.2f} s")
    assert backend.observe() == world["desired"]


def test_controller_restart_keeps_flows_and_adopts_them(world):
    be = backend_for(world)
    try:
        reconcile(be, world["desired"])
    finally:
        be.close()
    wait_for(lambda: crosses(world), 10)            # fail_mode=secure: flows stay
    be = backend_for(world)
    try:
        observed = be.observe()
        assert observed == world["desired"]
        assert plan(world["desired"], observed) == []
    finally:
        be.close()


def test_network_ops_carry_the_vni_translation():
    msgs = fl.network_flows(RED, port=1)
    classify = [m for m in msgs if m.table_id == fl.CLASSIFY]
    assert {(m.match["tunnel_id"], m.match["tun_ipv4_dst"]) for m in classify} == {
        (1001, GW_SITE), (5001, GW_TRANSIT)}
    assert all(m.cookie >> 32 == fl.COOKIE_BASE >> 32 for m in msgs)
    assert NetworkOp("ensure", RED).key == ("network", 5001)


@pytest.mark.parametrize("evidence", ["tap", "packet-in"])
def test_a_garp_moves_a_mobile_mac_and_traffic_follows(tmp_path, evidence):
    """A VRRP virtual MAC at peer p1; a GARP from p2: the backend's tap
    (either kind) reports it, the mobility table moves it, one move in the
    backend, and frames to it arrive at p2 (raw frames: no ARP anywhere)."""
    import select

    from gwagent.control.mobility import MobilityTable
    from gwagent.state import Location, MacOp, MobileSpec
    from mobility_world import (GW_SITE as S, GW_TRANSIT as T, MOBILE, P1, P2, Arrivals,
                                Probes, garp, mobility_world, raw_socket)
    if missing():
        pytest.fail(f"the OpenFlow tests need {missing()}")
    with mobility_world(tmp_path, "gwq") as w:
        be = OpenFlowBackend(w["gw"], w["ovs"].db_sock, "gwa-ovs", "gwa-vxlan", "netdev",
                             "127.0.0.1", 6653, timeout=10, evidence=evidence)
        tap = sender = arrivals = probes = None
        try:
            at_p1 = MacEntry("red", MOBILE, TRANSIT, P1)
            desired = w["desired"]
            reconcile(be, GatewayState(desired.networks, desired.macs | {at_p1},
                                       desired.floods))
            table = MobilityTable()
            key = ("red", MOBILE)
            table.update({key: MobileSpec("red", MOBILE, frozenset(
                {Location(TRANSIT, P1), Location(TRANSIT, P2)}), Location(TRANSIT, P1))}, 0.0)
            tap = be.tap([S, T])
            [(_, exclude)] = table.watches()
            tap.watch([(5001, MOBILE, exclude)])
            sender, arrivals = raw_socket(w["p2"]), Arrivals(w["p2"])
            probes = Probes(w["c"], interval=0.001).start()

            def evidence_seen():
                """the GARP's evidence (sent again until seen: the first
                frames of a fresh path resolve neighbours)"""
                garp(sender)
                if select.select([tap], [], [], 0.2)[0]:
                    return [e for e in tap.read() if e.src == P2]
            [ev, *_] = wait_for(evidence_seen, 10)
            assert (ev.vni, ev.mac, ev.arp) == (5001, MOBILE, True)
            decision = table.claim(key, Location(TRANSIT, ev.src), 1.0)
            assert decision.outcome == "moved" and decision.seq == 1
            since = time.time()
            assert be.move([MacOp("set", MacEntry("red", MOBILE, TRANSIT, P2), at_p1)]) == []
            assert arrivals.first_after(since, 5) is not None
            assert MacEntry("red", MOBILE, TRANSIT, P2) in be.observe().macs
        finally:
            for thing in (probes,):
                if thing is not None:
                    thing.stop()
            for thing in (tap, sender, arrivals):
                if thing is not None:
                    thing.close()
            be.close()

"""The OpenFlow backend on a real ovs-vswitchd (userspace datapath).

Side by side in one run, on one OVS in a throwaway namespace:

* bulk install of 10k and 100k MAC flows: ours (the backend's atomic
  bundle, messages serialised by os-ken) vs ``ovs-ofctl --bundle add-flows``
  of the same flows from a file (target: ours >= 1.0x), and vs per-message
  os-ken (one flow-mod each, then a barrier; 10k);
* a cold reconcile of 100k remote endpoints over 10 networks (observe,
  plan, apply from an empty bridge) and a pass with nothing to change
  (observe + plan).

* the mobility path (``-k mobility``), on a gateway with a mobile MAC
  between two peers (tests/functional/mobility_world.py): GARP -> evidence
  in the agent's hands by the BPF tap and by packet-in, both watching the
  same GARP; and GARP -> the first probe at the new place by the agent's
  paths (tap, packet-in: evidence, claim, one move) and by OVS ``learn``
  flows, rounds interleaved. The choice and the figures are in
  gwagent/openflow/flows.py (table MOBILITY) and the README.

Each round checks its result (the switch holds exactly the flows asked
for). OVS restart to traffic restored is measured by the functional test
``test_ovs_restart_under_traffic_is_repaired`` (it needs traffic).
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from gwagent.control.planner import plan
from gwagent.lab.ovs import Ovs, missing
from gwagent.openflow import flows as fl
from gwagent.openflow.backend import OpenFlowBackend
from gwagent.state import GatewayState, MacEntry, NetworkSpec, Segment, desired_dataplane

from netns import throwaway_netns
from test_reconcile import build_desired

NET = NetworkSpec(5001, "net0", Segment(1001, "198.18.1.1"), Segment(5001, "198.18.200.1"))


def mac(i: int) -> str:
    return f"02:{(i >> 24) & 255:02x}:{(i >> 16) & 255:02x}:{(i >> 8) & 255:02x}:{i & 255:02x}:01"


@pytest.fixture(scope="module")
def ovs_backend(tmp_path_factory):
    if missing():
        pytest.fail(f"the OpenFlow benchmarks need {missing()}")
    with throwaway_netns("gwb-") as ns:
        rundir = tmp_path_factory.mktemp("ovs")
        ovs = Ovs(ns, rundir).start()
        try:
            be = OpenFlowBackend(ns, ovs.db_sock, "gwa-ovs", "gwa-vxlan", "netdev",
                                 "127.0.0.1", 6653, timeout=120)
            try:
                yield ovs, be
            finally:
                be.close()
        finally:
            ovs.stop()
            shutil.rmtree(rundir, ignore_errors=True)


def macs_state(n: int) -> GatewayState:
    return GatewayState((NET,), frozenset(MacEntry("net0", mac(i), "transit",
                                                   f"198.18.200.{2 + i % 50}")
                                          for i in range(n)))


def clear(be) -> None:
    """Our flows and groups deleted in one bundle first, then the rest by a
    pass on the empty bridge: an observe of 100k flows between rounds (os-ken
    parses about 10k flow stats a second) outlasted the 120 s timeout on a
    loaded machine."""
    assert be.switch.bundle(fl.delete_all()) == {}
    assert be.apply(plan(GatewayState(), be.observe())) == []


def count_mac_flows(ovs) -> int:
    return ovs.ofctl("gwa-ovs", "dump-flows", f"table={fl.UNICAST}").count("dl_dst=")


@pytest.mark.parametrize("size", [10_000, 100_000], ids=["10k", "100k"])
def test_bulk_install_ours_vs_ofctl_bundle(benchmark, ovs_backend, figures, size, tmp_path):
    ovs, be = ovs_backend
    desired = macs_state(size)

    def setup():
        clear(be)
        assert be.apply(plan(GatewayState((NET,)), be.observe())) == []
        return (), {}

    def ours():
        return be.apply([op for op in plan(desired, be.observe())])
    errors = benchmark.pedantic(ours, setup=setup, rounds=2, iterations=1)
    assert errors == [] and count_mac_flows(ovs) == size
    figures[f"of/ours/{size // 1000}k"] = {"seconds": benchmark.stats.stats.median,
                                           "entries": size}

    # The same flows for ovs-ofctl, in its own syntax.
    path = tmp_path / "flows.txt"
    cookie = fl.cookie(fl.K_MAC, NET.transit_vni)
    path.write_text("".join(
        f"cookie={cookie:#x},table={fl.UNICAST},priority={fl.P_MAC},reg0={NET.transit_vni},"
        f"dl_dst={e.mac},actions=set_field:1->reg2,set_field:{e.vtep}->tun_dst,"
        f"goto_table:{fl.EGRESS}\n" for e in desired.macs))
    times = []
    for _ in range(2):
        clear(be)
        start = time.perf_counter()
        ovs._run("ovs-ofctl", "-O", "OpenFlow14", "--bundle", "add-flows",
                 f"unix:{ovs.rundir / 'gwa-ovs.mgmt'}", str(path))
        times.append(time.perf_counter() - start)
        assert count_mac_flows(ovs) == size
    figures[f"of/ofctl-bundle/{size // 1000}k"] = {"seconds": sorted(times)[0],
                                                   "entries": size}


def test_bulk_install_per_message_os_ken_10k(benchmark, ovs_backend, figures):
    ovs, be = ovs_backend
    size = 10_000
    desired = macs_state(size)

    def setup():
        clear(be)
        return (), {}

    def per_message():
        dp = be.switch.wait_connected()
        for e in desired.macs:
            dp.send_msg(fl.mac_flow(e, NET.transit_vni))
        be.switch._wait(be.switch._send([fl.parser.OFPBarrierRequest(fl.DP)]), "barrier")
    benchmark.pedantic(per_message, setup=setup, rounds=1, iterations=1)
    assert count_mac_flows(ovs) == size
    figures["of/per-message/10k"] = {"seconds": benchmark.stats.stats.median, "entries": size}


@pytest.fixture(scope="module")
def desired_100k():
    return desired_dataplane(build_desired())


def test_cold_reconcile_100k_on_ovs(benchmark, ovs_backend, desired_100k, figures):
    ovs, be = ovs_backend

    def setup():
        clear(be)
        return (), {}

    def cold():
        return be.apply(plan(desired_100k, be.observe()))
    errors = benchmark.pedantic(cold, setup=setup, rounds=1, iterations=1)
    assert errors == []
    started = time.perf_counter()
    observed = be.observe()
    observe_s = time.perf_counter() - started
    assert observed == desired_100k
    figures["of/reconcile/cold"] = {"seconds": benchmark.stats.stats.median,
                                    "entries": len(desired_100k.macs),
                                    "endpoints": len(desired_100k.macs), "networks": 10,
                                    "observe_seconds": observe_s}


def test_idle_pass_100k_on_ovs(benchmark, ovs_backend, desired_100k, figures):
    ovs, be = ovs_backend
    if be.observe() != desired_100k:
        assert be.apply(plan(desired_100k, be.observe())) == []
    ops = benchmark.pedantic(lambda: plan(desired_100k, be.observe()), rounds=2, iterations=1)
    assert ops == []
    figures["of/reconcile/idle"] = {"seconds": benchmark.stats.stats.median,
                                    "entries": len(desired_100k.macs),
                                    "endpoints": len(desired_100k.macs), "networks": 10}


# -- the mobility path: BPF tap vs packet-in vs learn, side by side ----------------

def _median(values):
    values = sorted(v for v in values if v is not None)
    return values[len(values) // 2] if values else None


def _p90(values):
    values = sorted(v for v in values if v is not None)
    return values[min(len(values) - 1, int(len(values) * 0.9))] if values else None


def _summary(values) -> dict:
    got = [v for v in values if v is not None]
    return {"median_ms": _median(got), "p90_ms": _p90(got), "max_ms": max(got, default=None),
            "n": len(got), "lost": len(values) - len(got)}


@pytest.fixture(scope="module")
def mobility(tmp_path_factory):
    """A gateway on OVS with the mobile MAC between peers p1 and p2, both
    mobility taps, probes from the compute toward the mobile MAC."""
    if missing():
        pytest.fail(f"the OpenFlow benchmarks need {missing()}")
    from mobility_world import (MOBILE, P1, Arrivals, Probes, mobility_world, raw_socket)
    from gwagent.dataplane.capture import MobilityTap
    from gwagent.openflow.evidence import PacketInTap
    from gwagent.state import TRANSIT
    with mobility_world(tmp_path_factory.mktemp("mob"), "gwb-m") as w:
        be = OpenFlowBackend(w["gw"], w["ovs"].db_sock, "gwa-ovs", "gwa-vxlan", "netdev",
                             "127.0.0.1", 6653, timeout=10)
        taps = []
        try:
            d = w["desired"]
            d = GatewayState(d.networks, d.macs | {MacEntry("red", MOBILE, TRANSIT, P1)},
                             d.floods)
            assert be.apply(plan(d, be.observe())) == []
            taps = [MobilityTap(w["gw"], ["198.18.1.1", "198.18.200.1"]),
                    PacketInTap(be.switch)]
            senders = {"p1": raw_socket(w["p1"]), "p2": raw_socket(w["p2"])}
            arrivals = {"p1": Arrivals(w["p1"]), "p2": Arrivals(w["p2"])}
            probes = Probes(w["c"]).start()
            try:
                yield {"world": w, "be": be, "tap": taps[0], "packet-in": taps[1],
                       "send": senders, "arrive": arrivals, "where": ["p1"]}
            finally:
                probes.stop()
                for s in list(senders.values()) + list(arrivals.values()):
                    s.close()
        finally:
            for t in taps:
                t.close()
            be.close()


def _vtep(peer: str) -> str:
    from mobility_world import P1, P2
    return {"p1": P1, "p2": P2}[peer]


def _settled(ovs) -> None:
    """Wait until OVS's revalidators have carried the last flow change into
    the datapath's flow cache (a committed flow-mod changes the tables at
    once, the cached megaflows a little later)."""
    ovs._run("ovs-appctl", "revalidator/wait")


def _collect(tap, since: float, timeout: float = 2.0):
    """(read time, evidence) of the first evidence ``tap`` gives after ``since``."""
    import select
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        readable, _, _ = select.select([tap], [], [], max(0.0, deadline - time.monotonic()))
        if readable:
            for ev in tap.read():
                if ev.at >= since - 0.001:
                    return time.time(), ev
    return None, None


def test_mobility_evidence_tap_vs_packet_in(benchmark, mobility, figures):
    """The same GARP, seen by both taps at once: time from the GARP leaving a
    peer's VXLAN device to the evidence in the agent's hands (and, for the
    BPF tap, to the kernel's receive stamp)."""
    import threading
    from mobility_world import MOBILE, garp
    m = mobility
    got = {"tap": [], "tap-kernel": [], "packet-in": []}

    def series():
        garp(m["send"]["p2"])   # warm up: the first frames of a new path resolve neighbours
        garp(m["send"]["p1"])
        for i in range(40):
            peer = "p2" if i % 2 == 0 else "p1"
            exclude = (_vtep("p1" if peer == "p2" else "p2"),)
            for name in ("tap", "packet-in"):
                m[name].watch([(5001, MOBILE, exclude)])
            _settled(m["world"]["ovs"])
            out = {}

            def wait(name):
                out[name] = _collect(m[name], since)
            since = time.time()
            threads = [threading.Thread(target=wait, args=(n,)) for n in ("tap", "packet-in")]
            for t in threads:
                t.start()
            sent = garp(m["send"][peer])
            for t in threads:
                t.join()
            for name in ("tap", "packet-in"):
                at, ev = out[name]
                ok = ev is not None and ev.src == _vtep(peer)
                got[name].append((at - sent) * 1000 if ok else None)
                if name == "tap":
                    got["tap-kernel"].append((ev.at - sent) * 1000 if ok else None)
        for name in ("tap", "packet-in"):
            m[name].watch([])
    benchmark.pedantic(series, rounds=1, iterations=1)
    for name, values in got.items():
        figures[f"of/mobility/evidence/{name}"] = {"seconds": (_median(values) or 0) / 1000,
                                                   "entries": 1, **_summary(values)}
        print(f"evidence {name}: {_summary(values)}")
    assert all(_summary(v)["n"] >= 36 for v in got.values())


def _learn_flows(ovs, install: bool) -> None:
    """The learn variant, for the measurement only: per candidate a table
    MOBILITY flow that makes the switch write the MAC's place itself (as
    Neutron's br-tun learn flows), in a table LEARNED that the MAC's UNICAST
    flow resubmits to (a learned flow can carry actions but no goto)."""
    from mobility_world import MOBILE, P1, P2
    learned = max(fl.TABLES) + 1  # a table no flow of the agent's uses
    value = fl.cookie(0x7F, 0)  # a kind of its own
    if not install:
        ovs.ofctl("gwa-ovs", "del-flows", f"cookie={value:#x}/{fl.COOKIE_MASK | 0xFF << 24:#x}")
        return
    for src in (P1, P2):
        ovs.ofctl("gwa-ovs", "add-flow",
                  f"cookie={value:#x},table={fl.MOBILITY},priority=120,tun_id=5001,"
                  f"dl_src={MOBILE},tun_src={src},actions=learn(table={learned},priority=100,"
                  f"cookie={value:#x},NXM_NX_REG0[],NXM_OF_ETH_DST[]=NXM_OF_ETH_SRC[],"
                  f"load:NXM_NX_REG1[]->NXM_NX_REG2[],"
                  f"load:NXM_NX_TUN_IPV4_SRC[]->NXM_NX_TUN_IPV4_DST[]),"
                  f"goto_table:{fl.UNICAST}")
    ovs.ofctl("gwa-ovs", "add-flow", f"cookie={value:#x},table={fl.UNICAST},priority=150,"
                                     f"reg0=5001,dl_dst={MOBILE},actions=resubmit(,{learned}),"
                                     f"goto_table:{fl.EGRESS}")


def test_mobility_move_tap_vs_packet_in_vs_learn(benchmark, mobility, figures):
    """GARP -> the first probe (sent after it) arriving at the new place, for
    each path, rounds interleaved: the agent's paths (evidence, the mobility
    table's claim, one move through the backend) by the BPF tap and by
    packet-in, and the switch's own ``learn``."""
    import threading
    from gwagent.control.mobility import MobilityTable
    from gwagent.state import TRANSIT, Location, MacOp, MobileSpec
    from mobility_world import MOBILE, garp
    m = mobility
    be, ovs = m["be"], m["world"]["ovs"]
    spec = MobileSpec("red", MOBILE, frozenset({Location(TRANSIT, _vtep("p1")),
                                                Location(TRANSIT, _vtep("p2"))}))
    table = MobilityTable(max_moves=10_000, window=1.0)
    table.update({("red", MOBILE): spec}, time.monotonic())
    table.claim(("red", MOBILE), Location(TRANSIT, _vtep(m["where"][0])), time.monotonic())
    got = {"tap": [], "packet-in": [], "learn": []}
    moves = {"tap": [], "packet-in": []}

    def agent_round(name, peer):
        tap = m[name]
        current = m["where"][0]
        tap.watch([(5001, MOBILE, (_vtep(current),))])
        _settled(ovs)
        done = {}

        def worker():
            at, ev = _collect(tap, since)
            if ev is None:
                return
            key = ("red", ev.mac)
            decision = table.claim(key, Location(TRANSIT, ev.src), time.monotonic())
            if decision.outcome == "moved":
                start = time.perf_counter()
                errors = be.move([MacOp("set", MacEntry("red", ev.mac, TRANSIT, ev.src))])
                done["move_ms"] = (time.perf_counter() - start) * 1000
                done["errors"] = errors
        m["arrive"][peer].drain()
        since = time.time()
        thread = threading.Thread(target=worker)
        thread.start()
        sent = garp(m["send"][peer])
        first = m["arrive"][peer].first_after(sent, 2.0)
        thread.join()
        tap.watch([])
        assert done.get("errors") == []
        moves[name].append(done.get("move_ms"))
        return first, sent

    def learn_round(peer):
        m["arrive"][peer].drain()
        sent = garp(m["send"][peer])
        return m["arrive"][peer].first_after(sent, 2.0), sent

    def series():
        for i in range(36):
            name = ("tap", "packet-in", "learn")[i % 3]
            peer = "p2" if m["where"][0] == "p1" else "p1"
            if name == "learn":
                _learn_flows(ovs, True)
                _settled(ovs)
                first, sent = learn_round(peer)
                _learn_flows(ovs, False)
                # the agent's own flow goes where learn put it, as after a pass
                assert be.move([MacOp("set", MacEntry("red", MOBILE, TRANSIT,
                                                      _vtep(peer)))]) == []
                table.claim(("red", MOBILE), Location(TRANSIT, _vtep(peer)), time.monotonic())
            else:
                first, sent = agent_round(name, peer)
            got[name].append((first - sent) * 1000 if first else None)
            m["where"][0] = peer
    benchmark.pedantic(series, rounds=1, iterations=1)
    for name, values in got.items():
        extra = {"move_median_ms": _median(moves[name])} if name in moves else {}
        figures[f"of/mobility/move/{name}"] = {"seconds": (_median(values) or 0) / 1000,
                                               "entries": 1, **_summary(values), **extra}
        print(f"move {name}: {_summary(values)} {extra}")
    assert _summary(got["tap"])["n"] >= 10 and _summary(got["packet-in"])["n"] >= 10

"""The OpenFlow backend on a real ovs-vswitchd (userspace datapath).

Side by side in one run, on one OVS in a throwaway namespace:

* bulk install of 10k and 100k MAC flows: ours (the backend's atomic
  bundle, messages serialised by os-ken) vs ``ovs-ofctl --bundle add-flows``
  of the same flows from a file (target: ours >= 1.0x), and vs per-message
  os-ken (one flow-mod each, then a barrier; 10k);
* a cold reconcile of 100k remote endpoints over 10 networks (observe,
  plan, apply from an empty bridge) and a pass with nothing to change
  (observe + plan).

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
    assert be.apply(plan(GatewayState(), be.observe())) == []


def count_mac_flows(ovs) -> int:
    return ovs.ofctl("gwa-ovs", "dump-flows", "table=2").count("dl_dst=")


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
        f"cookie={cookie:#x},table=2,priority={fl.P_MAC},reg0={NET.transit_vni},"
        f"dl_dst={e.mac},actions=set_field:1->reg2,set_field:{e.vtep}->tun_dst,"
        f"goto_table:3\n" for e in desired.macs))
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

"""The agent's whole pass at 100k remote endpoints, on both backends.

The world of bench/test_reconcile.py (100,000 remote endpoints over 10
networks, a few local ones) from fixed in-memory sources, through the
product's Agent with the ingress filter and the MAC guard on, as a gateway
runs them. Measured, one backend after the other:

* cold: the first pass from an empty dataplane (it reads the dataplane,
  plans and writes everything);
* idle: a pass with nothing to change, events on, the audit not due
  (``[agent] audit_interval``): what a quiet gateway does every resync;
* audit: the same pass when the audit is due (a full read of the
  dataplane): what every idle pass cost before the events path;
* one change: one owned entry deleted behind the agent's back, the pass
  that follows (the event path) until the entry is back.

Each round checks its result (no error, nothing planned when idle, the
entry back after the change).
"""
from __future__ import annotations

import gc
import shutil
import time

import pytest

from gwagent.control.agent import Agent
from gwagent.dataplane.linux import LinuxBackend
from gwagent.lab.ovs import Ovs, missing
from gwagent.openflow import flows as fl
from gwagent.openflow.backend import OpenFlowBackend

from netns import run, throwaway_netns
from test_reconcile import build_desired

BACKENDS = ("linux", "openflow")


class Fixed:
    """A source that always says the same snapshot."""

    def __init__(self, snapshot):
        self.snap = snapshot

    def snapshot(self):
        return self.snap

    def version(self):
        return 1


@pytest.fixture(scope="module")
def world():
    desired = build_desired()
    return desired.local, desired.peers[0]


@pytest.fixture(params=BACKENDS)
def gateway(request, tmp_path_factory, world):
    with throwaway_netns("gwb-") as ns:
        ovs = be = None
        try:
            if request.param == "linux":
                be = LinuxBackend(ns)
            else:
                if missing():
                    pytest.fail(f"the OpenFlow benchmarks need {missing()}")
                rundir = tmp_path_factory.mktemp("ovs")
                ovs = Ovs(ns, rundir).start()
                be = OpenFlowBackend(ns, ovs.db_sock, "gwa-ovs", "gwa-vxlan", "netdev",
                                     "127.0.0.1", 6653, timeout=120)
            local, peer = world
            agent = Agent(Fixed(local), [Fixed(peer)], None, be, ingress_filter=True,
                          mac_guard=True, audit_interval=3600.0, pass_budget=600.0)
            yield request.param, ns, agent, ovs
        finally:
            if be is not None:
                be.close()
            if ovs is not None:
                ovs.stop()
                shutil.rmtree(ovs.rundir, ignore_errors=True)


def _pass(agent, reason="resync"):
    result = agent.run_pass(reason)
    assert result.errors == [], result.errors[:3]
    return result


def _delete_one(backend: str, ns: str, agent, ovs) -> tuple[str, str]:
    """Delete one remote MAC's place behind the agent's back; (network, MAC)."""
    entry = min(m for m in agent.desired_dp.macs if m.side == "transit")
    vni = next(n.transit_vni for n in agent.desired_dp.networks if n.name == entry.network)
    if backend == "linux":
        run(ns, "bridge", "fdb", "del", entry.mac, "dev", f"gwa-vt-{vni}", "dst", entry.vtep,
            "self")
    else:
        ovs.ofctl("gwa-ovs", "del-flows", f"table={fl.UNICAST},reg0={vni},dl_dst={entry.mac}")
    return entry.network, entry.mac


def test_agent_pass_100k(benchmark, gateway, figures):
    backend, ns, agent, ovs = gateway
    gc.collect()
    gc.freeze()
    try:
        start = time.perf_counter()
        cold = _pass(agent, "start")
        cold_s = time.perf_counter() - start
        assert sum(cold.ops.values()) > 100_000
        _pass(agent)  # the echoes of the cold pass's own network changes: one read

        def idle():
            result = _pass(agent)
            assert result.ops == {}, result.ops
            return result
        benchmark.pedantic(idle, rounds=20, iterations=1, warmup_rounds=1)
        idle_s = benchmark.stats.stats.median
        audits = []
        for _ in range(3):
            agent.mirror.invalidate("audit")
            start = time.perf_counter()
            assert _pass(agent).ops == {}
            audits.append(time.perf_counter() - start)
        changes = []
        for _ in range(5):
            _delete_one(backend, ns, agent, ovs)
            start = time.perf_counter()
            deadline = start + 10
            while True:
                result = _pass(agent, "kernel")
                if result.ops:
                    break
                assert time.perf_counter() < deadline, "the delete was never reported"
            changes.append(time.perf_counter() - start)
            assert result.ops == {"set": 1}, result.ops
        figures[f"agent_pass/{backend}"] = {
            "endpoints": 100_000, "networks": 10, "cold_seconds": cold_s,
            "idle_seconds": idle_s, "idle_min_seconds": benchmark.stats.stats.min,
            "audit_seconds": sorted(audits)[1], "change_seconds": sorted(changes)[2],
            "audits": agent.mirror.audits, "foreign": agent.mirror.foreign}
    finally:
        gc.unfreeze()

"""The agent itself against two real Neutron servers and a real kernel.

The site-B gateway runs the real ``Agent`` (registrar, planner, Linux
backend in a throwaway namespace) with site B's Neutron as source and
registry and site A's as peer. Neutron going away must leave the dataplane
and the remote ports as they were, show in status, and converge when it is
back, including what changed meanwhile.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

from gwagent.control.agent import Agent
from gwagent.control.sources import Throttled
from gwagent.dataplane.linux import LinuxBackend
from gwagent.model import Gateway
from gwagent.neutron.source import DEVICE_OWNER, owner_device_id

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "functional"))
from netns import throwaway_netns  # noqa: E402

CIDR = "198.19.60.0/24"


def macs_toward(backend, transit_ip: str) -> set[str]:
    return {e.mac for e in backend.observe().macs if e.vtep == transit_ip}


def test_agent_keeps_state_while_neutron_is_down_and_converges_after(sites, computes, uniq,
                                                                     tmp_path):
    a, b = sites["site-a"], sites["site-b"]
    net = f"red-{uniq}"
    net_a, _ = a.admin.network(net, CIDR), b.admin.network(net, CIDR)
    gw_a = Gateway(f"gwa-{uniq}", "198.18.1.254", "198.18.0.1")
    gw_b = Gateway(f"gwb-{uniq}", "198.18.2.254", "198.18.0.2")
    first = a.admin.port(net_a, "cn-a1", fixed_ips=[{"ip_address": "198.19.60.11"}])
    src_a, src_b = a.source(gw_a, {net: 5001}), b.source(gw_b, {net: 5001})

    with throwaway_netns("gwt-") as ns, LinuxBackend(ns) as backend:
        agent = Agent(Throttled(src_b, 0), [Throttled(src_a, 0)], src_b, backend,
                      status_path=tmp_path / "status.json", backoff_initial=0.1, backoff_max=1)
        assert agent.run_pass("start").ok
        assert macs_toward(backend, gw_a.transit_ip) == {first["mac_address"]}
        registered = b.admin.ports(device_owner=DEVICE_OWNER, device_id=owner_device_id(gw_b.host))
        assert [p["mac_address"] for p in registered] == [first["mac_address"]]
        assert registered[0]["binding:profile"]["gwagent"]["tunnel_ip"] == gw_b.tunnel_ip
        before = backend.observe()

        a.server.stop()
        try:
            down = agent.run_pass("resync")
            assert not down.ok and "unreachable" in agent.status()["last_error"]
            assert backend.observe() == before          # the last good state stays
            b.server.stop()
            assert not agent.run_pass("resync").ok
            assert backend.observe() == before
        finally:
            a.server.start()
            b.server.start()
        # Changed while the agent could not see: a new port in A.
        second = a.admin.port(net_a, "cn-a1", fixed_ips=[{"ip_address": "198.19.60.12"}])
        # Right after a restart Neutron may not list the network yet: the
        # agent's next passes (its backoff) get there.
        deadline = time.monotonic() + 30
        while not (back := agent.run_pass("resync")).ok and time.monotonic() < deadline:
            time.sleep(0.5)
        assert back.ok, (back.source_error, back.errors)
        assert agent.status()["last_error"] is None
        assert macs_toward(backend, gw_a.transit_ip) == {first["mac_address"],
                                                         second["mac_address"]}
        a.admin.delete(first["id"])
        assert agent.run_pass("resync").ok
        assert macs_toward(backend, gw_a.transit_ip) == {second["mac_address"]}
        left = b.admin.ports(device_owner=DEVICE_OWNER, device_id=owner_device_id(gw_b.host))
        assert [p["mac_address"] for p in left] == [second["mac_address"]]
        agent.registry.unregister(agent.registry.remote_ports())

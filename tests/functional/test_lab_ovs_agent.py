"""The Neutron lab with Neutron's own Open vSwitch agent on every compute.

The smallest such lab (``gwagent/lab/ovs-agent.yaml``: two sites, one
compute each, red and blue on the same subnet): each compute runs its own
OVS (userspace datapath) and ``neutron-openvswitch-agent`` with l2pop,
VXLAN and the OVS firewall, and every cross-site frame goes VM -> the
agent's br-tun -> gateway -> transit -> peer gateway -> the peer's agent
-> VM. One test, one lab (it costs about a minute to bring up): what VMs
see (answers, datagrams), what the agents' own flows say (br-tun's table
20: remote MACs at the site's gateway), a VM added, moved across clouds
and removed, port security holding, and one short GARP drill; once per
gateway backend, as every lab test.

Needs root, the Neutron venv (with neutron-openvswitch-agent),
rabbitmq-server and Open vSwitch: a missing one FAILS the test, never
skips it.
"""
from __future__ import annotations

import contextlib
import subprocess
import time
from pathlib import Path

import pytest

import labs
from labs import lab_up
from gwagent.drill import garp, scenario as sc
from gwagent.lab import build, ovs_agent, probe
from gwagent.lab import computes as computes_mod
from gwagent.lab import neutron as lab_neutron
from gwagent.lab import topology as topo_mod
from gwagent.lab.cli import ping_matrix
from gwagent.lab.ovs import missing as ovs_missing

TOPOLOGY = Path(topo_mod.__file__).with_name("ovs-agent.yaml")
#: seconds a change may take to reach the other cloud. It takes under a
#: second; but the lab's Neutrons keep SQLite, and with real agents their
#: RPC servers write (device up, port status) while the gateways register:
#: a registration refused with "database is locked" is retried after the
#: agent's backoff, doubling to 30 s (once, in 12 runs, 62 s in all).
CONVERGE = 120
NOT_PAIRED = "198.19.10.200"  # an address in no port's fixed IPs or pairs


def places(lab, compute: str, by: str = "l2pop") -> dict[str, str]:
    """{MAC: VTEP} of the compute's br-tun flows (table 20) made by ``by``."""
    return {r["mac"]: r["vtep"] for r in ovs_agent.tunnel_places(lab, compute)
            if r["by"] == by}


@pytest.mark.parametrize("backend", labs.BACKENDS)
def test_real_ovs_agents_carry_cross_cloud_traffic_moves_and_a_failover(backend):
    if ovs_missing():
        pytest.fail(f"the OVS agent lab needs {ovs_missing()}")
    agent = lab_neutron.neutron_venv() / "bin" / "neutron-openvswitch-agent"
    if not agent.exists():
        pytest.fail(f"the OVS agent lab needs {agent} (run tools/setup-neutron-venv.sh)")
    topo = topo_mod.load(TOPOLOGY)
    assert topo.computes == topo_mod.OVS_AGENT
    start = time.monotonic()
    with lab_up(topo, neutron=True, backend=backend) as lab:
        print(f"OVS agent lab ({backend} gateways) up in {time.monotonic() - start:.1f} s")
        a, b = lab.topology.site("a"), lab.topology.site("b")
        # Neutron sees the real agents, with the computes' underlay IPs.
        for site in (a, b):
            agents = lab_neutron.client(lab, site.name).list(
                "agents", fields=["host", "binary", "alive", "configurations"])
            assert {(x["host"], x["binary"], x["alive"],
                     x["configurations"]["tunneling_ip"],
                     x["configurations"].get("gwagent_lab", False)) for x in agents} == {
                (c, "neutron-openvswitch-agent", True, site.compute_ip(c), False)
                for c in site.computes}

        # Every pair on a network answers, across clouds.
        results = ping_matrix(lab)
        assert len(results) == 4 and not [p for p, rtt in results.items() if rtt is None]

        # The agents' own flows: every remote VM at the site's gateway.
        for site, compute in ((a, "a-cn1"), (b, "b-cn1")):
            remote = {vm.mac for vm in lab.topology.vms if vm.site != site.name}
            assert places(lab, compute) == {mac: site.tunnel_ip for mac in remote}
            assert set(ovs_agent.flood_vteps(lab, compute)) == {
                site.segmentation_id(n.name) for n in lab.topology.networks}

        # Overlapping networks stay apart: red's datagrams to 198.19.10.21
        # reach b1-red only, blue's b1-blue only.
        for src, dst, other in (("a1-red", "b1-red", "b1-blue"),
                                ("b1-blue", "a1-blue", "a1-red")):
            got, leaked = probe.stream(lab.ns(src), lab.ns(dst), lab.topology.vm(dst).ip,
                                       count=100, interval=0.002,
                                       extra_receivers=(lab.ns(other),))
            assert (got.received, got.lost, leaked.received) == (100, 0, 0), (src, dst)

        # Port security (the OVS firewall) applies: from an address in none
        # of the port's fixed IPs or allowed address pairs nothing leaves.
        src = lab.ns("a1-red")
        ip(src, "addr", "add", f"{NOT_PAIRED}/32", "dev", "eth0")
        rx = probe.udp_receiver(lab.ns("b1-red"))
        with contextlib.closing(rx), contextlib.closing(probe.ns_socket(src)) as tx:
            tx.bind((NOT_PAIRED, 0))
            probe.send(tx, lab.topology.vm("b1-red").ip, probe.DEFAULT_PORT, 50, 0.002, 7)
            assert probe.receive(rx, 50, 1.0, 7).received == 0
        ip(src, "addr", "del", f"{NOT_PAIRED}/32", "dev", "eth0")

        # A VM added in a, moved to b's compute, removed: b's agent, then
        # a's, then nobody points at it, and it answers where it is.
        build.add_vm(lab, {"name": "a2-red", "site": "a", "compute": "a-cn1",
                           "network": "red", "ip": "198.19.10.12"})
        mac = lab.topology.vm("a2-red").mac
        labs.wait_for(lambda: places(lab, "b-cn1").get(mac) == b.tunnel_ip, CONVERGE,
                      seen=lambda: places(lab, "b-cn1"))
        assert probe.ping(lab.ns("b1-red"), "198.19.10.12") is not None
        build.move_vm(lab, "a2-red", "b-cn1")
        labs.wait_for(lambda: places(lab, "a-cn1").get(mac) == a.tunnel_ip, CONVERGE,
                      seen=lambda: places(lab, "a-cn1"))
        labs.wait_for(lambda: mac not in places(lab, "b-cn1"), CONVERGE,
                      seen=lambda: places(lab, "b-cn1"))
        assert probe.ping(lab.ns("a1-red"), "198.19.10.12") is not None
        assert probe.ping(lab.ns("b1-red"), "198.19.10.12") is not None
        build.remove_vm(lab, "a2-red")
        labs.wait_for(lambda: mac not in places(lab, "a-cn1"), CONVERGE,
                      seen=lambda: places(lab, "a-cn1"))
        assert computes_mod.of(lab).missing_places("a-cn1") == {}

        # One short drill: the VIP (in the holders' allowed address pairs)
        # moves across clouds by a GARP and back; every client follows,
        # nothing stale in any gateway, br-tun or client.
        scenario = sc.prepare(lab, "red", timeout=CONVERGE)
        try:
            moves = garp.run(scenario, [sc.OWN_MAC], [sc.CROSS], runs=2)
        finally:
            sc.teardown(lab, scenario)
        assert len(moves) == 2
        for move in moves:
            assert [c.client for c in move.clients if c.first_reply_ms is None] == [], move
            assert any("br-tun" in c.what or "br-int" in c.what for c in move.checks)
            assert [c.to_dict() for c in move.stale] == []


def ip(ns: str, *args: str) -> None:
    subprocess.run(["ip", "-n", ns, *args], check=True, capture_output=True, text=True)

"""Two gateway nodes per site (gwagent/lab/ha.yaml: site a has a-gw1 and
a-gw2, keepalived between them), on both backends: the standby's dataplane
is the active one's at all times, the active node dies under traffic and
comes back (traffic resumes, nothing stale, no registry write), a change
made while the second node is active reaches the other cloud, and the VIP
drills of the failover issue still pass. Then the same takeover on the
Neutron lab, where "no registry write" means no request to Neutron.
Correctness only: the timings are the bench's (bench/test_gateway_ha.py)."""
from __future__ import annotations

import pytest

from gwagent.drill import garp, gateway, scenario as sc, vrrp as vrrp_drill
from gwagent.lab import build, gateways, probe, vrrp
from gwagent.lab import topology as topo_mod

from labs import BACKENDS, lab_up, wait_for

HA = topo_mod.DEFAULT_FILE.with_name("ha.yaml")
NEW_VM = {"name": "b3-red", "site": "b", "compute": "b-cn2", "network": "red",
          "ip": "198.19.10.23"}


@pytest.fixture(scope="module", params=BACKENDS)
def ha_lab(request):
    with lab_up(topo_mod.load(HA), backend=request.param) as lab:
        yield lab


def same_dataplane(lab):
    """a-gw1 and a-gw2 hold the same MAC places and flood destinations"""
    one, two = (gateways.places(lab, "a", n) for n in ("a-gw1", "a-gw2"))
    floods = [gateways.floods(lab, "a", n) for n in ("a-gw1", "a-gw2")]
    return one == two and floods[0] == floods[1] and (one, floods[0])


def roles(lab):
    return {n: ((build.agent_status(lab, "a", n) or {}).get("ha") or {}).get("role")
            for n in ("a-gw1", "a-gw2")}


def test_the_first_node_is_active_and_the_standby_is_hot(ha_lab):
    wait_for(lambda: roles(ha_lab) == {"a-gw1": "active", "a-gw2": "standby"}, 10.0,
             seen=lambda: roles(ha_lab))
    assert vrrp.active(ha_lab, "a") == "a-gw1"
    places, floods = wait_for(lambda: same_dataplane(ha_lab), 10.0)
    # every remote VM of site b is placed at gateway b, every VM of a at its compute
    remote = {vm.mac for vm in ha_lab.topology.vms if vm.site == "b"}
    assert {e.mac for e in places if e.side == "transit"} == remote
    assert {e.mac for e in places if e.side == "site"} == \
        {vm.mac for vm in ha_lab.topology.vms if vm.site == "a"}
    assert floods
    status = build.agent_status(ha_lab, "a", "a-gw2")
    assert status["registry"]["state"] == "standby" and status["remote_ports_registered"] is None
    # the cloud knows one gateway: the site's addresses, the shared owner
    ports = ha_lab.truth.remote_ports("a")
    assert {p.vtep for p in ports} == {"198.18.1.1"} and {p.gateway_host for p in ports} == {"a-gw"}


def test_the_standby_follows_a_change_as_the_active_does(ha_lab):
    build.add_vm(ha_lab, NEW_VM)
    try:
        mac = ha_lab.topology.vm("b3-red").mac
        wait_for(lambda: all(mac in {e.mac for e in gateways.places(ha_lab, "a", n)}
                             for n in ("a-gw1", "a-gw2")), 10.0)
        wait_for(lambda: same_dataplane(ha_lab), 10.0)
    finally:
        build.remove_vm(ha_lab, "b3-red")
    wait_for(lambda: same_dataplane(ha_lab) and mac not in
             {e.mac for e in gateways.places(ha_lab, "a", "a-gw2")}, 10.0)


def assert_clean(moves, extra):
    assert [(m.mode, m.old, m.new) for m in moves] == [("takeover", "a-gw1", "a-gw2"),
                                                      ("giveback", "a-gw2", "a-gw1")]
    for move in moves:
        assert [c.client for c in move.clients if c.outage_ms is None] == [], move
        assert {c.client for c in move.clients} == {"a1-red", "a2-red", "b1-red", "b2-red"}
        assert [c.to_dict() for c in move.stale] == [], "nothing stale, no registry write"
        assert "no GARP" not in move.note
    assert extra["registry_writes"] == [0, 0]


def test_the_active_node_dies_under_traffic_and_gives_back(ha_lab):
    moves, extra = gateway.run(ha_lab, "a", "red", runs=1)
    assert_clean(moves, extra)
    assert vrrp.active(ha_lab, "a") == "a-gw1"


def test_a_change_while_the_second_node_is_active_reaches_the_other_cloud(ha_lab):
    gateway._links(ha_lab, "a-gw1", up=False)
    try:
        wait_for(lambda: gateway.wait_active(ha_lab, ha_lab.topology.site("a"), "a-gw2", 0.1),
                 10.0, seen=lambda: roles(ha_lab))
        build.add_vm(ha_lab, NEW_VM)
        vm = ha_lab.topology.vm("b3-red")
        wait_for(lambda: vm.mac in {p.origin.mac for p in ha_lab.truth.remote_ports("a")},
                 10.0)
        wait_for(lambda: probe.ping(ha_lab.ns("a1-red"), vm.ip) is not None, 10.0)
        reg = build.agent_status(ha_lab, "a", "a-gw2")["registry"]
        assert reg["state"] == "ok", reg
        build.remove_vm(ha_lab, "b3-red")
        wait_for(lambda: vm.mac not in {p.origin.mac for p in ha_lab.truth.remote_ports("a")},
                 10.0)
    finally:
        gateway._links(ha_lab, "a-gw1", up=True)
    wait_for(lambda: roles(ha_lab) == {"a-gw1": "active", "a-gw2": "standby"}, 10.0,
             seen=lambda: roles(ha_lab))
    wait_for(lambda: same_dataplane(ha_lab), 10.0)


@pytest.fixture
def ha_scenario(ha_lab):
    s = sc.prepare(ha_lab, "red", timeout=30)
    try:
        yield s
    finally:
        sc.teardown(ha_lab, s)


def test_vip_drills_pass_with_two_gateways_in_a_site(ha_scenario):
    moves = garp.run(ha_scenario, sc.MODES, ["cross"], runs=1)
    moves += vrrp_drill.run(ha_scenario, [vrrp_drill.DEFAULT], ["cross"], runs=1)
    assert len(moves) == len(sc.MODES) + 1
    for move in moves:
        assert [c.client for c in move.clients if c.first_reply_ms is None] == [], move
        assert move.checks and [c.to_dict() for c in move.stale] == []


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_takeover_writes_nothing_to_neutron(backend):
    with lab_up(topo_mod.load(HA), neutron=True, backend=backend) as lab:
        moves, extra = gateway.run(lab, "a", "red", runs=1)
        assert_clean(moves, extra)
        ports = lab.truth.remote_ports("a")
        assert {p.vtep for p in ports} == {"198.18.1.1"} and len(ports) == 3


def test_both_nodes_configurations_name_one_gateway_and_this_node(tmp_path):
    """Without root or servers: the lab writes the two nodes of a Neutron
    site the same sources, the same gateway, and each its own node."""
    from gwagent import cli
    from gwagent.lab.record import Lab
    ids = {site: {net: {"id": f"{net}-{site}-uuid"} for net in ("red", "blue")}
           for site in ("a", "b")}
    lab = Lab("gwx-", tmp_path, topo_mod.load(HA), source="neutron",
              neutron={"sites": {site: {"networks": nets} for site, nets in ids.items()}})
    build.write_agent_configs(lab)
    seen = []
    for node in ("a-gw1", "a-gw2"):
        conf = cli.load_conf([str(lab.agent_conf("a", node))])
        assert (conf.gateway.high_availability, conf.gateway.node) == ("vrrp", node)
        assert conf.gateway.netns == f"gwx-{node}"
        _, peers, registry = cli.build_sources(conf)
        seen.append((registry.owner, registry.site.gateway, registry.network_ids,
                     [p.source.site for p in peers]))
    assert seen[0] == seen[1]
    assert seen[0][0] == "a-gw" and seen[0][1].nodes == ("a-gw1", "a-gw2")
    conf = cli.load_conf([str(lab.agent_conf("b"))])
    assert conf.gateway.high_availability == "none"


def test_the_holder_reads_the_addresses_from_the_kernel_as_vrrp_moves_them():
    """gwagent.dataplane.addresses on a real namespace: an address added or
    removed (what keepalived does) is seen on the next question."""
    from gwagent.dataplane.addresses import AddressHolder
    from netns import run, throwaway_netns
    with throwaway_netns("gwt-") as ns:
        run(ns, "ip", "link", "add", "vip-site", "type", "bridge")
        run(ns, "ip", "addr", "add", "198.18.1.2/24", "dev", "vip-site")
        holder = AddressHolder(ns)
        try:
            site = ("198.18.1.1", "198.18.0.1")
            assert not holder.holds(site) and holder.holds(["198.18.1.2"])
            run(ns, "ip", "addr", "add", "198.18.1.1/24", "dev", "vip-site")
            assert not holder.holds(site)  # one of two: standby
            run(ns, "ip", "addr", "add", "198.18.0.1/24", "dev", "vip-site")
            assert holder.holds(site)
            run(ns, "ip", "addr", "del", "198.18.0.1/24", "dev", "vip-site")
            assert not holder.holds(site)
        finally:
            holder.close()

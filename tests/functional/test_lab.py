"""The gateway in the lab: two (or three) sites, real agents, real kernel.

These tests assert results seen by VMs (datagrams received, pings
answered) and by the computes' and gateways' FDBs, never calls. Timing
claims are measured with the lab's sequence-numbered UDP probes from the
moment the inventory changed.
"""
from __future__ import annotations

import json
import secrets
import subprocess
import sys
import threading
import time

import pytest
import yaml
from pyroute2 import IPRoute, netns

from labs import BACKENDS, lab_up, scrape, wait_for
from gwagent.control.sources import FileInventory
from gwagent.lab import build, gateways, probe
from gwagent.lab import topology as topo_mod
from gwagent.lab.cli import ping_matrix
from gwagent.lab.names import LabError, default_lab_dir, vxlan_name
from gwagent.lab.processes import python_env

NTF_EXT_LEARNED = 0x10


def fdb(ns: str, dev: str) -> dict[tuple[str, str | None], int]:
    """{(mac, dst): flags} of the FDB entries on ``dev`` in ``ns``."""
    with IPRoute(netns=ns, flags=0) as ipr:
        found = ipr.link_lookup(ifname=dev)
        if not found:
            return {}
        return {(m.get_attr("NDA_LLADDR"), m.get_attr("NDA_DST")): m["flags"]
                for m in ipr.fdb("dump") if m["ifindex"] == found[0]}


def links(ns: str) -> set[str]:
    with IPRoute(netns=ns, flags=0) as ipr:
        return {link.get_attr("IFLA_IFNAME") for link in ipr.link("dump")}


def agent_status(lab: build.Lab, site: str) -> dict:
    out = subprocess.run([sys.executable, "-m", "gwagent.cli", "status", "--config-file",
                          str(lab.agent_conf(site)), "--json"], capture_output=True, text=True,
                         env=python_env(), timeout=30)
    return json.loads(out.stdout)


def vm_dict(lab: build.Lab, name: str) -> dict:
    return next(v for v in topo_mod.to_dict(lab.topology)["vms"] if v["name"] == name)


def reach_concurrently(lab: build.Lab, pairs: list[tuple[str, str]], since: float,
                       timeout: float = 3.0) -> dict[tuple[str, str], float | None]:
    """time_to_reach for several (src VM, dst VM) pairs at once, one port each."""
    results = {}

    def measure(i, src, dst):
        results[(src, dst)] = probe.time_to_reach(
            lab.ns(src), lab.ns(dst), lab.topology.vm(dst).ip, since, timeout,
            port=probe.DEFAULT_PORT + 10 + i)

    threads = [threading.Thread(target=measure, args=(i, s, d)) for i, (s, d) in enumerate(pairs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


# -- topology logic (no root needed; the emulator's: tests/unit/test_lab_l2pop.py) -----

def test_default_topology_is_two_sites_with_overlapping_networks():
    topo = topo_mod.load()
    assert [s.name for s in topo.sites] == ["a", "b"]
    assert {n.subnet for n in topo.networks} == {"198.19.10.0/24"}
    assert topo.site("a").segmentation_id("red") != topo.site("b").segmentation_id("red")
    assert len(topo.vms) == 8
    assert topo_mod.parse(topo_mod.to_dict(topo)) == topo


@pytest.mark.parametrize("change, message", [
    (lambda d: d["vms"][0].update(ip="198.19.11.5"), "not a host address"),
    (lambda d: d["vms"][1].update(network="red"), "already used on network 'red'"),
    (lambda d: d["vms"][0].update(compute="b-cn1"), "not a compute of site 'a'"),
    (lambda d: d["sites"][0]["segmentation_ids"].pop("blue"), "segmentation_ids.blue: missing"),
    (lambda d: d["sites"][0]["segmentation_ids"].update(red=5002), "VNI already used"),
    (lambda d: d["networks"][0].update(subnet="10.0.0.0/24"), "must be a subnet of 198.19.0.0/16"),
    (lambda d: d["sites"][1].update(computes=["a-cn1"]), "name already used"),
    (lambda d: d["vms"][0].update(mac="fa:16:3e:a8:b2:0c", network="blue", ip="198.19.10.99"),
     "already used on network 'blue'"),
    (lambda d: d.update(extra=1), "unknown key 'extra'"),
    (lambda d: d.update(mtu=1000), "mtu: 1000: the underlay's MTU"),
    (lambda d: d.update(mtu="9000"), "an integer from 1280 to 9216"),
    (lambda d: d.update(computes="ovs"), "computes: 'ovs': one of emulated, ovs-agent"),
])
def test_topology_errors_name_the_field(change, message):
    data = topo_mod.to_dict(topo_mod.load())
    change(data)
    with pytest.raises(topo_mod.TopologyError, match=message):
        topo_mod.parse(data)


def test_computes_with_neutrons_ovs_agent_are_chosen_by_the_topology_for_neutron_labs():
    topo = topo_mod.load(topo_mod.DEFAULT_FILE.with_name("ovs-agent.yaml"))
    assert topo.computes == topo_mod.OVS_AGENT
    assert topo_mod.parse(topo_mod.to_dict(topo)) == topo
    assert topo_mod.load().computes == topo_mod.EMULATED
    assert "computes" not in topo_mod.to_dict(topo_mod.load())
    with pytest.raises(LabError, match="needs a Neutron lab"):
        build.up(topo, "gwf-nonet-", neutron=False)
    assert not [n for n in netns.listnetns() if n.startswith("gwf-nonet-")]
    assert not default_lab_dir("gwf-nonet-").exists()


def three_sites() -> topo_mod.Topology:
    return topo_mod.parse({
        "networks": [{"name": "red", "transit_vni": 5001, "subnet": "198.19.20.0/24"}],
        "sites": [
            {"name": "a", "computes": ["a-cn1", "a-cn2", "a-cn3"], "segmentation_ids": {"red": 11}},
            {"name": "b", "computes": ["b-cn1"], "segmentation_ids": {"red": 22}},
            {"name": "c", "computes": ["c-cn1", "c-cn2"], "segmentation_ids": {"red": 33}},
        ],
        "vms": [
            {"name": "va1", "site": "a", "compute": "a-cn1", "network": "red", "ip": "198.19.20.1"},
            {"name": "va3", "site": "a", "compute": "a-cn3", "network": "red", "ip": "198.19.20.3"},
            {"name": "vb1", "site": "b", "compute": "b-cn1", "network": "red", "ip": "198.19.20.4"},
            {"name": "vc1", "site": "c", "compute": "c-cn1", "network": "red", "ip": "198.19.20.5"},
            {"name": "vc2", "site": "c", "compute": "c-cn2", "network": "red", "ip": "198.19.20.6",
             "allowed_address_pairs": [{"ip_address": "198.19.20.100"}]},
        ]})


def test_probe_stats_count_loss_duplicates_reordering_and_gaps():
    stats = probe.Stats()
    for seq in (0, 1, 4, 3, 3, 8):
        stats.add(seq, float(seq), float(seq))
    stats.finish(10)
    assert (stats.received, stats.lost, stats.duplicates, stats.reordered) == (5, 5, 1, 1)
    assert stats.longest_gap == 3  # 5, 6, 7
    assert stats.first_seq == 0


# -- the lab ---------------------------------------------------------------------------

def test_every_pair_of_vms_on_a_network_pings_within_and_across_sites(lab):
    results = ping_matrix(lab)
    assert len(results) == 24
    assert [pair for pair, rtt in results.items() if rtt is None] == []


def test_lab_status_lists_nodes_and_live_agents(lab):
    from gwagent.lab.cli import status_dict
    data = status_dict(lab)
    kinds = [n["kind"] for n in data["nodes"]]
    assert kinds.count("vm") == 8 and kinds.count("compute") == 4 and kinds.count("gateway") == 2
    assert all(n["present"] for n in data["nodes"])
    expected = {"l2pop": True, "a-gw": True, "b-gw": True}
    if lab.backend == "openflow":  # each gateway's own Open vSwitch
        expected.update({f"{s}-{d}": True for s in "ab" for d in ("ovsdb-server", "ovs-vswitchd")})
    assert {name: p["alive"] for name, p in data["processes"].items()} == expected


def test_the_agents_metrics_say_what_their_status_says(lab):
    """Each agent serves Prometheus metrics over HTTP (the lab turns
    [metrics] on): its passes and their durations, the entries programmed
    per network and side (the same total as status), its sources fresh, and
    a recent good pass."""
    for site in lab.topology.sites:
        status = agent_status(lab, site.name)["status"]
        metrics = scrape(lab, site.name)
        passes = sum(v for (name, labels), v in metrics.items()
                     if name == "gwagent_passes_total" and ("result", "ok") in labels)
        assert passes >= 1
        assert metrics[("gwagent_pass_duration_seconds_count", ())] >= passes
        entries = {labels: v for (name, labels), v in metrics.items()
                   if name == "gwagent_entries_programmed"}
        assert {dict(labels)["side"] for labels in entries} == {"site", "transit"}
        assert {dict(labels)["network"] for labels in entries} == {"red", "blue"}
        assert sum(entries.values()) == status["entries_programmed"]
        fresh = {labels: v for (name, labels), v in metrics.items()
                 if name == "gwagent_source_fresh"}
        assert len(fresh) == 2 and all(v == 1 for v in fresh.values()), fresh
        assert time.time() - metrics[("gwagent_last_successful_pass_timestamp_seconds", ())] < 60
        assert metrics[("gwagent_dataplane_audits_total", ())] >= 1
        assert metrics[("gwagent_dataplane_drift_total", ())] == status["dataplane_audit"]["drift"]


@pytest.mark.parametrize("src, dst, other", [
    ("a1-red", "b1-red", "b1-blue"),
    ("a1-blue", "b2-blue", "b2-red"),
    ("a1-red", "a2-red", "a2-blue"),
])
def test_overlapping_networks_never_see_each_others_traffic(lab, src, dst, other):
    assert lab.topology.vm(dst).ip == lab.topology.vm(other).ip
    got, leaked = probe.stream(lab.ns(src), lab.ns(dst), lab.topology.vm(dst).ip, count=200,
                               interval=0.002, extra_receivers=(lab.ns(other),))
    assert got.received == 200 and got.lost == 0
    assert leaked.received == 0


def test_added_vm_is_reachable_within_a_second(own_lab):
    lab = own_lab
    new = {"name": "b2-red2", "site": "b", "compute": "b-cn2", "network": "red",
           "ip": "198.19.10.30"}
    t0 = build.add_vm(lab, new)
    vm = lab.topology.vm("b2-red2")

    def computes_point_at_gateway():
        """a-cn1 sends the new MAC to site a's gateway"""
        return (vm.mac, lab.topology.site("a").tunnel_ip) in fdb(lab.ns("a-cn1"), vxlan_name(1001))
    wait_for(computes_point_at_gateway, 1.5)
    assert time.monotonic() - t0 < 1.5
    # Seconds from the change until a probe was sent that arrived (probes
    # sent while ARP resolves are queued by the sender's kernel).
    reached = reach_concurrently(lab, [("a1-red", "b2-red2"), ("b1-red", "b2-red2")], t0)
    print("convergence (s):", reached, "all delivered after (s):", time.monotonic() - t0)
    assert all(v is not None and v < 1.0 for v in reached.values()), reached


def test_removed_vm_is_forgotten_everywhere_within_a_second(own_lab):
    lab = own_lab
    gone = lab.topology.vm("b2-red")
    t0 = build.remove_vm(lab, "b2-red")

    def forgotten():
        """no compute or gateway of either site has an entry for the removed MAC"""
        places = [(lab.ns(c), vxlan_name(1001)) for c in ("a-cn1", "a-cn2")]
        places += [(lab.ns(c), vxlan_name(2001)) for c in ("b-cn1", "b-cn2")]
        return (not any(mac == gone.mac for ns, dev in places for mac, _ in fdb(ns, dev))
                and not any(gateways.place_of(lab, s, "red", gone.mac) for s in "ab"))
    wait_for(forgotten, 1.0)
    assert time.monotonic() - t0 < 1.5
    assert "b2-red" not in [p.origin.port_id.removeprefix("lab-")
                            for p in FileInventory(lab.inventory("a")).all_remote_ports()]
    assert ping_matrix(lab)[("a1-red", "b1-red")] is not None


def test_vm_moved_to_another_compute_is_reachable_within_a_second(own_lab):
    lab = own_lab
    t0 = build.move_vm(lab, "b1-red", "b-cn2")
    reached = reach_concurrently(lab, [("a1-red", "b1-red"), ("a2-red", "b1-red")], t0)
    print("convergence (s):", reached)
    assert all(v is not None and v < 1.0 for v in reached.values()), reached
    # And back again.
    t0 = build.move_vm(lab, "b1-red", "b-cn1")
    reached = reach_concurrently(lab, [("a1-red", "b1-red")], t0)
    print("convergence (s):", reached)
    assert all(v is not None and v < 1.0 for v in reached.values()), reached


def test_vm_moved_to_another_site_is_reachable_within_a_second(own_lab):
    lab = own_lab
    pairs = [("a1-red", "a2-red"), ("b2-red", "a2-red")]
    # The peers already talk to the VM, as a migrated guest's do: measured
    # from a cold ARP cache, the first reply can meet a gateway's MAC guard
    # while the move is known to one cloud only (rightly dropped: it cannot
    # be told from a hijack until both sources say so), and the time would
    # be the sender kernel's ARP retry (1 s), not the gateways'.
    for src, dst in pairs:
        assert probe.ping(lab.ns(src), lab.topology.vm(dst).ip) is not None, (src, dst)
    t0 = build.move_vm(lab, "a2-red", "b-cn1")
    assert lab.topology.vm("a2-red").site == "b"
    reached = reach_concurrently(lab, pairs, t0)
    print("convergence (s):", reached)
    assert all(v is not None and v < 1.0 for v in reached.values()), reached
    results = ping_matrix(lab)
    assert [pair for pair, rtt in results.items() if rtt is None] == []


def test_owned_entries_and_a_network_broken_by_hand_are_restored(lab):
    b1, a2 = lab.topology.vm("b1-red"), lab.topology.vm("a2-red")
    transit_b = lab.topology.site("b").transit_ip
    assert gateways.place_of(lab, "a", "red", b1.mac) == {("transit", transit_b)}
    before = build.agent_status(lab, "a")["dataplane_audit"]
    gateways.delete_by_hand(lab, "a", "red", b1.mac)
    # (No check that it is gone: the agent hears the kernel and may already
    # have put it back; the delete succeeding is the proof.)

    def entry_back():
        """the deleted MAC's place is back"""
        return gateways.place_of(lab, "a", "red", b1.mac) == {("transit", transit_b)}
    wait_for(entry_back, 2.5)

    def reported():
        """the pass that put it back wrote its status (after the write)"""
        after = (build.agent_status(lab, "a") or {}).get("dataplane_audit") or {}
        return after.get("foreign_changes", 0) > before["foreign_changes"] and after
    # by the event path: the change was reported, and no audit (the lab's
    # come a minute apart) read the dataplane for it
    after = wait_for(reported, 2.5)
    assert after["drift"] == before["drift"]

    gateways.break_network_by_hand(lab, "a", "red")

    def network_back():
        """the broken network is back with its entries"""
        return gateways.place_of(lab, "a", "red", a2.mac) == {
            ("site", lab.topology.site("a").compute_ip("a-cn2"))}
    wait_for(network_back, build.AGENT_RESYNC + 2.5)
    wait_for(lambda: all(rtt is not None for rtt in ping_matrix(lab).values()), 5.0,
             interval=0.2)


def test_foreign_links_entries_and_flows_are_left_alone(lab):
    gw = lab.ns("a-gw")
    foreign = gateways.add_foreign(lab, "a")
    try:
        before = gateways.foreign_state(lab, "a", foreign)
        since = time.time()
        # A change in the inventory and a resync must both pass without touching them.
        lab.truth.publish(["a"])
        wait_for(lambda: ((build.agent_status(lab, "a") or {}).get("last_pass") or {})
                 .get("at", 0) > since + build.AGENT_RESYNC, build.AGENT_RESYNC * 3)
        assert gateways.foreign_state(lab, "a", foreign) == before
        assert {"foreign0"} <= links(gw)
    finally:
        gateways.remove_foreign(lab, "a", foreign)


@pytest.mark.parametrize("observer", ["a", "b"], ids=["as-peer-file", "as-local-file"])
def test_malformed_operator_data_keeps_the_last_good_state_and_reports_it(lab, observer):
    """Site b's gateway entry goes bad: agent a reads it as a peer's, agent b
    as its own; the whole file is refused and the last good state stays."""
    path = lab.inventory("b")
    good = path.read_text()
    try:
        data = yaml.safe_load(good)
        data["gateway"]["transit_ip"] = "198.18.0.999"
        path.write_text(yaml.safe_dump(data))

        def reported():
            """the agent reports the bad file in 'gwagent status --json'"""
            error = (agent_status(lab, observer)["status"] or {}).get("last_error")
            return bool(error and "198.18.0.999" in error)
        wait_for(reported, 10.0, interval=0.1)
        got, = probe.stream(lab.ns("a1-red"), lab.ns("b1-red"), lab.topology.vm("b1-red").ip,
                            count=300)
        assert got.lost == 0
        assert [p for p, rtt in ping_matrix(lab).items() if rtt is None] == []
        assert build.process_alive(lab.processes[f"{observer}-gw"]), \
            build.log_tail(lab.processes[f"{observer}-gw"]["log"])
    finally:
        lab.truth.publish(["b"])
        if not build.process_alive(lab.processes[f"{observer}-gw"]):
            build.start_agent(lab, observer)  # leave the shared lab as we found it
    wait_for(lambda: agent_status(lab, observer)["status"]["last_error"] is None, 10.0,
             interval=0.1)


def test_a_malformed_endpoint_is_left_out_alone_and_shown(lab):
    """One tenant port of site b goes bad: only it is left out (both gateways
    show why); every other VM pair keeps talking."""
    path = lab.inventory("b")
    good = path.read_text()
    data = yaml.safe_load(good)
    bad = data["endpoints"][0]
    victim = next(vm.name for vm in lab.topology.vms if vm.port_id == bad["port_id"])
    try:
        bad["mac"] = "not-a-mac"
        path.write_text(yaml.safe_dump(data))

        def shown(site):
            rejected = (agent_status(lab, site)["status"] or {}).get("rejected_endpoints") or []
            return any(r["port_id"] == bad["port_id"] and "not-a-mac" in r["reason"]
                       for r in rejected)
        wait_for(lambda: shown("a") and shown("b"), 3.0, interval=0.1)
        others = [vm.name for vm in lab.topology.vms if vm.name != victim]
        failed = [p for p, rtt in ping_matrix(lab).items() if rtt is None
                  and victim not in p]
        assert failed == [] and others
    finally:
        lab.truth.publish(["b"])
    wait_for(lambda: not agent_status(lab, "a")["status"]["rejected_endpoints"], 3.0,
             interval=0.1)
    wait_for(lambda: all(rtt is not None for rtt in ping_matrix(lab).values()), 5.0,
             interval=0.2)


def test_agent_restart_under_traffic_loses_no_packet(lab):
    def restart_both():
        time.sleep(0.4)
        for site in ("a", "b"):
            since = time.time()
            build.restart_agent(lab, site)
            wait_for(lambda: ((build.agent_status(lab, site) or {}).get("last_pass") or {})
                     .get("at", 0) > since, 5.0)
            time.sleep(0.2)

    forward, = probe.stream(lab.ns("a1-red"), lab.ns("b1-red"), lab.topology.vm("b1-red").ip,
                            count=2500, interval=0.002, during=restart_both)
    assert forward.received == 2500, forward.to_dict()
    assert (forward.lost, forward.duplicates) == (0, 0)
    assert all(build.process_alive(lab.processes[f"{s}-gw"]) for s in "ab")


@pytest.mark.parametrize("backend", BACKENDS)
def test_three_sites_with_more_computes_all_ping(backend):
    with lab_up(three_sites(), backend=backend) as lab:
        results = ping_matrix(lab)
        assert len(results) == 20
        assert [pair for pair, rtt in results.items() if rtt is None] == []


def test_down_clears_a_lab_whose_up_failed_halfway(monkeypatch):
    prefix = f"gwf-{secrets.token_hex(3)}-"

    def broken(lab, site):
        raise RuntimeError("boom while building site " + site.name)
    monkeypatch.setattr(build, "_build_site", broken)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            build.up(topo_mod.load(), prefix)
        assert [n for n in netns.listnetns() if n.startswith(prefix)] == [prefix + "switch"]
        with pytest.raises(build.LabError, match="already up"):
            build.up(topo_mod.load(), prefix)
    finally:
        build.down(prefix)
    assert [n for n in netns.listnetns() if n.startswith(prefix)] == []
    assert not build.default_lab_dir(prefix).exists()


def test_lab_command_line_up_status_check_down():
    prefix = f"gwf-{secrets.token_hex(3)}-"

    def lab_cli(*args):
        return subprocess.run([sys.executable, "-m", "gwagent.lab.cli", *args, "--prefix", prefix],
                              capture_output=True, text=True, env=python_env(), timeout=60)
    try:
        up = lab_cli("up", "--no-agents")
        assert up.returncode == 0, up.stderr
        status = json.loads(lab_cli("status", "--json").stdout)
        assert {n["kind"] for n in status["nodes"]} == {"switch", "gateway", "compute", "vm"}
        assert status["processes"]["l2pop"]["alive"]
        check = lab_cli("check")  # no agents: only pairs within a site answer
        assert check.returncode == 1 and "8/24 pairs answered" in check.stdout
    finally:
        down = lab_cli("down")
    assert down.returncode == 0, down.stderr
    assert [n for n in netns.listnetns() if n.startswith(prefix)] == []

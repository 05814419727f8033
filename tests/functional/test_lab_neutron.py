"""The lab with one real Neutron per site as the source of truth.

One Neutron lab per backend (two Neutrons, RabbitMQ, the computes' L2
agents, two gateway agents with ``source = neutron``) is shared by the
module's tests and always brought down, Neutron servers and RabbitMQ included. Results are what VMs
see (pings answered, datagrams received, ARP answers) and what each
Neutron holds (remote ports and their VTEP), never calls.

Needs root, the Neutron venv (tools/setup-neutron-venv.sh) and
rabbitmq-server; a missing one fails the tests with what to install.
"""
from __future__ import annotations

import subprocess
import time

import pytest
from pyroute2 import IPRoute

import labs
from labs import lab_up
from gwagent.lab import build, probe
from gwagent.lab import neutron as lab_neutron
from gwagent.lab import topology as topo_mod
from gwagent.lab.cli import ping_matrix
from gwagent.lab.record import Lab
from gwagent.neutron.source import DEVICE_OWNER

VIP_MAC = "fa:16:3e:00:01:00"        # a VRRP-style MAC of its own
VIP_IP = "198.19.10.100"             # in allowed address pairs with VIP_MAC
VIP_SAME_MAC_IP = "198.19.10.101"    # in allowed address pairs with the port's MAC


def topology() -> topo_mod.Topology:
    """The default lab, with a1-red holding two VIPs in its allowed address pairs."""
    data = topo_mod.to_dict(topo_mod.load())
    for vm in data["vms"]:
        if vm["name"] == "a1-red":
            vm["allowed_address_pairs"] = [
                {"ip_address": VIP_IP, "mac_address": VIP_MAC},
                {"ip_address": VIP_SAME_MAC_IP, "mac_address": vm["mac"]}]
    return topo_mod.parse(data)


@pytest.fixture(scope="module", params=labs.BACKENDS)
def nlab(request):
    start = time.monotonic()
    with lab_up(topology(), neutron=True, backend=request.param) as lab:
        print(f"Neutron lab ({request.param}) up in {time.monotonic() - start:.1f} s")
        records = dict(lab.processes)
        yield lab
    # down stopped every process it started (Neutron servers, RabbitMQ and
    # the L2 agents included), by pid and process group.
    left = {name: r["pid"] for name, r in records.items() if build.process_alive(r)}
    assert not left, f"still running after lab down: {left}"


def ip(ns: str, *args: str) -> None:
    subprocess.run(["ip", "-n", ns, *args], check=True, capture_output=True, text=True)


def neighbour_mac(ns: str, addr: str) -> str | None:
    out = subprocess.run(["ip", "-n", ns, "neigh", "show", addr], capture_output=True,
                         text=True).stdout.split()
    return out[out.index("lladdr") + 1].lower() if "lladdr" in out else None


def fdb_dst(ns: str, dev: str, mac: str) -> str | None:
    with IPRoute(netns=ns, flags=0) as ipr:
        idx = ipr.link_lookup(ifname=dev)[0]
        for msg in ipr.fdb("dump"):
            # The VXLAN (self) entry; the bridge's learned one has no dst.
            if (msg["ifindex"] == idx and msg.get_attr("NDA_LLADDR") == mac
                    and msg.get_attr("NDA_DST")):
                return msg.get_attr("NDA_DST")
    return None


def wait_for(predicate, timeout: float, interval: float = 0.1) -> float:
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            pytest.fail(f"not within {timeout}s: {predicate.__doc__ or predicate}")
        time.sleep(interval)
    return time.monotonic() - start


def test_every_pair_on_a_network_pings_across_sites(nlab):
    results = ping_matrix(nlab)
    failed = sorted(pair for pair, rtt in results.items() if rtt is None)
    assert not failed, f"no answer for {failed}"
    assert len(results) == 24


def test_remote_ports_are_in_each_neutron_behind_the_local_gateway(nlab):
    for site in nlab.topology.sites:
        peers = {vm.mac: vm for vm in nlab.topology.vms if vm.site != site.name}
        # As the registry reads them back ...
        remote = lab_neutron.remote_ports_of(nlab, site.name)
        assert {p.origin.mac: p.vtep for p in remote} == {m: site.tunnel_ip for m in peers}
        for p in remote:
            vm = peers[p.origin.mac]
            assert (p.origin.site, p.origin.network, p.origin.ips) == (vm.site, vm.network,
                                                                      (vm.ip,))
            assert p.origin.vtep == nlab.topology.site(vm.site).compute_ip(vm.compute)
        # ... and as raw Neutron ports, bound by the gwagent driver.
        def bound():
            """every remote port is bound by the gwagent driver (binding is
            Neutron's own work and may trail the port's creation)"""
            ports = lab_neutron.client(nlab, site.name).list(
                "ports", device_owner=DEVICE_OWNER,
                fields=["mac_address", "binding:profile", "binding:host_id",
                        "binding:vif_type"])
            return ports if all(p["binding:vif_type"] == "other" for p in ports) else None
        # (20 s was once not enough: a CI run on a machine running slow, every
        # Neutron lab start 40% longer than the run before)
        raw = labs.wait_for(bound, 60.0, 0.2, seen=lambda: sorted(
            (p["mac_address"], p["binding:vif_type"]) for p in lab_neutron.client(
                nlab, site.name).list("ports", device_owner=DEVICE_OWNER,
                                      fields=["mac_address", "binding:vif_type"])))
        assert sorted(p["mac_address"] for p in raw) == sorted(peers)
        for p in raw:
            assert p["binding:profile"]["gwagent"]["tunnel_ip"] == site.tunnel_ip
            assert p["binding:host_id"] == site.gateway
            assert p["binding:vif_type"] == "other"
    # Every agent's requests to its Neutron and its peers' are in its metrics.
    for site in nlab.topology.sites:
        metrics = labs.scrape(nlab, site.name)
        clouds = {dict(labels)["cloud"] for (name, labels), v in metrics.items()
                  if name == "gwagent_neutron_requests_total" and v > 0
                  and dict(labels)["status"] == "200"}
        assert len(clouds) == len(nlab.topology.sites), (site.name, clouds)
        assert sum(v for (name, _), v in metrics.items()
                   if name == "gwagent_neutron_request_duration_seconds_count") > 0
    # The VIP's own MAC travels in the remote port's allowed address pairs.
    b_remote = {p.origin.mac: p for p in lab_neutron.remote_ports_of(nlab, "b")}
    a1 = nlab.topology.vm("a1-red")
    assert {(pair.ip_address, pair.mac_address)
            for pair in b_remote[a1.mac].origin.allowed_address_pairs} == {
        (VIP_IP, VIP_MAC), (VIP_SAME_MAC_IP, a1.mac)}


def test_a_remote_vip_in_allowed_address_pairs_is_reachable_across_sites(nlab):
    a1, b1 = nlab.ns("a1-red"), nlab.ns("b1-red")
    # The VIP with a MAC of its own: a macvlan on the VM's eth0, as keepalived
    # with use_vmac makes one. arp_ignore so that only the VIP's interface
    # answers ARP for it (and with its own MAC).
    ip(a1, "link", "add", "vip0", "link", "eth0", "address", VIP_MAC, "type", "macvlan",
       "mode", "bridge")
    ip(a1, "addr", "add", f"{VIP_IP}/32", "dev", "vip0")
    ip(a1, "link", "set", "vip0", "up")
    subprocess.run(["ip", "netns", "exec", a1, "sysctl", "-qw", "net.ipv4.conf.all.arp_ignore=1"],
                   check=True)
    # The VIP on the port's own MAC: a secondary address.
    ip(a1, "addr", "add", f"{VIP_SAME_MAC_IP}/32", "dev", "eth0")
    probe.announce(a1, VIP_MAC, VIP_IP, ifname="vip0")
    try:
        for vip, mac in ((VIP_IP, VIP_MAC), (VIP_SAME_MAC_IP, nlab.topology.vm("a1-red").mac)):
            rtt = probe.ping(b1, vip, attempts=5)
            assert rtt is not None, f"no answer from VIP {vip} in site a to b1-red in site b"
            assert neighbour_mac(b1, vip) == mac, "the VIP answered ARP with the wrong MAC"
            print(f"VIP {vip} ({mac}) from b1-red: {rtt * 1000:.2f} ms")
        # UDP to the VIP as well, from both VMs of site b on red.
        for src in ("b1-red", "b2-red"):
            stats = probe.stream(nlab.ns(src), a1, VIP_IP, count=50, interval=0.005,
                                 port=probe.DEFAULT_PORT + 50)[0]
            assert stats.received == 50, f"{src} -> VIP: {stats}"
    finally:
        ip(a1, "link", "del", "vip0")
        ip(a1, "addr", "del", f"{VIP_SAME_MAC_IP}/32", "dev", "eth0")
        subprocess.run(["ip", "netns", "exec", a1, "sysctl", "-qw",
                        "net.ipv4.conf.all.arp_ignore=0"], check=True)


def test_a_port_created_in_neutron_after_start_becomes_reachable(nlab):
    new = {"name": "a3-red", "site": "a", "compute": "a-cn2", "network": "red",
           "ip": "198.19.10.13"}
    t0 = build.add_vm(nlab, new)  # plugs the VM, then creates its port in a's Neutron
    try:
        elapsed = probe.time_to_reach(nlab.ns("b1-red"), nlab.ns("a3-red"), new["ip"], t0,
                                      timeout=20.0, port=probe.DEFAULT_PORT + 60)
        assert elapsed is not None, "a3-red not reachable from b1-red within 20 s"
        back = probe.time_to_reach(nlab.ns("a3-red"), nlab.ns("b2-red"),
                                   nlab.topology.vm("b2-red").ip, t0, timeout=20.0,
                                   port=probe.DEFAULT_PORT + 61)
        assert back is not None
        assert probe.ping(nlab.ns("b2-red"), new["ip"]) is not None
        # Reachable first by flooding to the gateway; then, from Neutron's view,
        # the remote port in site b and the unicast entry on b's computes.
        mac = nlab.topology.vm("a3-red").mac

        def registered():
            """a3-red's remote port is in site b's Neutron"""
            return mac in {p.origin.mac for p in lab_neutron.remote_ports_of(nlab, "b")}
        wait_for(registered, 20.0)
        t_reg = time.monotonic() - t0
        b = nlab.topology.site("b")
        dev = build.vxlan_name(b.segmentation_id("red"))

        def programmed():
            """b-cn1 sends a3-red's MAC to site b's gateway"""
            return fdb_dst(nlab.ns("b-cn1"), dev, mac) == b.tunnel_ip
        wait_for(programmed, 20.0, interval=0.02)
        print(f"new port in site a's Neutron: first datagram from site b after "
              f"{elapsed:.2f} s; remote port in site b's Neutron after {t_reg:.2f} s; "
              f"b-cn1's FDB programmed after {time.monotonic() - t0:.2f} s")
    finally:
        t1 = build.remove_vm(nlab, "a3-red")

    def gone():
        """the deleted VM's remote port left site b's Neutron"""
        return mac not in {p.origin.mac for p in lab_neutron.remote_ports_of(nlab, "b")}
    took = wait_for(gone, 20.0)
    print(f"port deleted in site a -> remote port gone from site b: "
          f"{time.monotonic() - t1:.2f} s (polled {took:.2f} s)")


# -- without root or servers ---------------------------------------------------------

def test_agent_config_builds_neutron_sources_for_the_site_and_its_peers(tmp_path):
    from gwagent import cli
    ids = {site: {net: {"id": f"{net}-{site}-uuid"} for net in ("red", "blue")}
           for site in ("a", "b")}
    lab = Lab("gwx-", tmp_path, topology(), source="neutron",
              neutron={"sites": {site: {"networks": nets} for site, nets in ids.items()}})
    build.write_agent_configs(lab)
    conf = cli.load_conf([str(lab.agent_conf("a"))])
    assert conf.gateway.source == "neutron"
    local, peers, registry = cli.build_sources(conf)
    assert registry.site.name == "a" and registry.owner == "a-gw"
    assert registry.site.gateway.tunnel_ip == "198.18.1.1"
    assert registry.networks == {"red": 5001, "blue": 5002}
    assert registry.client.cloud == "lab-a"
    assert registry.client.clouds_file == str(tmp_path / "clouds.yaml")
    assert [p.source.site.name for p in peers] == ["b"]
    assert peers[0].source.site.gateway.transit_ip == "198.18.0.2"
    assert peers[0].source.client.cloud == "lab-b"
    assert registry.network_ids == {"red": "red-a-uuid", "blue": "blue-a-uuid"}
    assert peers[0].source.network_ids == {"red": "red-b-uuid", "blue": "blue-b-uuid"}


def test_lab_up_takes_neutron_on_the_command_line():
    import argparse
    from gwagent.lab import cli as lab_cli
    parser = argparse.ArgumentParser()
    lab_cli.add_parser(parser.add_subparsers(dest="command"))
    assert parser.parse_args(["lab", "up", "--neutron"]).neutron is True
    assert parser.parse_args(["lab", "up"]).neutron is False


def test_a_vm_moved_across_sites_and_back_stays_reachable(nlab):
    """Cross-site migration: the port is deleted in site a and created in
    site b, which must wait until gateway b withdraws the remote port that
    holds the VM's MAC (Neutron refuses a second port with it)."""
    try:
        for target in ("b-cn2", "a-cn1"):
            t0 = build.move_vm(nlab, "a2-red", target)
            placed = time.monotonic() - t0
            vm = nlab.topology.vm("a2-red")
            took = {src: probe.time_to_reach(nlab.ns(src), nlab.ns("a2-red"), vm.ip, t0,
                                             timeout=20.0, port=probe.DEFAULT_PORT + 70 + i)
                    for i, src in enumerate(("a1-red", "b1-red"))}
            assert None not in took.values(), f"a2-red on {target} not reachable: {took}"
            print(f"a2-red moved to {target}: port in place after {placed:.2f} s; reached "
                  + ", ".join(f"from {s} after {t:.2f} s" for s, t in took.items()))
    finally:
        if nlab.topology.vm("a2-red").compute != "a-cn2":
            build.move_vm(nlab, "a2-red", "a-cn2")


def test_failover_drills_pass_with_neutron_as_the_source(nlab):
    """The VRRP pair's virtual MAC in the allowed address pairs of ports in
    both clouds (as port security demands) is mobile: remote ports carry
    the pairs and mark the MAC mobile, and a VIP moves by GARP and by real
    keepalived, inside a site and across, with nothing left stale."""
    from gwagent.drill import garp, scenario as sc, vrrp
    s = sc.prepare(nlab, "red", timeout=60)
    try:
        def h3_registered():
            """dr-h3's remote port, with its virtual MAC marked mobile, is in site a"""
            return [p for p in lab_neutron.remote_ports_of(nlab, "a")
                    if p.origin.mac == s.holders["h3"].mac and s.vmac in p.mobile_macs]
        (h3_remote,) = labs.wait_for(h3_registered, 20.0)
        assert (s.vip, s.vmac) in {(p.ip_address, p.mac_address)
                                   for p in h3_remote.origin.allowed_address_pairs}
        for moves in (garp.run(s, [sc.VMAC, sc.OWN_MAC], sc.SCOPES, runs=1),
                      vrrp.run(s, [sc.VMAC], sc.SCOPES, runs=1, advert_ms=100)):
            for move in moves:
                assert [c.client for c in move.clients if c.first_reply_ms is None] == []
                assert [c.to_dict() for c in move.stale] == []
    finally:
        sc.teardown(nlab, s)

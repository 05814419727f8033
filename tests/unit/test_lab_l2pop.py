"""The lab's compute emulation as a client of the product: the desired
state of a compute, and the product's planner and Linux backend making it
so on the kernel model (tests/unit/fakes.py)."""
from __future__ import annotations

from gwagent.control.planner import plan
from gwagent.dataplane.linux import LinuxBackend, NetworkDevices
from gwagent.dataplane.netlink import Link
from gwagent.lab import l2pop
from gwagent.lab import topology as topo_mod
from gwagent.lab.names import bridge_name, vxlan_name
from gwagent.model import RemotePort
from gwagent.state import SITE, FloodEntry, MacEntry

from fakes import FakeKernel, _QuietMonitor

GW_A = "198.18.1.1"


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
            {"name": "va2", "site": "a", "compute": "a-cn2", "network": "red", "ip": "198.19.20.2",
             "allowed_address_pairs": [{"ip_address": "198.19.20.100",
                                        "mac_address": "00:00:5e:00:01:01"}]},
            {"name": "va3", "site": "a", "compute": "a-cn3", "network": "red", "ip": "198.19.20.3",
             "allowed_address_pairs": [{"ip_address": "198.19.20.100",
                                        "mac_address": "00:00:5e:00:01:01"}]},
            {"name": "vb1", "site": "b", "compute": "b-cn1", "network": "red", "ip": "198.19.20.4"},
            {"name": "vc1", "site": "c", "compute": "c-cn1", "network": "red", "ip": "198.19.20.5"},
        ]})


def compute(topo, name: str) -> l2pop.Compute:
    site = topo.site_of_compute(name)
    return l2pop.Compute(site.name, name, f"ns-{name}", site.compute_ip(name),
                         tuple(site.segmentation_ids))


def site_a(topo):
    """Site a's snapshot and registry: vc1 registered at a's gateway."""
    snap = topo_mod.site_snapshot(topo, "a")
    peer = topo_mod.site_snapshot(topo, "c").endpoints[0]
    return snap, [RemotePort(peer, GW_A, "a-gw")]


def backend() -> LinuxBackend:
    return LinuxBackend(None, nl=FakeKernel(), monitor=_QuietMonitor(), learning=True)


def test_remote_macs_at_their_vtep_floods_to_the_others_and_mobile_macs_nowhere():
    topo = three_sites()
    cn1 = compute(topo, "a-cn1")
    want = l2pop.desired_state(*site_a(topo), cn1)
    vm = topo.vm
    assert [(n.transit_vni, n.name, n.site, n.transit) for n in want.networks] == [
        (11, "red", (11, "198.18.1.11"), None)]
    # va2 and va3 claim the virtual MAC from two computes: mobile, not placed.
    assert want.macs == {MacEntry("red", vm("va2").mac, SITE, "198.18.1.12"),
                         MacEntry("red", vm("va3").mac, SITE, "198.18.1.13"),
                         MacEntry("red", vm("vc1").mac, SITE, GW_A)}
    assert want.floods == {FloodEntry("red", SITE, vtep)
                           for vtep in ("198.18.1.12", "198.18.1.13", GW_A)}


def test_the_products_backend_and_planner_program_a_compute_and_then_rest():
    topo = three_sites()
    cn1 = compute(topo, "a-cn1")
    dp = backend()
    want = l2pop.desired_state(*site_a(topo), cn1)
    assert l2pop.sync(dp, want, "a-cn1") > 0
    assert dp.observe() == want
    assert plan(want, dp.observe()) == []
    kernel = dp.nl
    # One bridge and one learning VXLAN port, the names the lab plugs VMs into.
    assert sorted(link.name for link in kernel.links() if link.name != "eth0") == [
        bridge_name(11), vxlan_name(11)]
    port = kernel.by_name(vxlan_name(11))
    assert (port.vni, port.local, port.vxlan_learning, port.port_learning) == (
        11, "198.18.1.11", True, True)
    # A VM's frame: a remote port goes to the gateway, a local one to its
    # compute, the mobile MAC floods (the compute learns it), as Neutron's would.
    kernel.add_link(Link(99, "tapva1", None, True, kernel.by_name(bridge_name(11)).index))
    assert kernel.forward("tapva1", topo.vm("vc1").mac) == {GW_A}
    assert kernel.forward("tapva1", topo.vm("va3").mac) == {"198.18.1.13"}
    assert kernel.forward("tapva1", "00:00:5e:00:01:01") == {"198.18.1.12", "198.18.1.13",
                                                             GW_A}


def test_a_mac_turning_mobile_loses_its_entry_and_back_gets_it_again():
    topo = three_sites()
    cn1 = compute(topo, "a-cn1")
    snap, remote = site_a(topo)
    dp = backend()
    single = topo_mod.replace_vms(topo, [v for v in topo_mod.to_dict(topo)["vms"]
                                         if v["name"] != "va3"])
    pinned = l2pop.desired_state(topo_mod.site_snapshot(single, "a"), remote, cn1)
    assert MacEntry("red", "00:00:5e:00:01:01", SITE, "198.18.1.12") in pinned.macs
    for want in (pinned, l2pop.desired_state(snap, remote, cn1), pinned):
        l2pop.sync(dp, want, "a-cn1")
        assert dp.observe() == want
    kernel = dp.nl
    kernel.add_link(Link(99, "tapva1", None, True, kernel.by_name(bridge_name(11)).index))
    assert kernel.forward("tapva1", "00:00:5e:00:01:01") == {"198.18.1.12"}


def test_lab_device_names_are_the_backends_for_a_one_sided_network():
    topo = three_sites()
    (net,) = compute(topo, "b-cn1").networks
    devs = NetworkDevices.of(net)
    assert devs.names == (bridge_name(22), vxlan_name(22))

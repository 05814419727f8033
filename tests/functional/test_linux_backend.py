"""The Linux backend against the real kernel, in throwaway namespaces.

Every test asserts what the kernel holds, read back through observe() and,
where it matters, independently through ``bridge -j fdb show``; none looks
at which calls were made. Needs root (namespaces, links, FDB).
"""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess

import pytest
from pyroute2 import IPRoute

from gwagent.control.planner import plan
from gwagent.dataplane import guard as guard_mod
from gwagent.dataplane import netlink
from gwagent.dataplane.linux import (FLOOD_MAC, FdbEntry, LinuxBackend, NetworkDevices,
                                     group_networks, kernel_entries, normalise)
from gwagent.dataplane.netlink import (NTF_EXT_LEARNED, NTF_MASTER, NTF_SELF, NUD_NOARP,
                                       NUD_PERMANENT, FdbRecord, FdbRequest, Link, Netlink)
from gwagent.model import Desired, Endpoint, Gateway, Network, Site, SiteSnapshot
from gwagent.state import (SITE, TRANSIT, Admission, FloodEntry, FloodOp, GatewayState,
                           MacEntry, MacOp, NetworkSpec, Segment, desired_dataplane, guards)

from netns import run, throwaway_netns

pytestmark = [pytest.mark.functional,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]

GW = {"a": Gateway("gw-a", "198.18.1.1", "198.18.200.1"),
      "b": Gateway("gw-b", "198.18.2.1", "198.18.200.2"),
      "c": Gateway("gw-c", "198.18.3.1", "198.18.200.3")}


def nets(site: str, names=("red", "blue")) -> tuple[Network, ...]:
    seg = {"a": 1000, "b": 2000, "c": 3000}[site]
    return tuple(Network(n, seg + i + 1, 5001 + i) for i, n in enumerate(names))


def ep(site: str, network: str, n: int, compute: int = 1) -> Endpoint:
    return Endpoint(site=site, network=network, mac=f"fa:16:3e:{ord(site):02x}:{ord(network[0]):02x}:{n:02x}",
                    vtep=f"198.18.{ord(site) - 96}.{10 + compute}", port_id=f"{site}-{network}-{n}")


def snapshot(site: str, endpoints=(), names=("red", "blue")) -> SiteSnapshot:
    return SiteSnapshot(Site(site, GW[site]), nets(site, names), tuple(endpoints))


def dataplane(a_eps=(), b_eps=(), c_eps=None, names=("red", "blue")):
    peers = [snapshot("b", b_eps, names)]
    if c_eps is not None:
        peers.append(snapshot("c", c_eps, names))
    return desired_dataplane(Desired(snapshot("a", a_eps, names), tuple(peers)))


STATE_A = dataplane([ep("a", "red", 1), ep("a", "blue", 1, compute=2)],
                    [ep("b", "red", 2), ep("b", "blue", 3)])
STATE_B = dataplane([ep("a", "red", 1, compute=2), ep("a", "red", 4)],
                    [ep("b", "red", 2), ep("b", "red", 5)],
                    c_eps=[ep("c", "blue", 6)])


@pytest.fixture
def ns():
    with throwaway_netns("gwt-") as name:
        yield name


@pytest.fixture
def backend(ns):
    be = LinuxBackend(ns)
    try:
        yield be
    finally:
        be.close()


def reconcile(be: LinuxBackend, desired) -> None:
    assert be.apply(plan(desired, be.observe())) == []


def assert_converged(be: LinuxBackend, desired) -> None:
    observed = be.observe()
    assert observed.networks == desired.networks
    assert observed.macs == desired.macs and observed.floods == desired.floods
    assert plan(desired, observed) == []


def kernel_fdb(ns: str) -> list[dict]:
    """Every FDB entry of the namespace, as iproute2 sees it."""
    return json.loads(run(ns, "bridge", "-j", "fdb", "show").stdout or "[]")


def owned_in_kernel(ns: str) -> set[FdbEntry]:
    out = set()
    for e in kernel_fdb(ns):
        if "extern_learn" in e.get("flags", []) and e["ifname"].startswith("gwa-"):
            out.add(FdbEntry(e["ifname"], e["mac"], e.get("dst")))
    return out


def links(ns: str) -> dict[str, dict]:
    return {l["ifname"]: l for l in json.loads(run(ns, "ip", "-j", "-d", "link", "show").stdout)}


def sh(ns: str, cmd: str) -> None:
    run(ns, *cmd.split())


# --- convergence -------------------------------------------------------------

def test_converges_from_empty_and_then_has_nothing_to_do(ns, backend):
    reconcile(backend, STATE_A)
    assert_converged(backend, STATE_A)
    assert owned_in_kernel(ns) == kernel_entries(STATE_A)
    kernel_links = links(ns)
    vt = kernel_links["gwa-vt-5001"]
    assert vt["linkinfo"]["info_data"]["id"] == 5001
    assert vt["linkinfo"]["info_data"]["local"] == "198.18.200.1"
    assert vt["linkinfo"]["info_data"]["port"] == 4789
    assert vt["linkinfo"]["info_data"]["learning"] is False
    assert vt["linkinfo"]["info_slave_data"]["learning"] is False
    assert vt["master"] == "gwa-br-5001"
    assert kernel_links["gwa-br-5001"]["ifalias"] == "red"
    assert all("UP" in kernel_links[n]["flags"] for net in STATE_A.networks for n in NetworkDevices.of(net).names)


def test_a_to_b_and_back_leaves_exactly_a(ns, backend):
    reconcile(backend, STATE_A)
    before = kernel_fdb(ns)
    reconcile(backend, STATE_B)
    assert_converged(backend, STATE_B)
    reconcile(backend, STATE_A)
    assert_converged(backend, STATE_A)
    after = kernel_fdb(ns)
    # the entries (bridge-generated local MACs aside) are those of A again
    key = lambda e: (e["ifname"], e["mac"], e.get("dst"), tuple(e.get("flags", [])))
    assert {key(e) for e in after if "extern_learn" in e.get("flags", [])} == \
        {key(e) for e in before if "extern_learn" in e.get("flags", [])}


def test_a_network_no_longer_desired_is_removed(ns, backend):
    reconcile(backend, STATE_A)
    only_red = dataplane([ep("a", "red", 1)], [ep("b", "red", 2)], names=("red",))
    reconcile(backend, only_red)
    assert_converged(backend, only_red)
    assert not {n for n in links(ns) if n.endswith("5002")}


def test_moved_mac_is_replaced_in_place(ns, backend):
    reconcile(backend, STATE_A)
    moved = dataplane([ep("a", "red", 1, compute=3), ep("a", "blue", 1, compute=2)],
                      [ep("b", "red", 2), ep("b", "blue", 3)])
    ops = plan(moved, backend.observe())
    mac = ep("a", "red", 1).mac
    assert MacOp("set", MacEntry("red", mac, SITE, "198.18.1.13"),
                 MacEntry("red", mac, SITE, "198.18.1.11")) in ops
    assert backend.apply(ops) == []
    assert_converged(backend, moved)
    entries = [e for e in kernel_fdb(ns) if e["mac"] == mac and "dst" in e]
    assert [(e["ifname"], e["dst"]) for e in entries] == [("gwa-vl-5001", "198.18.1.13")]


def test_mac_moving_from_site_to_peer_moves_the_bridge_entry(ns, backend):
    """The same MAC leaves site a and shows up behind peer b."""
    reconcile(backend, STATE_A)
    mac = ep("a", "red", 1).mac
    moved_ep = Endpoint(site="b", network="red", mac=mac, vtep="198.18.2.11", port_id="b-red-moved")
    moved = dataplane([ep("a", "blue", 1, compute=2)],
                      [ep("b", "red", 2), ep("b", "blue", 3), moved_ep])
    reconcile(backend, moved)
    assert_converged(backend, moved)
    bridge_entries = [e for e in kernel_fdb(ns) if e["mac"] == mac and "master" in e]
    assert [e["ifname"] for e in bridge_entries] == ["gwa-vt-5001"]


def test_one_sided_learning_network_as_the_labs_computes_use_it(ns):
    """A bridge and a site port only, VXLAN and bridge-port learning on as
    the kernel reads them back, and then nothing to do."""
    net = NetworkSpec(1001, "red", Segment(1001, "198.18.1.11"), None)
    want = GatewayState((net,), frozenset({MacEntry("red", "fa:16:3e:00:00:01", SITE,
                                                    "198.18.1.12")}),
                        frozenset({FloodEntry("red", SITE, "198.18.1.12")}))
    be = LinuxBackend(ns, learning=True)
    try:
        reconcile(be, want)
        assert_converged(be, want)
    finally:
        be.close()
    kernel_links = links(ns)
    assert sorted(n for n in kernel_links if n.startswith("gwa-")) == ["gwa-br-1001",
                                                                      "gwa-vl-1001"]
    vl = kernel_links["gwa-vl-1001"]
    assert vl["linkinfo"]["info_data"]["learning"] is True
    assert vl["linkinfo"]["info_slave_data"]["learning"] is True
    assert owned_in_kernel(ns) == kernel_entries(want)
    # The same devices seen by a gateway's backend (no learning) differ.
    with LinuxBackend(ns) as gateway:
        assert gateway.observe().networks != want.networks


# --- repair ------------------------------------------------------------------

def test_entry_deleted_by_hand_is_restored(ns, backend):
    reconcile(backend, STATE_A)
    victim = FdbEntry("gwa-vt-5001", ep("b", "red", 2).mac, "198.18.200.2")
    with IPRoute(netns=ns) as ipr:
        index = ipr.link_lookup(ifname=victim.dev)[0]
        ipr.fdb("del", ifindex=index, lladdr=victim.mac, dst=victim.dst)
    assert MacEntry("red", victim.mac, TRANSIT, victim.dst) not in backend.observe().macs
    reconcile(backend, STATE_A)
    assert_converged(backend, STATE_A)
    assert victim in owned_in_kernel(ns)


def test_device_deleted_by_hand_is_restored(ns, backend):
    reconcile(backend, STATE_A)
    sh(ns, "ip link del gwa-vt-5001")
    reconcile(backend, STATE_A)
    assert_converged(backend, STATE_A)
    assert owned_in_kernel(ns) == kernel_entries(STATE_A)


def test_bridge_deleted_by_hand_is_restored(ns, backend):
    reconcile(backend, STATE_A)
    sh(ns, "ip link del gwa-br-5002")
    reconcile(backend, STATE_A)
    assert_converged(backend, STATE_A)
    assert links(ns)["gwa-vl-5002"]["master"] == "gwa-br-5002"


def test_incompatible_device_is_recreated(ns, backend, caplog):
    sh(ns, "ip link add gwa-vt-5001 type vxlan id 7 dstport 4789 local 198.18.200.1")
    reconcile(backend, STATE_A)
    assert_converged(backend, STATE_A)
    assert links(ns)["gwa-vt-5001"]["linkinfo"]["info_data"]["id"] == 5001
    assert "VNI is 7, want 5001" in caplog.text


def test_wrong_kind_and_learning_are_repaired(ns, backend):
    sh(ns, "ip link add gwa-vl-5001 type bridge")
    reconcile(backend, STATE_A)
    sh(ns, "ip link set gwa-vt-5002 type bridge_slave learning on")
    sh(ns, "ip link set gwa-vl-5002 nomaster")
    sh(ns, "ip link set gwa-br-5001 down")
    assert plan(STATE_A, backend.observe()) != []
    reconcile(backend, STATE_A)
    assert_converged(backend, STATE_A)
    kernel_links = links(ns)
    assert kernel_links["gwa-vl-5001"]["linkinfo"]["info_kind"] == "vxlan"
    assert kernel_links["gwa-vt-5002"]["linkinfo"]["info_slave_data"]["learning"] is False
    assert kernel_links["gwa-vl-5002"]["master"] == "gwa-br-5002"


def test_bridge_alias_carries_the_network_name(ns, backend):
    reconcile(backend, STATE_A)
    sh(ns, "ip link set gwa-br-5001 alias someone-else")
    observed = backend.observe()
    assert {n.name for n in observed.networks} == {"someone-else", "blue"}
    reconcile(backend, STATE_A)
    assert_converged(backend, STATE_A)


# --- ownership -----------------------------------------------------------------

FOREIGN_CMDS = [
    "ip link add fbr0 type bridge",
    "ip link add fvx0 type vxlan id 77 dstport 4789 local 198.18.9.1",
    "ip link set fvx0 master fbr0",
    "ip link add keep0 type veth peer name keep1",
    "ip link add gwb0 type veth peer name gwb1",
    "bridge fdb add 02:00:00:00:00:01 dev fvx0 dst 198.18.9.9 self permanent",
    "bridge fdb add 02:00:00:00:00:02 dev fvx0 dst 198.18.9.9 self permanent extern_learn",
    "bridge fdb add 02:00:00:00:00:01 dev fvx0 master static",
    "bridge fdb append 00:00:00:00:00:00 dev fvx0 dst 198.18.9.8 self permanent",
]
UNMARKED_ON_OWNED = [
    "bridge fdb add 02:00:00:00:00:99 dev gwa-vt-5001 dst 198.18.9.9 self permanent",
    "bridge fdb add 02:00:00:00:00:98 dev gwa-vt-5001 master static",
]


def foreign_view(ns: str) -> set[tuple]:
    """Every FDB entry that is not ours, less those the kernel makes by
    itself (permanent local entries without a dst: port and group MACs)."""
    out = set()
    for e in kernel_fdb(ns):
        flags = tuple(e.get("flags", []))
        if e["ifname"].startswith("gwa-") and "extern_learn" in flags:
            continue
        if e.get("state") == "permanent" and "dst" not in e:
            continue
        out.add((e["ifname"], e["mac"], e.get("dst"), flags, e.get("state")))
    return out


def test_foreign_links_and_entries_are_left_alone(ns, backend):
    for cmd in FOREIGN_CMDS:
        sh(ns, cmd)
    reconcile(backend, STATE_A)
    for cmd in UNMARKED_ON_OWNED:
        sh(ns, cmd)
    foreign = foreign_view(ns)
    assert ("gwa-vt-5001", "02:00:00:00:00:99", "198.18.9.9", ("self",), "permanent") in foreign
    assert ("fvx0", "02:00:00:00:00:01", None, (), "static") in foreign

    assert_converged(backend, STATE_A)  # unmarked entries are not ours: not observed
    reconcile(backend, STATE_B)
    reconcile(backend, STATE_A)
    assert_converged(backend, STATE_A)
    assert foreign <= foreign_view(ns)

    assert backend.remove_all() == 6
    remaining = links(ns)
    assert {"fbr0", "fvx0", "keep0", "keep1", "gwb0", "gwb1", "lo"} == set(remaining)
    assert {e for e in foreign if not e[0].startswith("gwa-")} <= foreign_view(ns)
    assert backend.observe().networks == ()


def test_foreign_append_to_our_flood_entry_is_left_alone(ns, backend):
    """The vxlan driver keeps flags per MAC, not per destination, and a user
    add without extern_learn clears the flag for good. A foreign destination
    appended to our flood entry therefore turns the whole entry foreign: it
    is left alone (never deleted), our destinations stay in it, and every
    pass re-appends them (a no-op in the kernel, visible in the op counts)."""
    reconcile(backend, STATE_A)
    sh(ns, "bridge fdb append 00:00:00:00:00:00 dev gwa-vt-5001 dst 198.18.9.7 self permanent")
    reconcile(backend, STATE_A)
    flood = {e.get("dst") for e in kernel_fdb(ns)
             if e["ifname"] == "gwa-vt-5001" and e["mac"] == FLOOD_MAC}
    assert flood == {"198.18.200.2", "198.18.9.7"}
    ops = plan(STATE_A, backend.observe())
    assert ops == [FloodOp("add", FloodEntry("red", TRANSIT, "198.18.200.2"))]


def test_remove_all_on_empty_namespace(backend):
    assert backend.remove_all() == 0


# --- bulk errors and events -------------------------------------------------

def test_bulk_errors_are_per_entry(ns, backend):
    reconcile(backend, STATE_A)
    nl = Netlink(ns)
    try:
        index = nl.link("gwa-vt-5001").index
        reqs = [FdbRequest("replace", index, f"02:00:00:01:00:{i:02x}", "198.18.200.2")
                for i in range(10)]
        reqs.insert(4, FdbRequest("replace", 999999, "02:00:00:02:00:01", "198.18.200.2"))
        # replacing a flood (non-unicast) entry is refused by the vxlan driver
        reqs.insert(7, FdbRequest("replace", index, FLOOD_MAC, "198.18.200.9"))
        reqs.append(FdbRequest("delete", index, "02:00:00:02:00:03", "198.18.200.2"))
        errors = nl.fdb_bulk(reqs)
    finally:
        nl.close()
    assert sorted(errors) == [4, 7]
    assert isinstance(errors[4], netlink.NotFound)
    assert isinstance(errors[7], netlink.NotSupported)
    assert "non-unicast" in str(errors[7])  # the kernel's own words (extended ack)
    landed = {(e["mac"], e.get("dst")) for e in kernel_fdb(ns) if e["ifname"] == "gwa-vt-5001"}
    assert {(f"02:00:00:01:00:{i:02x}", "198.18.200.2") for i in range(10)} <= landed
    assert (FLOOD_MAC, "198.18.200.9") not in landed


def test_bulk_errors_across_windows_and_on_the_acked_request(ns, backend, monkeypatch):
    """Only the last request of a window asks for an ack; failures anywhere,
    including that last one and unencodable ones, still come back alone."""
    monkeypatch.setattr(netlink, "WINDOW", 4)
    reconcile(backend, STATE_A)
    nl = Netlink(ns)
    try:
        index = nl.link("gwa-vt-5002").index
        reqs = [FdbRequest("replace", index, f"02:00:00:04:00:{i:02x}", "198.18.200.2")
                for i in range(11)]
        reqs[3] = FdbRequest("replace", 999999, "02:00:00:04:01:03", "198.18.200.2")
        reqs[7] = FdbRequest("replace", index, "not-a-mac", "198.18.200.2")
        reqs[10] = FdbRequest("replace", 999999, "02:00:00:04:01:10", "198.18.200.2")
        errors = nl.fdb_bulk(reqs)
        assert sorted(errors) == [3, 7, 10]
        assert isinstance(errors[7], netlink.Invalid)
        assert nl.fdb_bulk([FdbRequest("delete", index, "02:00:00:04:00:00", "198.18.200.2")] * 3) == {}
    finally:
        nl.close()
    landed = {e["mac"] for e in kernel_fdb(ns) if e["ifname"] == "gwa-vt-5002"}
    assert {f"02:00:00:04:00:{i:02x}" for i in (1, 2, 4, 5, 6, 8, 9)} <= landed
    assert "02:00:00:04:00:00" not in landed


def test_apply_reports_failed_ops_and_carries_on(ns, backend):
    reconcile(backend, STATE_A)
    good = MacEntry("red", "02:00:00:03:00:01", TRANSIT, "198.18.200.2")
    ops = [MacOp("set", MacEntry("green", "02:00:00:03:00:02", TRANSIT, "198.18.200.2")),
           MacOp("set", good)]
    sh(ns, "ip link del gwa-vt-5002")  # gone since the last observe
    ops.append(MacOp("set", MacEntry("blue", "02:00:00:03:00:03", TRANSIT, "198.18.200.2")))
    errors = backend.apply(ops)
    assert [e.op for e in errors] == [ops[0], ops[2]]
    assert "green" in errors[0].error and "no devices" in errors[0].error
    assert "gwa-vt-5002" in errors[1].error
    assert FdbEntry("gwa-vt-5001", good.mac, good.vtep) in owned_in_kernel(ns)


def test_events_report_a_foreign_delete_of_an_owned_entry(ns, backend):
    reconcile(backend, STATE_A)
    # the kernel's linkwatch reports our links' carrier late (at most once a
    # second): wait past it, or one of ours lands in the foreign step
    wait_for_quiet(backend, quiet=1.2)
    assert backend.drain_events() is False
    sh(ns, "ip link add keep0 type veth peer name keep1")
    sh(ns, "ip link add fbr0 type bridge")
    assert backend.drain_events() is False  # foreign only
    sh(ns, f"bridge fdb del {ep('b', 'red', 2).mac} dev gwa-vt-5001 dst 198.18.200.2 self")
    assert backend.drain_events() is True
    assert backend.drain_events() is False


def test_a_big_writes_echoes_are_its_own_and_a_foreign_change_after_them_is_not(ns):
    """A write of more than EXPECT_EACH requests expects its echoes per
    device, not per entry (a cold start's millions): none of them is taken
    for a foreign change, and once the echo window is over a foreign
    delete on the same device is reported."""
    now = [0.0]
    be = LinuxBackend(ns, clock=lambda: now[0])
    be.EXPECT_EACH = 2
    try:
        reconcile(be, STATE_A)
        wait_for_quiet(be, quiet=1.2)
        more = dataplane([ep("a", "red", 1), ep("a", "blue", 1, compute=2)],
                         [ep("b", "red", n) for n in range(2, 12)] + [ep("b", "blue", 3)])
        reconcile(be, more)
        assert be.drain_events() is False and not be.take_changes()
        now[0] += be.ECHO_SECONDS + 1
        sh(ns, f"bridge fdb del {ep('b', 'red', 7).mac} dev gwa-vt-5001 dst 198.18.200.2 self")
        assert be.drain_events() is True
        assert be.take_changes().macs == {("red", ep("b", "red", 7).mac)}
    finally:
        be.close()


def test_events_say_which_mac_and_flood_changed_behind_our_back(ns, backend):
    """What a foreign change reports (Backend.take_changes): the MAC whose
    entry went, a flood destination gone or added; our own writes none."""
    reconcile(backend, STATE_A)
    wait_for_quiet(backend)
    assert not backend.take_changes()
    red2 = ep("b", "red", 2)
    sh(ns, f"bridge fdb del {red2.mac} dev gwa-vt-5001 dst 198.18.200.2 self")
    sh(ns, "bridge fdb append 00:00:00:00:00:00 dev gwa-vt-5001 dst 198.18.200.9 self "
           "extern_learn")
    sh(ns, "bridge fdb del 00:00:00:00:00:00 dev gwa-vt-5001 dst 198.18.200.2 self")
    changes = backend.take_changes() if backend.drain_events() else None
    assert changes is not None and not changes.full
    assert changes.macs == {("red", red2.mac)}
    assert changes.floods == {FloodEntry("red", TRANSIT, "198.18.200.9"): True,
                              FloodEntry("red", TRANSIT, "198.18.200.2"): False}


def test_lost_events_say_so_and_a_read_is_due(ns):
    """An event socket too small for a burst (ENOBUFS): the backend says
    events were lost, so the agent reads everything at once."""
    be = LinuxBackend(ns, monitor=netlink.Monitor(ns, rcvbuf=4096))
    try:
        many = dataplane([], [Endpoint(site="b", network="red", vtep="198.18.2.11",
                                       mac=f"fa:16:3e:09:{i >> 8:02x}:{i & 255:02x}",
                                       port_id=f"p{i}") for i in range(3000)])
        reconcile(be, many)
        be.drain_events()
        be.take_changes()
        batch = "".join(f"fdb del {m.mac} dev gwa-vt-5001 dst {m.vtep} self\n"
                        for m in many.macs)
        subprocess.run(["ip", "netns", "exec", ns, "bridge", "-batch", "-"], input=batch,
                       text=True, check=True)
        assert be.drain_events() is True
        assert "lost" in (be.take_changes().full or "")
    finally:
        be.close()


def wait_for_quiet(backend, quiet: float = 0.3, deadline: float = 10.0) -> None:
    """Drain events until none came for ``quiet`` seconds (the kernel's
    linkwatch reports link changes late), then forget what they said."""
    import select
    import time
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        backend.drain_events()
        if not select.select([backend.fileno()], [], [], quiet)[0]:
            backend.take_changes()
            return
    raise AssertionError(f"events kept coming for {deadline}s")


def test_events_report_owned_link_changes(ns, backend):
    reconcile(backend, STATE_A)
    backend.drain_events()
    sh(ns, "ip link del gwa-vl-5002")
    assert backend.drain_events() is True


def test_fileno_is_readable_after_a_change(ns, backend):
    import select
    reconcile(backend, STATE_A)
    backend.drain_events()
    sh(ns, "ip link set gwa-br-5001 down")
    readable, _, _ = select.select([backend.fileno()], [], [], 2.0)
    assert readable and backend.drain_events()


def test_missing_namespace_is_an_error_not_created():
    with pytest.raises(netlink.NetlinkError):
        LinuxBackend("gwt-does-not-exist")
    assert "gwt-does-not-exist" not in os.listdir("/var/run/netns")


# --- the normaliser on crafted records -------------------------------------------

def _links():
    br = Link(10, "gwa-br-5001", "bridge", True, None, alias="red")
    vl = Link(11, "gwa-vl-5001", "vxlan", True, 10, vni=1001, local="198.18.1.1", port=4789)
    vt = Link(12, "gwa-vt-5001", "vxlan", True, 10, vni=5001, local="198.18.200.1", port=4789)
    return {l.index: l for l in (br, vl, vt)}


def rec(ifindex, mac, dst=None, flags=NTF_SELF | NTF_EXT_LEARNED, state=NUD_PERMANENT | NUD_NOARP,
        vlan=0, master=0, vni=None, port=None):
    return FdbRecord(ifindex, state, flags, mac, dst, vlan, master, vni, port)


def _normalise(records):
    owned = _links()
    return normalise(records, owned, group_networks(owned.values()))


def test_normalise_vxlan_entries_with_and_without_the_device_vni():
    pair = [rec(12, f"02:00:00:00:00:0{i}", flags=NTF_MASTER | NTF_EXT_LEARNED, state=2)
            for i in range(1, 5)]
    records = pair + [rec(12, "02:00:00:00:00:01", "198.18.200.2"),
                      rec(12, "02:00:00:00:00:02", "198.18.200.2", vni=5001),
                      rec(12, "02:00:00:00:00:03", "198.18.200.2", vni=42),
                      rec(12, "02:00:00:00:00:04", "198.18.200.2", port=8472),
                      rec(12, FLOOD_MAC, "198.18.200.2"),
                      rec(12, FLOOD_MAC, "198.18.200.3")]
    macs, floods, broken = _normalise(records)
    assert macs == {MacEntry("red", "02:00:00:00:00:01", TRANSIT, "198.18.200.2"),
                    MacEntry("red", "02:00:00:00:00:02", TRANSIT, "198.18.200.2"),
                    # another VNI or port is not ours: the MAC is half there
                    MacEntry("red", "02:00:00:00:00:03", TRANSIT, None),
                    MacEntry("red", "02:00:00:00:00:04", TRANSIT, None)}
    assert floods == {FloodEntry("red", TRANSIT, "198.18.200.2"),
                      FloodEntry("red", TRANSIT, "198.18.200.3")}
    assert set(broken) == {("red", "02:00:00:00:00:03"), ("red", "02:00:00:00:00:04")}


def test_normalise_bridge_entries_merge_vlans_and_drop_what_is_not_ours():
    records = [rec(11, "02:00:00:00:00:01", flags=NTF_EXT_LEARNED, state=2, master=10),
               rec(11, "02:00:00:00:00:01", flags=NTF_EXT_LEARNED, state=2, master=10, vlan=1),
               rec(11, "02:00:00:00:00:01", "198.18.1.11"),
               rec(12, "02:00:00:00:00:02", flags=NTF_MASTER | NTF_EXT_LEARNED, state=2),
               # the port's own MAC, the bridge's self entries: not ours
               rec(11, "9a:34:c7:4d:44:73", flags=0, state=NUD_PERMANENT, master=10),
               rec(10, "33:33:00:00:00:01", flags=NTF_SELF, state=NUD_PERMANENT),
               # unmarked static entry on an owned port; marked entry on a foreign device
               rec(12, "02:00:00:00:00:03", flags=0, state=NUD_NOARP, master=10),
               rec(99, "02:00:00:00:00:04", flags=NTF_EXT_LEARNED, master=98),
               rec(12, "02:00:00:00:00:05", "198.18.9.9", flags=NTF_SELF)]
    macs, floods, broken = _normalise(records)
    assert macs == {MacEntry("red", "02:00:00:00:00:01", SITE, "198.18.1.11"),
                    MacEntry("red", "02:00:00:00:00:02", TRANSIT, None)}
    assert floods == frozenset()
    assert broken == {("red", "02:00:00:00:00:02"): [FdbEntry("gwa-vt-5001", "02:00:00:00:00:02")]}


def test_normalise_reports_halves_on_two_sides_and_two_destinations_as_broken():
    mac = "02:00:00:00:00:07"
    records = [rec(11, mac, flags=NTF_EXT_LEARNED, state=2, master=10),
               rec(11, mac, "198.18.1.11"), rec(11, mac, "198.18.1.12"),
               rec(12, mac, "198.18.200.2")]
    macs, _, broken = _normalise(records)
    assert macs == {MacEntry("red", mac, SITE, None)}
    assert set(broken[("red", mac)]) == set([
        FdbEntry("gwa-vl-5001", mac), FdbEntry("gwa-vl-5001", mac, "198.18.1.11"),
        FdbEntry("gwa-vl-5001", mac, "198.18.1.12"), FdbEntry("gwa-vt-5001", mac, "198.18.200.2")])


def test_decode_of_crafted_dump_bytes():
    def msg(ifindex, flags, state, attrs):
        body = netlink._NDMSG.pack(netlink.AF_BRIDGE, ifindex, state, flags, 0)
        for atype, payload in attrs:
            a = netlink._ATTR.pack(4 + len(payload), atype) + payload
            body += a + b"\0" * (-len(a) % 4)
        return netlink._HDR.pack(16 + len(body), netlink.RTM_NEWNEIGH, 2, 1, 0) + body
    mac = bytes.fromhex("020000000001")
    buf = (msg(12, NTF_SELF | NTF_EXT_LEARNED, 0xc0,
               [(netlink.NDA_LLADDR, mac), (netlink.NDA_DST, bytes([198, 18, 200, 2])),
                (netlink.NDA_VNI, (42).to_bytes(4, "little")), (3, b"\0" * 16)])
           + msg(11, NTF_EXT_LEARNED, 2, [(netlink.NDA_LLADDR, mac),
                                          (netlink.NDA_MASTER, (10).to_bytes(4, "little")),
                                          (netlink.NDA_VLAN, (1).to_bytes(2, "little"))])
           + netlink._HDR.pack(20, netlink.NLMSG_DONE, 2, 1, 0) + b"\0" * 4)
    out = []
    assert netlink.decode_fdb_dump(buf, out) is True
    assert out == [FdbRecord(12, 0xc0, NTF_SELF | NTF_EXT_LEARNED, "02:00:00:00:00:01",
                             "198.18.200.2", 0, 0, 42, None),
                   FdbRecord(11, 2, NTF_EXT_LEARNED, "02:00:00:00:00:01", None, 1, 10, None, None)]


def test_the_ingress_filter_is_a_table_of_its_own_and_touches_no_other(ns, backend):
    """Its table follows the admission (sets replaced in place, the drop
    counters kept), comes back after a delete by hand, goes when the
    filter is off; a table of someone else's in the same namespace is
    never read or changed."""
    theirs = ("add table inet theirs\n"
              "add chain inet theirs c { type filter hook prerouting priority -300; }\n"
              "add rule inet theirs c udp dport 4789 counter\n")
    subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=theirs, text=True,
                   check=True)
    before = run(ns, "nft", "list", "table", "inet", "theirs").stdout

    def ours():
        out = run(ns, "nft", "-j", "list", "table", "inet", "gwagent", check=False)
        if out.returncode:
            return None
        items = json.loads(out.stdout)["nftables"]
        return {i["set"]["name"]: sorted(i["set"].get("elem", [])) for i in items
                if "set" in i and i["set"]["name"].endswith("_admit")}
    adm = Admission("198.18.1.1", frozenset({"198.18.1.11", "198.18.1.12"}), "198.18.200.1",
                    frozenset({"198.18.200.2"}))
    backend.admit(adm)
    assert ours() == {"site_admit": ["198.18.1.11", "198.18.1.12"],
                      "transit_admit": ["198.18.200.2"]}
    moved = dataclasses.replace(adm, site_sources=frozenset({"198.18.1.13"}))
    backend.admit(moved)
    assert ours()["site_admit"] == ["198.18.1.13"]
    run(ns, "nft", "delete", "table", "inet", "gwagent")
    backend.admit(moved)
    assert ours()["site_admit"] == ["198.18.1.13"]
    backend.admit(None)
    assert ours() is None
    assert backend.remove_all() == 0
    assert run(ns, "nft", "list", "table", "inet", "theirs").stdout == before


@pytest.mark.parametrize("chunk", [guard_mod.CHUNK, 2], ids=["one-transaction", "chunks-of-2"])
def test_the_mac_guard_is_a_table_of_its_own_follows_the_guards_and_is_audited(
        ns, chunk, monkeypatch):
    """Its set holds a member per guard (the VXLAN port a MAC may not come
    in by); a change adds and deletes only what differs; a set flushed by
    hand is refilled at the next audit, a table deleted by hand at the next
    pass; off, or at cleanup, the table goes; a table of someone else's in
    the bridge family is never touched. The same when the members are
    written a few to a transaction, as a big world's are."""
    monkeypatch.setattr(guard_mod, "CHUNK", chunk)
    subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], text=True, check=True,
                   input="add table bridge theirs\nadd chain bridge theirs c "
                         "{ type filter hook prerouting priority 0; }\n")
    before = run(ns, "nft", "list", "table", "bridge", "theirs").stdout
    clock = [0.0]
    be = LinuxBackend(ns, clock=lambda: clock[0])
    try:
        reconcile(be, STATE_A)

        def members():
            out = run(ns, "nft", "-j", "list", "set", "bridge", "gwagent", "guard", check=False)
            if out.returncode:
                return None
            [s] = [i["set"] for i in json.loads(out.stdout)["nftables"] if "set" in i]
            return sorted(tuple(e["concat"]) for e in s.get("elem", []))
        want = guards(STATE_A, {})
        be.guard(want)
        expected = sorted((f"gwa-{'vt' if g.side == TRANSIT else 'vl'}-"
                           f"{5001 if g.network == 'red' else 5002}", g.mac) for g in want)
        assert members() == expected and len(expected) == len(STATE_A.macs)
        fewer = frozenset(list(want)[1:])
        be.guard(fewer)
        assert len(members()) == len(expected) - 1
        run(ns, "nft", "flush", "set", "bridge", "gwagent", "guard")
        be.guard(fewer)
        assert members() == []                    # the audit is not due yet
        clock[0] += 61
        be.guard(fewer)
        assert len(members()) == len(expected) - 1
        run(ns, "nft", "delete", "table", "bridge", "gwagent")
        be.guard(fewer)
        kept = members()
        assert len(kept) == len(expected) - 1
        # a port made again has a new index: its members follow it
        run(ns, "ip", "link", "del", "gwa-vt-5001")
        reconcile(be, STATE_A)
        be.guard(fewer)
        assert members() == kept
        be.guard(None)
        assert members() is None
        be.guard(want)
        assert be.remove_all() > 0 and members() is None
    finally:
        be.close()
    assert run(ns, "nft", "list", "table", "bridge", "theirs").stdout == before


def test_an_fdb_dump_left_early_leaves_the_socket_to_the_next_request(ns):
    """The dump is read a kernel message at a time; a reader that stops
    early (an exception in the caller) leaves no rest of it behind for the
    next request to trip on."""
    sh(ns, "ip link add vx0 type vxlan id 7 local 198.18.1.1 dstport 4789 nolearning")
    batch = "".join(f"fdb add 02:00:00:00:{i >> 8:02x}:{i & 255:02x} dev vx0 "
                    f"dst 198.18.9.9 self permanent\n" for i in range(3000))
    subprocess.run(["ip", "netns", "exec", ns, "bridge", "-batch", "-"], input=batch,
                   text=True, check=True)
    nl = netlink.Netlink(ns)
    try:
        whole = [r for r in nl.fdb_dump() if r.dst == "198.18.9.9"]
        assert len(whole) == 3000
        early = nl.fdb_dump()
        for _ in range(5):
            next(early)
        early.close()
        assert [r for r in nl.fdb_dump() if r.dst == "198.18.9.9"] == whole
        assert nl.link("vx0") is not None
    finally:
        nl.close()


def test_links_decoded_by_hand_say_what_pyroute2_says(ns):
    """The adapter's own link decoder (the audit's first read) against
    pyroute2's, over every kind of link the backend meets: a bridge with
    and without an alias, VXLAN devices learning or not, ports learning or
    not, down and up, other MTUs, a foreign veth, a missing name."""
    for cmd in ("ip link add gwa-br-1 type bridge",
                "ip link set gwa-br-1 alias red up",
                "ip link add gwa-br-2 type bridge",
                "ip link add gwa-vl-1 type vxlan id 1001 local 198.18.1.1 dstport 4789 nolearning",
                "ip link set gwa-vl-1 master gwa-br-1 mtu 8950 up",
                "ip link set gwa-vl-1 type bridge_slave learning off",
                "ip link add gwa-vt-1 type vxlan id 5001 local 198.18.0.1 dstport 4790 learning",
                "ip link set gwa-vt-1 master gwa-br-1",
                "ip link add gwa-vl-2 type vxlan id 7 local 2001:db8::1 dstport 4789",
                "ip link add v0 type veth peer name v1"):
        sh(ns, cmd)
    nl = netlink.Netlink(ns)
    try:
        ours = nl.links()
        theirs = [pyroute2_link(m) for m in nl.ipr.link("dump")]
        assert ours == theirs and len(ours) == 8
        assert nl.link("gwa-vt-1") == next(link for link in theirs if link.name == "gwa-vt-1")
        assert nl.link("gwa-nothing") is None
    finally:
        nl.close()


def pyroute2_link(msg) -> netlink.Link:
    """A Link from pyroute2's decoding of the same message (the adapter's
    own decoder before it was replaced, with the IPv6 local address it
    missed)."""
    info = msg.get("linkinfo")
    kind = data = slave = None
    if info is not None:
        kind, data = info.get("kind"), info.get("data")
        if info.get("slave_kind") == "bridge":
            slave = info.get("slave_data")
    vxlan: dict = {}
    if kind == "vxlan" and data is not None:
        vxlan = dict(vni=data.get("IFLA_VXLAN_ID"),
                     local=data.get("IFLA_VXLAN_LOCAL") or data.get("IFLA_VXLAN_LOCAL6"),
                     port=data.get("IFLA_VXLAN_PORT"),
                     vxlan_learning=bool(data.get("IFLA_VXLAN_LEARNING")))
    return netlink.Link(index=msg["index"], name=msg.get("ifname"), kind=kind,
                        up=bool(msg["flags"] & 1), master=msg.get("master") or None,
                        alias=msg.get("ifalias"),
                        port_learning=None if slave is None else bool(
                            slave.get("IFLA_BRPORT_LEARNING")),
                        mtu=msg.get("mtu"), **vxlan)

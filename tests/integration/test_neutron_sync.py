"""Two real Neutron servers: site A's ports become remote ports in site B and
back, through the Neutron source and registry, the way the agent drives them."""
from __future__ import annotations

import dataclasses
import time

import pytest

from gwagent.control.sources import SourceError
from gwagent.model import Gateway
from gwagent.neutron.source import DEVICE_OWNER, owner_device_id
from syncer import sync_once

CIDR = "198.19.50.0/24"


@dataclasses.dataclass
class Pair:
    a: object  # SiteEnv
    b: object
    net: str
    net_a: dict
    net_b: dict
    gw_a: Gateway
    gw_b: Gateway

    def sources(self):
        nets = {self.net: 5001}
        return self.a.source(self.gw_a, nets), self.b.source(self.gw_b, nets)


@pytest.fixture
def pair(sites, computes, uniq):
    a, b = sites["site-a"], sites["site-b"]
    net = f"blue-{uniq}"
    return Pair(a, b, net, a.admin.network(net, CIDR), b.admin.network(net, CIDR),
                Gateway(f"gwa-{uniq}", "198.18.0.1", "198.19.0.1"),
                Gateway(f"gwb-{uniq}", "198.18.0.2", "198.19.0.2"))


def remote_in(site, gw: Gateway) -> list[dict]:
    return site.admin.ports(device_owner=DEVICE_OWNER, device_id=owner_device_id(gw.host))


def by_origin(ports: list[dict]) -> dict:
    return {p["binding:profile"]["gwagent"]["origin_port"]: p for p in ports}


def test_ports_appear_as_remote_ports_in_the_other_site_and_back(pair):
    a, b = pair.a, pair.b
    va = a.admin.port(pair.net_a, "cn-a1", fixed_ips=[{"ip_address": "198.19.50.11"}],
                      allowed_address_pairs=[{"ip_address": "198.19.50.100",
                                              "mac_address": "00:00:5e:00:01:07"}])
    vb = b.admin.port(pair.net_b, "cn-b1", fixed_ips=[{"ip_address": "198.19.50.21"}])
    unbound = a.admin.port(pair.net_a, None, fixed_ips=[{"ip_address": "198.19.50.12"}])
    src_a, src_b = pair.sources()

    snap_a = src_a.snapshot()
    assert [n.name for n in snap_a.networks] == [pair.net]
    assert snap_a.networks[0].segmentation_id == pair.net_a["provider:segmentation_id"]
    assert 1000 <= snap_a.networks[0].segmentation_id < 2000  # each site its own VNI
    assert 2000 <= src_b.snapshot().networks[0].segmentation_id < 3000
    (ep,) = snap_a.endpoints  # the unbound port has no VTEP
    assert (ep.mac, ep.ips, ep.vtep, ep.port_id) == (
        va["mac_address"], ("198.19.50.11",), "198.18.1.1", va["id"])
    assert [(p.ip_address, p.mac_address) for p in ep.allowed_address_pairs] == [
        ("198.19.50.100", "00:00:5e:00:01:07")]

    assert sync_once(src_b, [src_a])["errors"] == {}
    assert sync_once(src_a, [src_b])["errors"] == {}

    (rb,) = remote_in(b, pair.gw_b)
    assert rb["mac_address"] == va["mac_address"]
    assert [f["ip_address"] for f in rb["fixed_ips"]] == ["198.19.50.11"]
    assert rb["allowed_address_pairs"] == [{"ip_address": "198.19.50.100",
                                            "mac_address": "00:00:5e:00:01:07"}]
    assert rb["binding:host_id"] == pair.gw_b.host
    assert rb["binding:profile"]["gwagent"] == {
        "tunnel_ip": "198.18.0.2", "gateway": pair.gw_b.host, "origin_site": "site-a",
        "origin_port": va["id"], "origin_vtep": "198.18.1.1", "network": pair.net}
    assert rb["device_id"] == f"gwagent:{pair.gw_b.host}"
    # bound by the gwagent driver, no agent on the gateway host
    full = b.admin.get(rb["id"])
    assert (full["status"], full["binding:vif_type"]) == ("ACTIVE", "other")

    (ra,) = remote_in(a, pair.gw_a)
    assert (ra["mac_address"], ra["binding:profile"]["gwagent"]["tunnel_ip"]) == (
        vb["mac_address"], "198.18.0.1")
    assert unbound["id"] not in by_origin(remote_in(b, pair.gw_b))

    # the registry reads back exactly what the agent computes
    assert sorted(src_b.remote_ports(), key=lambda r: r.key) == sorted(
        sync_desired(src_b, src_a), key=lambda r: r.key)
    # remote ports are never endpoints of their site
    assert [e.port_id for e in src_b.snapshot().endpoints] == [vb["id"]]
    # converged: a second pass changes nothing
    assert sync_once(src_b, [src_a]) == {"registered": 0, "unregistered": 0, "errors": {}}


def sync_desired(local, peer):
    from gwagent.model import Desired
    return list(Desired(local.snapshot(), (peer.snapshot(),)).remote_ports())


def test_updates_and_deletes_propagate_in_place(pair):
    a, b = pair.a, pair.b
    va = a.admin.port(pair.net_a, "cn-a1", fixed_ips=[{"ip_address": "198.19.50.31"}])
    gone = a.admin.port(pair.net_a, "cn-a1", fixed_ips=[{"ip_address": "198.19.50.32"}])
    src_a, src_b = pair.sources()
    sync_once(src_b, [src_a])
    before = by_origin(remote_in(b, pair.gw_b))
    assert set(before) == {va["id"], gone["id"]}

    a.admin.update(va["id"], fixed_ips=[{"ip_address": "198.19.50.31"},
                                        {"ip_address": "198.19.50.33"}],
                   allowed_address_pairs=[{"ip_address": "198.19.50.200"}])
    a.admin.delete(gone["id"])
    result = sync_once(src_b, [src_a])
    assert result == {"registered": 1, "unregistered": 1, "errors": {}}

    after = by_origin(remote_in(b, pair.gw_b))
    assert set(after) == {va["id"]}
    rb = after[va["id"]]
    assert rb["id"] == before[va["id"]]["id"]  # updated in place
    assert sorted(f["ip_address"] for f in rb["fixed_ips"]) == ["198.19.50.31", "198.19.50.33"]
    assert rb["allowed_address_pairs"] == [{"ip_address": "198.19.50.200",
                                            "mac_address": va["mac_address"]}]
    assert b.admin.get(rb["id"])["status"] == "ACTIVE"

    # a VM moving to another compute changes the origin VTEP: updated too
    a.admin.update(va["id"], **{"binding:host_id": "cn-a2"})
    sync_once(src_b, [src_a])  # cn-a2 has no agent: no VTEP, the endpoint leaves
    assert remote_in(b, pair.gw_b) == []


def test_register_after_a_change_behind_its_back_reads_the_port_again(pair):
    """register() works from remote_ports()' listing; a remote port changed
    in between (revision moved on) is re-read, never written from the stale
    copy, and a port deleted in between is created again."""
    a, b = pair.a, pair.b
    va = a.admin.port(pair.net_a, "cn-a1", fixed_ips=[{"ip_address": "198.19.50.61"}])
    vc = a.admin.port(pair.net_a, "cn-a1", fixed_ips=[{"ip_address": "198.19.50.62"}])
    src_a, src_b = pair.sources()
    sync_once(src_b, [src_a])
    a.admin.update(va["id"], fixed_ips=[{"ip_address": "198.19.50.61"},
                                        {"ip_address": "198.19.50.63"}])
    a.admin.update(vc["id"], fixed_ips=[{"ip_address": "198.19.50.64"}])
    registered = {rp.key: rp for rp in src_b.remote_ports()}  # the listing reused
    rb = by_origin(remote_in(b, pair.gw_b))
    # behind its back: someone edits one remote port, deletes the other
    b.admin.update(rb[va["id"]]["id"], description="touched")
    b.admin.delete(rb[vc["id"]]["id"])
    want = [rp for rp in sync_desired(src_b, src_a) if registered.get(rp.key) != rp]
    assert len(want) == 2
    assert src_b.register(want) == {}
    after = by_origin(remote_in(b, pair.gw_b))
    assert after[va["id"]]["id"] == rb[va["id"]]["id"]
    assert sorted(f["ip_address"] for f in after[va["id"]]["fixed_ips"]) == [
        "198.19.50.61", "198.19.50.63"]
    assert [f["ip_address"] for f in after[vc["id"]]["fixed_ips"]] == ["198.19.50.64"]
    assert sync_once(src_b, [src_a]) == {"registered": 0, "unregistered": 0, "errors": {}}


def test_restart_creates_no_duplicates(pair):
    a, b = pair.a, pair.b
    for i in range(5):
        a.admin.port(pair.net_a, "cn-a1", fixed_ips=[{"ip_address": f"198.19.50.{40 + i}"}])
    src_a, src_b = pair.sources()
    assert sync_once(src_b, [src_a])["registered"] == 5
    ids = sorted(p["id"] for p in remote_in(b, pair.gw_b))
    # a new process: new client, new source objects, nothing cached
    src_a2, src_b2 = pair.sources()
    assert sync_once(src_b2, [src_a2]) == {"registered": 0, "unregistered": 0, "errors": {}}
    # even a blind re-register of everything updates in place
    assert src_b2.register(sync_desired(src_b2, src_a2)) == {}
    assert sorted(p["id"] for p in remote_in(b, pair.gw_b)) == ids


def test_foreign_ports_are_never_touched_and_conflicts_fail_alone(pair, uniq):
    a, b = pair.a, pair.b
    va1 = a.admin.port(pair.net_a, "cn-a1", fixed_ips=[{"ip_address": "198.19.50.51"}])
    va2 = a.admin.port(pair.net_a, "cn-a1", fixed_ips=[{"ip_address": "198.19.50.52"}])
    # In B: a local port already holds va2's IP (a conflict), and another
    # gateway's remote port that looks like ours except for the owner.
    local_b = b.admin.port(pair.net_b, "cn-b1", fixed_ips=[{"ip_address": "198.19.50.52"}])
    other_gw = f"gwx-{uniq}"
    foreign = b.admin.port(
        pair.net_b, other_gw, fixed_ips=[{"ip_address": "198.19.50.59"}],
        device_owner=DEVICE_OWNER, device_id=owner_device_id(other_gw),
        **{"binding:profile": {"gwagent": {
            "tunnel_ip": "198.18.0.9", "gateway": other_gw, "origin_site": "site-a",
            "origin_port": "f00", "origin_vtep": "198.18.1.9", "network": pair.net}}})
    src_a, src_b = pair.sources()

    result = sync_once(src_b, [src_a])
    key2 = ("site-a", pair.net, va2["id"])
    assert set(result["errors"]) == {key2}
    assert "198.19.50.52" in result["errors"][key2]
    assert set(by_origin(remote_in(b, pair.gw_b))) == {va1["id"]}

    # unregistering everything ours leaves the foreign ports alone
    assert src_b.unregister(src_b.remote_ports()) == {}
    assert remote_in(b, pair.gw_b) == []
    assert b.admin.get(foreign["id"])["revision_number"] == foreign["revision_number"]
    assert b.admin.get(local_b["id"])["fixed_ips"][0]["ip_address"] == "198.19.50.52"
    # and the foreign remote port is no endpoint of site B
    assert foreign["id"] not in {e.port_id for e in src_b.snapshot().endpoints}


def retried(call, timeout=30.0):
    """``call`` again while its source fails, as the agent's backoff does."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return call()
        except SourceError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def test_neutron_down_and_back(pair):
    a, b = pair.a, pair.b
    va = a.admin.port(pair.net_a, "cn-a1", fixed_ips=[{"ip_address": "198.19.50.61"}])
    src_a, src_b = pair.sources()
    sync_once(src_b, [src_a])
    b.server.stop()
    try:
        with pytest.raises(SourceError, match="unreachable"):
            src_b.snapshot()
        with pytest.raises(SourceError, match="site-b"):
            src_b.remote_ports()
        # meanwhile site A changes
        a.admin.update(va["id"], fixed_ips=[{"ip_address": "198.19.50.62"}])
        vnew = a.admin.port(pair.net_a, "cn-a1", fixed_ips=[{"ip_address": "198.19.50.63"}])
    finally:
        b.server.start()
    assert retried(lambda: sync_once(src_b, [src_a]))["errors"] == {}  # the same objects recover
    got = {k: sorted(f["ip_address"] for f in p["fixed_ips"])
           for k, p in by_origin(remote_in(b, pair.gw_b)).items()}
    assert got == {va["id"]: ["198.19.50.62"], vnew["id"]: ["198.19.50.63"]}


def test_networks_by_id_keep_their_own_names(sites, computes, uniq):
    a, b = sites["site-a"], sites["site-b"]
    stretched = f"red-{uniq}"
    net_a = a.admin.network(f"tenant-net-{uniq}", "198.19.60.0/24")
    net_b = b.admin.network(f"other-name-{uniq}", "198.19.60.0/24")
    va = a.admin.port(net_a, "cn-a1", fixed_ips=[{"ip_address": "198.19.60.5"}])
    gw_b = Gateway(f"gwb-{uniq}", "198.18.0.2", "198.19.0.2")
    src_a = a.source(Gateway(f"gwa-{uniq}", "198.18.0.1", "198.19.0.1"), {stretched: 5002},
                     {stretched: net_a["id"]})
    src_b = b.source(gw_b, {stretched: 5002}, {stretched: net_b["id"]})
    assert sync_once(src_b, [src_a])["errors"] == {}
    (rb,) = remote_in(b, gw_b)
    assert (rb["network_id"], rb["mac_address"]) == (net_b["id"], va["mac_address"])


def tenant_request(site, method, path, body, project="mallory"):
    """A call as a tenant of another project (no admin role)."""
    (kind, item), = body.items()
    return site.client().request(method, path, {kind: dict(item, project_id=project)},
                                 headers={"X-Project-Id": project, "X-Roles": "member"})


def test_a_tenant_network_named_like_a_stretched_one_changes_nothing(pair):
    a, b = pair.a, pair.b
    va = a.admin.port(pair.net_a, "cn-a1", fixed_ips=[{"ip_address": "198.19.50.31"}])
    src_a, src_b = pair.sources()
    assert sync_once(src_b, [src_a])["errors"] == {}
    before = {p["id"]: p["mac_address"] for p in remote_in(b, pair.gw_b)}
    assert list(before.values()) == [va["mac_address"]]
    # Anyone may create a network of any name: one named like the stretched
    # network, in the same cloud, with a port of its own.
    forged = tenant_request(a, "POST", "/networks", {"network": {"name": pair.net}})["network"]
    assert forged["project_id"] == "mallory" and forged["id"] != pair.net_a["id"]
    tenant_request(a, "POST", "/subnets", {"subnet": {
        "network_id": forged["id"], "cidr": CIDR, "ip_version": 4, "enable_dhcp": False}})
    tenant_request(a, "POST", "/ports", {"port": {"network_id": forged["id"]}})
    snap = src_a.snapshot()
    assert [n.segmentation_id for n in snap.networks] == [
        pair.net_a["provider:segmentation_id"]]
    assert [e.port_id for e in snap.endpoints] == [va["id"]]
    result = sync_once(src_b, [src_a])
    assert result == {"registered": 0, "unregistered": 0, "errors": {}}
    assert {p["id"]: p["mac_address"] for p in remote_in(b, pair.gw_b)} == before


def test_a_virtual_mac_in_ports_of_both_clouds_is_mobile_in_their_remote_ports(pair):
    a, b = pair.a, pair.b
    vmac = "00:00:5e:00:01:09"
    vip = [{"ip_address": "198.19.50.109", "mac_address": vmac}]
    va = a.admin.port(pair.net_a, "cn-a1", fixed_ips=[{"ip_address": "198.19.50.41"}],
                      allowed_address_pairs=vip)
    vb = b.admin.port(pair.net_b, "cn-b1", fixed_ips=[{"ip_address": "198.19.50.42"}],
                      allowed_address_pairs=vip)
    src_a, src_b = pair.sources()
    for local, peer in ((src_a, src_b), (src_b, src_a)):
        assert sync_once(local, [peer])["errors"] == {}
    for site, gw, origin in ((a, pair.gw_a, vb), (b, pair.gw_b, va)):
        (rp,) = remote_in(site, gw)
        assert rp["mac_address"] == origin["mac_address"]
        assert rp["allowed_address_pairs"] == vip          # port security needs it
        assert rp["binding:profile"]["gwagent"]["mobile_macs"] == [vmac]
    # read back, the registry sees the same: nothing to change
    assert sync_once(src_a, [src_b]) == {"registered": 0, "unregistered": 0, "errors": {}}

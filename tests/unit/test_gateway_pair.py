"""Two gateway nodes per site: the topology that says so, keepalived's
configuration the lab writes, and the agent's role by the site's addresses
(a standby never writes to its registry; the active one does, and stops
writing the moment it loses them)."""
import dataclasses
import json

import pytest

from gwagent.control.agent import Agent
from gwagent.control.sources import FileInventory
from gwagent.lab import topology as topo_mod
from gwagent.lab import vrrp
from gwagent.lab.topology import TopologyError

from builders import GATEWAYS, endpoint
from fakes import FakeDataplane
from test_agent import Clock, write
from builders import site as site_of

HA = topo_mod.DEFAULT_FILE.with_name("ha.yaml")


# -- topology ------------------------------------------------------------------

def test_the_ha_lab_has_two_nodes_sharing_the_sites_addresses():
    topo = topo_mod.load(HA)
    a, b = topo.sites
    assert a.ha and a.gateways == ("a-gw1", "a-gw2") and not b.ha
    # the cloud knows one gateway; each node has addresses of its own
    assert a.gateway == "a-gw" and b.gateway == "b-gw"
    assert (a.tunnel_ip, a.transit_ip) == ("198.18.1.1", "198.18.0.1")
    assert [a.node_tunnel_ip(n) for n in a.gateways] == ["198.18.1.2", "198.18.1.3"]
    assert [a.node_transit_ip(n) for n in a.gateways] == ["198.18.255.1", "198.18.255.2"]
    assert (b.node_tunnel_ip("b-gw"), b.node_transit_ip("b-gw")) == (b.tunnel_ip, b.transit_ip)
    assert [a.gateway_key(n) for n in a.gateways] == ["a-gw1", "a-gw2"]
    assert b.gateway_key() == "b-gw"
    snap = topo_mod.site_snapshot(topo, "a")
    assert (snap.site.gateway.host, snap.site.gateway.tunnel_ip) == ("a-gw", "198.18.1.1")
    assert topo_mod.parse(topo_mod.to_dict(topo)) == topo


def _one_site(**site):
    data = topo_mod.to_dict(topo_mod.load(HA))
    data["sites"][0] = {k: v for k, v in data["sites"][0].items() if k != "gateways"}
    data["sites"][0].update(site)
    return data


@pytest.mark.parametrize("site, words", [
    ({"gateway": "x", "gateways": ["y", "z"]}, "both given"),
    ({"gateways": ["n1", "n2", "n3"]}, "one or two"),
    ({"gateways": []}, "one or two"),
    ({"gateways": ["b-gw", "n2"]}, "already used"),
    ({"gateways": ["n1", "n1"]}, "already used"),
])
def test_a_wrong_gateways_list_is_refused_with_the_reason(site, words):
    with pytest.raises(TopologyError, match=words):
        topo_mod.parse(_one_site(**site))


def test_a_node_may_not_take_the_name_of_a_sites_gateway_files():
    data = _one_site(gateways=["a-gw1", "a-gw2"])
    data["sites"][1]["gateway"] = "b-main"
    data["sites"][0]["gateways"] = ["b-gw", "a-gw2"]
    with pytest.raises(TopologyError, match="gateway files"):
        topo_mod.parse(data)


def test_one_listed_gateway_is_a_single_gateway():
    topo = topo_mod.parse(_one_site(gateways=["a-only"]))
    assert not topo.sites[0].ha and topo.sites[0].gateway == "a-only"


# -- keepalived's configuration ----------------------------------------------------

@pytest.mark.parametrize("nics, tracked", [
    (("eth0", "eth1"), ["eth1"]),
    (("ul-site", "ul-transit"), ["ul-transit", "eth0", "eth1"]),
])
def test_keepalived_holds_both_addresses_on_the_virtual_mac_devices(nics, tracked):
    a = topo_mod.load(HA).sites[0]
    first, second = (vrrp.config(a, n, nics, "/x/notify.sh") for n in a.gateways)
    for conf in (first, second):
        assert f"interface {nics[0]}\n" in conf
        assert "198.18.1.1/24 dev vip-site" in conf and "198.18.0.1/24 dev vip-transit" in conf
        assert "virtual_router_id 1\n" in conf and "advert_int 0.1\n" in conf
        block = conf.split("track_interface {")[1].split("}")[0].split()
        assert block == tracked
        assert "nopreempt" not in conf  # the first node takes the addresses back
    assert "priority 200" in first and "priority 100" in second
    assert vrrp.virtual_macs(a) == ("02:67:77:01:00:01", "02:67:77:01:00:02")


# -- the agent's role ------------------------------------------------------------

class Addresses:
    """A node's kernel as far as the agent asks: the addresses it holds."""

    def __init__(self, *held):
        self.addresses = set(held)

    def holds(self, addresses):
        return set(addresses) <= self.addresses


SITE_ADDRESSES = (GATEWAYS["a"].tunnel_ip, GATEWAYS["a"].transit_ip)


def ha_agent(tmp_path, holder, registry_cls=FileInventory):
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    write(a, site_of("a", [endpoint("a", "red", 1)]))
    write(b, site_of("b", [endpoint("b", "red", 2), endpoint("b", "red", 3)]))
    clock = Clock()
    local = FileInventory(a)
    registry = registry_cls(a)
    agent = Agent(local, [FileInventory(b)], registry, FakeDataplane(),
                  status_path=tmp_path / "status.json", clock=clock, wall=clock,
                  holder=holder, node="a-gw2")
    return agent, registry


def test_a_standby_programs_everything_and_writes_nothing(tmp_path):
    holder = Addresses("198.18.1.3")
    agent, registry = ha_agent(tmp_path, holder)
    result = agent.run_pass("start")
    assert result.ok and result.registered == 0 and registry.remote_ports() == []
    assert agent.backend.observe().macs  # hot standby: the dataplane is whole
    agent.check_role()
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["ha"]["role"] == "standby" and status["registry"]["state"] == "standby"
    assert status["remote_ports_registered"] is None

    holder.addresses.update(SITE_ADDRESSES)  # VRRP: this node takes over
    assert agent.check_role() and agent.role == "active"
    result = agent.run_pass("takeover")
    assert result.registered == 2 and len(registry.remote_ports()) == 2
    assert all(p.vtep == GATEWAYS["a"].tunnel_ip for p in registry.remote_ports())
    assert agent.status()["ha"] == {"mode": "vrrp", "node": "a-gw2", "role": "active",
                                    "since": agent.role_since,
                                    "addresses": list(SITE_ADDRESSES), "nodes": [],
                                    "error": None}


def test_a_takeover_on_a_jumbo_underlay_gives_the_transit_devices_its_mtu(tmp_path):
    """A standby does not hold the transit address: its transit devices
    cannot know their underlay until VRRP brings it, and then take it at
    the next pass, not at the next audit."""
    holder = Addresses("198.18.1.3")
    agent, _ = ha_agent(tmp_path, holder)
    kernel = agent.backend.kernel
    kernel.table[1] = dataclasses.replace(kernel.table[1], mtu=9000)
    kernel.addresses = {"198.18.1.3": "eth0"}
    assert agent.run_pass("start").ok
    agent.check_role()
    vt = [link for link in kernel.links() if link.name.startswith("gwa-vt-")]
    assert vt and {link.mtu for link in vt} == {1500}  # the kernel's default
    holder.addresses.update(SITE_ADDRESSES)
    kernel.addresses.update({ip: "eth0" for ip in SITE_ADDRESSES})
    assert agent.check_role() and agent.role == "active"
    assert agent.run_pass("role").ok
    assert {link.mtu for link in kernel.links() if link.name.startswith(("gwa-vt-", "gwa-vl-"))
            } == {8950}


def test_holding_one_address_of_two_is_standby(tmp_path):
    agent, registry = ha_agent(tmp_path, Addresses(SITE_ADDRESSES[0]))
    agent.run_pass("start")
    agent.check_role()
    assert agent.role == "standby" and registry.remote_ports() == []


def test_losing_the_addresses_while_reading_the_registry_writes_nothing(tmp_path):
    holder = Addresses(*SITE_ADDRESSES)

    class Failover(FileInventory):
        """A registry read during which VRRP moves the addresses away."""

        def remote_ports(self):
            holder.addresses.clear()
            return super().remote_ports()

    agent, registry = ha_agent(tmp_path, holder, Failover)
    result = agent.run_pass("start")
    assert result.registered == 0 and result.deferred == 2
    holder.addresses.update(SITE_ADDRESSES)
    assert FileInventory.remote_ports(registry) == []


def test_an_unreadable_kernel_means_standby_and_says_why(tmp_path):
    class Broken:
        def holds(self, addresses):
            raise OSError("netlink socket closed")

    agent, registry = ha_agent(tmp_path, Broken())
    agent.run_pass("start")
    agent.check_role()
    assert agent.role == "standby" and registry.remote_ports() == []
    assert "netlink socket closed" in agent.status()["ha"]["error"]


def test_a_sites_only_gateway_is_always_active(tmp_path):
    agent, registry = ha_agent(tmp_path, None)
    assert agent.run_pass("start").registered == 2
    assert agent.status()["ha"]["mode"] == "none" and agent.role == "active"


def test_the_inventory_may_name_the_two_nodes_and_a_stranger_is_told(tmp_path):
    from gwagent.control.sources import parse_site, site_to_dict
    from gwagent.model import Gateway, ValidationError
    gw = Gateway("a-gw", "198.18.1.1", "198.18.0.1", ["a-gw1", "a-gw2"])
    assert gw.nodes == ("a-gw1", "a-gw2")
    for bad in (["a-gw1"], ["x", "x"], ["a", "b", "c"], "a-gw1"):
        with pytest.raises(ValidationError, match="gateway.nodes"):
            Gateway("a-gw", "198.18.1.1", "198.18.0.1", bad)
    snap = topo_mod.site_snapshot(topo_mod.load(HA), "a")
    assert snap.site.gateway.nodes == ("a-gw1", "a-gw2")
    assert parse_site(site_to_dict(snap)) == snap
    assert "nodes" not in site_to_dict(topo_mod.site_snapshot(topo_mod.load(HA), "b"))["gateway"]

    agent, _ = ha_agent(tmp_path, Addresses(*SITE_ADDRESSES))
    data = site_to_dict(site_of("a", [endpoint("a", "red", 1)]))
    data["gateway"]["nodes"] = ["gw-a1", "gw-a3"]
    (tmp_path / "a.yaml").write_text(json.dumps(data))
    agent.run_pass("start")
    assert "a-gw2' is not one of the site's gateway nodes (gw-a1, gw-a3)" in \
        agent.status()["ha"]["error"]

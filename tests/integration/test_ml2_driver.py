"""The gwagent ML2 driver in a real Neutron: agentless binding, and l2pop
messages that reach an L2 agent over RabbitMQ with the gateway as VTEP."""
from __future__ import annotations

from gwagent.model import AddressPair, Endpoint, Gateway, RemotePort

FLOOD = ["00:00:00:00:00:00", "0.0.0.0"]


def entries(msg, net_id, vtep):
    return msg["fdb_entries"].get(net_id, {}).get("ports", {}).get(vtep)


def test_remote_port_bound_active_and_published_to_agents(sites, agent_factory, uniq):
    b = sites["site-b"]
    net = b.admin.network(f"green-{uniq}", "198.19.70.0/24")
    host = f"cn-{uniq}"
    agent = agent_factory("site-b", host, "198.18.2.50")
    local = b.admin.port(net, host, fixed_ips=[{"ip_address": "198.19.70.5"}])
    gw = Gateway(f"gwb-{uniq}", "198.18.0.2", "198.19.0.2")
    src = b.source(gw, {f"green-{uniq}": 5003}, {f"green-{uniq}": net["id"]})
    origin = Endpoint(site="site-a", network=f"green-{uniq}", mac="fa:16:3e:aa:00:01",
                      vtep="198.18.1.1", ips=("198.19.70.10",), port_id="origin-1",
                      allowed_address_pairs=(AddressPair("198.19.70.100", "00:00:5e:00:01:09"),))
    assert src.register([RemotePort(origin, gw.tunnel_ip, gw.host)]) == {}

    (port,) = [p for p in b.admin.ports(network_id=net["id"]) if p["id"] != local["id"]]
    assert (port["status"], port["binding:vif_type"]) == ("ACTIVE", "other")
    assert port["binding:vif_details"]["gwagent_tunnel_ip"] == "198.18.0.2"

    seg = net["provider:segmentation_id"]
    added = agent.wait_for(lambda m: m["method"] == "add_fdb_entries"
                           and entries(m, net["id"], "198.18.0.2"))
    assert added["fdb_entries"][net["id"]]["segment_id"] == seg
    assert added["fdb_entries"][net["id"]]["network_type"] == "vxlan"
    assert sorted(entries(added, net["id"], "198.18.0.2")) == sorted([
        FLOOD, ["fa:16:3e:aa:00:01", "198.19.70.10"], ["00:00:5e:00:01:09", "198.19.70.100"]])

    # an IP added on the origin: chg_ip for the same MAC, at the same VTEP
    moved = Endpoint(**{**origin.__dict__, "ips": ("198.19.70.10", "198.19.70.11")})
    assert src.register([RemotePort(moved, gw.tunnel_ip, gw.host)]) == {}
    upd = agent.wait_for(lambda m: m["method"] == "update_fdb_entries")
    assert upd["fdb_entries"]["chg_ip"][net["id"]]["198.18.0.2"] == {
        "after": [["fa:16:3e:aa:00:01", "198.19.70.11"]]}

    # the agent restarts and reports its device up again: it gets the full set
    agent.command(cmd="report")
    agent.command(cmd="device_up", device=local["id"])
    full = agent.wait_for(lambda m: m["method"] == "add_fdb_entries"
                          and len(entries(m, net["id"], "198.18.0.2") or ()) == 4)
    assert sorted(entries(full, net["id"], "198.18.0.2")) == sorted([
        FLOOD, ["fa:16:3e:aa:00:01", "198.19.70.10"], ["fa:16:3e:aa:00:01", "198.19.70.11"],
        ["00:00:5e:00:01:09", "198.19.70.100"]])

    # unregistered: removed, flooding entry with it (the last one behind the VTEP)
    assert src.unregister(src.remote_ports()) == {}
    gone = agent.wait_for(lambda m: m["method"] == "remove_fdb_entries"
                          and entries(m, net["id"], "198.18.0.2"))
    assert FLOOD in entries(gone, net["id"], "198.18.0.2")
    assert ["fa:16:3e:aa:00:01", "198.19.70.10"] in entries(gone, net["id"], "198.18.0.2")


def test_flooding_entry_stays_while_other_remote_ports_remain(sites, agent_factory, uniq):
    b = sites["site-b"]
    name = f"olive-{uniq}"
    net = b.admin.network(name, "198.19.71.0/24")
    agent = agent_factory("site-b", f"cn-{uniq}", "198.18.2.51")
    gw = Gateway(f"gwb-{uniq}", "198.18.0.2", "198.19.0.2")
    src = b.source(gw, {name: 5004}, {name: net["id"]})
    eps = [Endpoint(site="site-a", network=name, mac=f"fa:16:3e:bb:00:0{i}", vtep="198.18.1.1",
                    ips=(f"198.19.71.{10 + i}",), port_id=f"o{i}") for i in (1, 2)]
    assert src.register([RemotePort(e, gw.tunnel_ip, gw.host) for e in eps]) == {}
    assert src.unregister([RemotePort(eps[0], gw.tunnel_ip, gw.host)]) == {}
    gone = agent.wait_for(lambda m: m["method"] == "remove_fdb_entries"
                          and entries(m, net["id"], "198.18.0.2"))
    assert entries(gone, net["id"], "198.18.0.2") == [["fa:16:3e:bb:00:01", "198.19.71.11"]]


def test_a_mobile_mac_is_left_to_the_agents_learning(sites, agent_factory, uniq):
    """A virtual MAC that a local port claims too must not be pinned at the
    gateway (a failover to the local port would break): the remote port
    marks it mobile and the driver publishes the rest only."""
    b = sites["site-b"]
    name = f"teal-{uniq}"
    net = b.admin.network(name, "198.19.72.0/24")
    agent = agent_factory("site-b", f"cn-{uniq}", "198.18.2.52")
    gw = Gateway(f"gwb-{uniq}", "198.18.0.2", "198.19.0.2")
    src = b.source(gw, {name: 5005}, {name: net["id"]})
    vmac = "00:00:5e:00:01:0a"
    origin = Endpoint(site="site-a", network=name, mac="fa:16:3e:cc:00:01", vtep="198.18.1.1",
                      ips=("198.19.72.10",), port_id="vrrp-a",
                      allowed_address_pairs=(AddressPair("198.19.72.100", vmac),))
    assert src.register([RemotePort(origin, gw.tunnel_ip, gw.host, (vmac,))]) == {}
    added = agent.wait_for(lambda m: m["method"] == "add_fdb_entries"
                           and entries(m, net["id"], "198.18.0.2"))
    assert sorted(entries(added, net["id"], "198.18.0.2")) == sorted([
        FLOOD, ["fa:16:3e:cc:00:01", "198.19.72.10"]])
    (rp,) = src.remote_ports()
    assert rp.mobile_macs == (vmac,)
    assert src.unregister([rp]) == {}

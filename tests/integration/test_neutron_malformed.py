"""Malformed data a Neutron may return is skipped with a reason, never fatal.

Neutron's API refuses to store most of these, so they are served by a
stand-in client returning what a broken or foreign deployment could return;
everything else is the real source code.
"""
from __future__ import annotations

import logging

import pytest

from gwagent.control.sources import SourceError

from gwagent.model import Gateway, Site
from gwagent.neutron.source import NeutronSite

NET = {"id": "n1", "name": "blue", "tags": [], "project_id": "p",
       "provider:network_type": "vxlan", "provider:segmentation_id": 1234}


class StubClient:
    cloud = "stub"

    def __init__(self, ports, networks=(NET,)):
        self.data = {"networks": list(networks), "ports": ports,
                     "subnets": [{"network_id": "n1", "cidr": "198.19.0.0/24"}],
                     "agents": [{"host": "cn1", "alive": True,
                                 "configurations": {"tunneling_ip": "198.18.1.1"}},
                                {"host": "cn2", "alive": True, "configurations": {}}]}

    def list(self, collection, **params):
        return list(self.data[collection])


def port(pid, **kw):
    base = {"id": pid, "network_id": "n1", "mac_address": f"fa:16:3e:00:00:{pid[-2:]}",
            "fixed_ips": [{"ip_address": "198.19.0.5"}], "allowed_address_pairs": [],
            "binding:host_id": "cn1", "binding:profile": {}, "device_owner": "compute:nova"}
    base.update(kw)
    return base


def source(client, networks=None, ids=None):
    return NeutronSite(client, Site("site-a", Gateway("gw", "198.18.0.1", "198.19.0.1")),
                       networks or {"blue": 5001}, ids or {"blue": "n1"})


def test_malformed_ports_are_left_out_alone_with_a_reason(caplog):
    ports = [
        port("p-01"),
        port("p-02", mac_address=None),
        port("p-03", mac_address="not-a-mac"),
        port("p-04", fixed_ips=[{"ip_address": "192.0.2.9"}, {"ip_address": "198.19.0.6"}]),
        port("p-05", **{"binding:host_id": "cn2"}),  # agent without tunneling_ip
        port("p-06", allowed_address_pairs=[{"ip_address": "198.19.0.100",
                                             "mac_address": "fa:16:3e:00:00:01"}]),
        port("p-07", mac_address="fa:16:3e:00:00:01"),  # MAC of p-01 already
        port("p-08", **{"binding:profile": {"gwagent": {"tunnel_ip": "198.18.0.2"}}}),
    ]
    with caplog.at_level(logging.WARNING, logger="gwagent.neutron.source"):
        snap = source(StubClient(ports)).snapshot()
    got = {e.port_id: e for e in snap.endpoints}
    assert sorted(got) == ["p-01", "p-04", "p-06"]
    assert got["p-04"].ips == ("198.19.0.6",)
    # p-06 may take over p-01's MAC (a pair): legal, the MAC is mobile
    assert [p.mac_address for p in got["p-06"].allowed_address_pairs] == ["fa:16:3e:00:00:01"]
    reasons = {r.port_id: r.reason for r in snap.rejected}
    assert sorted(reasons) == ["p-02", "p-03", "p-05", "p-07"]
    assert reasons["p-02"] == "no MAC address"
    assert "not a MAC address" in reasons["p-03"]
    assert "host 'cn2' has no L2 agent with a tunneling_ip" in reasons["p-05"]
    assert "already the own MAC of port p-01" in reasons["p-07"]
    text = caplog.text
    assert "192.0.2.9 is outside every subnet" in text
    assert "p-08" not in text  # a remote port: silently not an endpoint


def test_networks_are_found_by_id_never_by_name(caplog):
    tenant = dict(NET, id="n9", name="blue", project_id="someone-else")  # a forgery
    vlan = dict(NET, id="n2", name="red", **{"provider:network_type": "vlan"})
    src = source(StubClient([port("p-01"), port("p-99", network_id="n9")],
                            networks=[tenant, NET, vlan]),
                 {"blue": 5001, "red": 5002}, {"blue": "n1", "red": "n2"})
    with caplog.at_level(logging.WARNING, logger="gwagent.neutron.source"):
        snap = src.snapshot()
    assert [n.name for n in snap.networks] == ["blue"]
    assert [e.port_id for e in snap.endpoints] == ["p-01"]
    assert "'red' (n2) is of type 'vlan'" in caplog.text


def test_a_missing_stretched_network_fails_the_read_instead_of_withdrawing_it():
    # A snapshot without the network would withdraw all its remote ports:
    # the read fails whole, so the agent keeps its last good state.
    src = source(StubClient([], networks=[NET]), {"blue": 5001, "gone": 5004},
                 {"blue": "n1", "gone": "n404"})
    with pytest.raises(SourceError, match="'gone' .*n404.* not found"):
        src.snapshot()

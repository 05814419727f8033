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


def test_malformed_ports_are_skipped_with_a_reason(caplog):
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
    src = NeutronSite(StubClient(ports), Site("site-a", Gateway("gw", "198.18.0.1",
                                                               "198.19.0.1")), {"blue": 5001})
    with caplog.at_level(logging.WARNING, logger="gwagent.neutron.source"):
        snap = src.snapshot()
    got = {e.port_id: e for e in snap.endpoints}
    assert sorted(got) == ["p-01", "p-04", "p-06"]
    assert got["p-04"].ips == ("198.19.0.6",)
    assert got["p-06"].allowed_address_pairs == ()
    text = caplog.text
    assert "p-02 on blue: no MAC address; skipped" in text
    assert "p-03 on blue: skipped" in text and "not a MAC address" in text
    assert "192.0.2.9 is outside every subnet" in text
    assert "host 'cn2' has no L2 agent with a tunneling_ip" in text
    assert "MAC fa:16:3e:00:00:01 ignored: the MAC belongs to port p-01" in text
    assert "p-07 on blue: skipped: MAC fa:16:3e:00:00:01 already belongs to port p-01" in text
    assert "p-08" not in text  # a remote port: silently not an endpoint


def test_unusable_networks_are_left_out(caplog):
    vlan = dict(NET, id="n2", name="red", **{"provider:network_type": "vlan"})
    dup = [dict(NET, id="n3", name="green"), dict(NET, id="n4", name="green")]
    src = NeutronSite(StubClient([], networks=[NET, vlan, *dup]),
                      Site("site-a", Gateway("gw", "198.18.0.1", "198.19.0.1")),
                      {"blue": 5001, "red": 5002, "green": 5003})
    with caplog.at_level(logging.WARNING, logger="gwagent.neutron.source"):
        snap = src.snapshot()
    assert [n.name for n in snap.networks] == ["blue"]
    assert "'red' (n2) is of type 'vlan'" in caplog.text
    assert "'green' is ambiguous" in caplog.text


def test_a_missing_stretched_network_fails_the_read_instead_of_withdrawing_it():
    # A snapshot without the network would withdraw all its remote ports:
    # the read fails whole, so the agent keeps its last good state.
    src = NeutronSite(StubClient([], networks=[NET]),
                      Site("site-a", Gateway("gw", "198.18.0.1", "198.19.0.1")),
                      {"blue": 5001, "gone": 5004})
    with pytest.raises(SourceError, match="'gone' not found"):
        src.snapshot()

import pytest

from gwagent.model import (AddressPair, Desired, Endpoint, Gateway, Network, ValidationError)
from gwagent.state import desired_dataplane

from builders import endpoint, site


def err(fn, *a, **kw) -> ValidationError:
    with pytest.raises(ValidationError) as info:
        fn(*a, **kw)
    return info.value


def test_mac_is_normalised():
    ep = Endpoint("a", "red", "FA-16-3E-00-00-01", "198.18.1.11")
    assert ep.mac == "fa:16:3e:00:00:01"


@pytest.mark.parametrize("value", ["fa:16:3e:00:00", "zz:16:3e:00:00:01", "", "01:00:5e:00:00:01",
                                   "00:00:00:00:00:00"])
def test_bad_mac_names_field_and_value(value):
    e = err(Endpoint, "a", "red", value, "198.18.1.11", port_id="p1")
    assert e.field == "endpoint[p1].mac" and e.value == value
    assert repr(value) in str(e)


@pytest.mark.parametrize("value", [0, 16777216, -1, "x", True, None])
def test_vni_out_of_range(value):
    e = err(Network, "red", value, 5001)
    assert e.field == "network[red].segmentation_id" and e.value == value


def test_vni_limits_accepted():
    assert Network("red", 1, 16777215).transit_vni == 16777215


def test_bad_ip():
    e = err(Gateway, "gw", "198.18.1.300", "198.18.200.1")
    assert e.field == "gateway.tunnel_ip" and "198.18.1.300" in str(e)
    e = err(Endpoint, "a", "red", "fa:16:3e:00:00:01", "198.18.1.11", ips=("nope",))
    assert e.field.endswith(".ips") and e.value == "nope"


def test_duplicate_mac_on_one_network_rejected():
    ep = endpoint("a", "red", 1)
    twin = Endpoint("a", "red", ep.mac, "198.18.1.12", port_id="other")
    e = err(site, "a", [ep, twin])
    assert "duplicate MAC" in str(e) and e.value == ep.mac


def test_same_mac_on_two_networks_is_fine():
    ep = endpoint("a", "red", 1)
    other = Endpoint("a", "blue", ep.mac, "198.18.1.12", port_id="other")
    assert len(site("a", [ep, other]).endpoints) == 2


def test_duplicate_mac_through_address_pair_rejected():
    ep = endpoint("a", "red", 1)
    vip = endpoint("a", "red", 2, allowed_address_pairs=(AddressPair("198.19.10.100", ep.mac),))
    assert "duplicate MAC" in str(err(site, "a", [ep, vip]))


def test_endpoint_on_unknown_network_rejected():
    e = err(site, "a", [endpoint("a", "green", 1)])
    assert e.value == "green" and "unknown network" in e.reason


def test_network_unknown_to_peer_rejected():
    e = err(Desired, site("a"), (site("b", nets=("red",)),))
    assert e.value == "blue" and "unknown to peer site 'b'" in e.reason


def test_transit_vni_must_agree():
    b = site("b")
    bad = b.__class__(b.site, (Network("red", 2001, 5001), Network("blue", 2002, 7777)), ())
    e = err(Desired, site("a"), (bad,))
    assert e.value == 7777 and "transit_vni" in e.field


def test_vni_reused_on_one_gateway_rejected():
    snap = site("a")
    e = err(snap.__class__, snap.site, (Network("red", 1001, 5001), Network("blue", 5001, 5002)), ())
    assert e.value == 5001 and "already used" in e.reason


def test_duplicate_mac_across_sites_rejected():
    ep = endpoint("a", "red", 1)
    clash = Endpoint("b", "red", ep.mac, "198.18.2.11", port_id="b1")
    e = err(Desired, site("a", [ep]), (site("b", [clash]),))
    assert "also in site 'a'" in e.reason


def test_remote_ports_point_at_local_gateway():
    d = Desired(site("a", [endpoint("a", "red", 1)]), (site("b", [endpoint("b", "red", 2)]),))
    (port,) = d.remote_ports()
    assert port.vtep == "198.18.1.1" and port.origin.site == "b" and port.gateway_host == "gw-a"


def test_dataplane_translates_vnis_and_points_macs():
    a1, b2 = endpoint("a", "red", 1), endpoint("b", "red", 2)
    dp = desired_dataplane(Desired(site("a", [a1]), (site("b", [b2]),)))
    red = dp.networks[0] if dp.networks[0].network == "red" else dp.networks[1]
    assert red.site_side.vni == 1001 and red.transit_side.vni == 5001
    assert red.site_side.local_ip == "198.18.1.1" and red.transit_side.local_ip == "198.18.200.1"
    dsts = {(e.dev, e.mac): e.dst for e in dp.fdb if e.dst and e.mac != "00:00:00:00:00:00"}
    assert dsts[(red.site_side.name, a1.mac)] == a1.vtep
    assert dsts[(red.transit_side.name, b2.mac)] == "198.18.200.2"
    assert all(len(n) <= 15 for net in dp.networks for n in net.names)

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


def test_duplicate_own_mac_on_one_network_leaves_only_that_endpoint_out():
    ep, other = endpoint("a", "red", 1), endpoint("a", "red", 3)
    twin = Endpoint("a", "red", ep.mac, "198.18.1.12", port_id="twin")
    snap = site("a", [ep, twin, other])
    assert snap.endpoints == (ep, other)
    (rej,) = snap.rejected
    assert (rej.port_id, rej.mac) == ("twin", ep.mac) and "already the own MAC" in rej.reason


def test_same_mac_on_two_networks_is_fine():
    ep = endpoint("a", "red", 1)
    other = Endpoint("a", "blue", ep.mac, "198.18.1.12", port_id="other")
    assert len(site("a", [ep, other]).endpoints) == 2


def test_a_pair_mac_shared_by_two_ports_is_mobile_not_an_error():
    vmac = "00:00:5e:00:01:01"
    pair = (AddressPair("198.19.10.100", vmac),)
    a1 = endpoint("a", "red", 1, allowed_address_pairs=pair)
    b1 = endpoint("b", "red", 2, allowed_address_pairs=pair)
    d = Desired(site("a", [a1]), (site("b", [b1]),))
    assert d.all_rejected() == ()
    mob = d.mobile[("red", vmac)]
    assert mob.home is None
    assert {c[1] for c in mob.claimants} == {a1.port_id, b1.port_id}


def test_a_port_mac_another_port_may_take_over_is_mobile_with_a_home():
    a1 = endpoint("a", "red", 1)
    a2 = endpoint("a", "red", 2, compute=2,
                  allowed_address_pairs=(AddressPair("198.19.10.100", a1.mac),))
    d = Desired(site("a", [a1, a2]), (site("b"),))
    mob = d.mobile[("red", a1.mac)]
    assert mob.home == ("a", a1.port_id, a1.vtep)


def test_endpoint_on_unknown_network_left_out_with_reason():
    good = endpoint("a", "red", 1)
    snap = site("a", [endpoint("a", "green", 1), good])
    assert snap.endpoints == (good,)
    assert "not a stretched network" in snap.rejected[0].reason


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


def test_own_mac_claimed_in_two_sites_keeps_the_first_and_leaves_the_other_out():
    ep = endpoint("a", "red", 1)
    clash = Endpoint("b", "red", ep.mac, "198.18.2.11", port_id="b1")
    d = Desired(site("a", [ep]), (site("b", [clash]),))
    assert d.local.endpoints == (ep,) and d.peers[0].endpoints == ()
    (rej,) = d.all_rejected()
    assert rej.site == "b" and "of site 'a'" in rej.reason
    assert d.remote_ports() == ()


def test_the_holder_of_a_mac_keeps_it_against_a_newcomer():
    # b held the MAC first: a port of a taking it later must not win it
    held = Endpoint("b", "red", "fa:16:3e:00:00:aa", "198.18.2.11", port_id="b1")
    first = Desired(site("a"), (site("b", [held]),))
    newcomer = Endpoint("a", "red", held.mac, "198.18.1.11", port_id="a0")
    d = Desired(site("a", [newcomer]), (site("b", [held]),), previous=first)
    assert d.peers[0].endpoints == (held,) and d.local.endpoints == ()
    assert [r.port_id for r in d.all_rejected()] == ["a0"]


def test_one_bad_endpoint_never_empties_the_rest():
    eps = [endpoint("b", "red", n) for n in range(1, 6)]
    clash = Endpoint("b", "red", eps[0].mac, "198.18.2.12", port_id="zz")
    d = Desired(site("a"), (site("b", eps + [clash]),))
    assert len(d.remote_ports()) == 5


def test_remote_ports_point_at_local_gateway():
    d = Desired(site("a", [endpoint("a", "red", 1)]), (site("b", [endpoint("b", "red", 2)]),))
    (port,) = d.remote_ports()
    assert port.vtep == "198.18.1.1" and port.origin.site == "b" and port.gateway_host == "gw-a"


def test_dataplane_translates_vnis_and_points_macs():
    a1, b2 = endpoint("a", "red", 1), endpoint("b", "red", 2)
    dp = desired_dataplane(Desired(site("a", [a1]), (site("b", [b2]),)))
    red = dp.network("red")
    assert red.site.vni == 1001 and red.transit.vni == 5001
    assert red.site.local_ip == "198.18.1.1" and red.transit.local_ip == "198.18.200.1"
    where = {e.mac: (e.side, e.vtep) for e in dp.macs}
    assert where[a1.mac] == ("site", a1.vtep)
    assert where[b2.mac] == ("transit", "198.18.200.2")

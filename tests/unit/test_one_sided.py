"""The Linux backend's one-sided network and its ``learning`` option (what
the lab's computes use), on the kernel model; and a gateway's network, two
sides and no learning, unchanged beside them."""
from __future__ import annotations

import dataclasses

from gwagent.control.planner import plan
from gwagent.dataplane.linux import LinuxBackend
from gwagent.state import (SITE, TRANSIT, FloodEntry, GatewayState, MacEntry, NetworkOp,
                           NetworkSpec, Segment)

from fakes import FakeKernel, _QuietMonitor

ONE = NetworkSpec(1001, "red", Segment(1001, "198.18.1.11"), None)
TWO = NetworkSpec(5001, "red", Segment(1001, "198.18.1.1"), Segment(5001, "198.18.0.1"))


def backend(learning: bool) -> LinuxBackend:
    return LinuxBackend(None, nl=FakeKernel(), monitor=_QuietMonitor(), learning=learning)


def converge(dp: LinuxBackend, want: GatewayState) -> None:
    assert dp.apply(plan(want, dp.observe())) == []
    assert dp.observe() == want
    assert plan(want, dp.observe()) == []


def names(dp: LinuxBackend) -> list[str]:
    return sorted(link.name for link in dp.nl.links() if link.name.startswith("gwa-"))


def test_one_sided_network_is_a_bridge_and_a_learning_site_port():
    dp = backend(learning=True)
    want = GatewayState((ONE,), frozenset({MacEntry("red", "fa:16:3e:00:00:01", SITE,
                                                    "198.18.1.12")}),
                        frozenset({FloodEntry("red", SITE, "198.18.1.12")}))
    converge(dp, want)
    assert names(dp) == ["gwa-br-1001", "gwa-vl-1001"]
    port = dp.nl.by_name("gwa-vl-1001")
    assert (port.vxlan_learning, port.port_learning) == (True, True)


def test_a_transit_port_left_over_is_removed_and_a_missing_one_is_made_again():
    dp = backend(learning=False)
    converge(dp, GatewayState((TWO,)))
    assert names(dp) == ["gwa-br-5001", "gwa-vl-5001", "gwa-vt-5001"]
    one = dataclasses.replace(ONE, transit_vni=5001)
    converge(dp, GatewayState((one,)))
    assert names(dp) == ["gwa-br-5001", "gwa-vl-5001"]
    # A gateway's network without its transit port differs and is ensured.
    assert plan(GatewayState((TWO,)), dp.observe()) == [NetworkOp("ensure", TWO)]
    converge(dp, GatewayState((TWO,)))
    assert names(dp) == ["gwa-br-5001", "gwa-vl-5001", "gwa-vt-5001"]


def test_learning_that_differs_from_the_option_is_a_difference_and_is_put_right():
    gateway, compute = backend(learning=False), backend(learning=True)
    want_gw = GatewayState((TWO,), frozenset({MacEntry("red", "fa:16:3e:00:00:02", TRANSIT,
                                                       "198.18.0.2")}))
    converge(gateway, want_gw)
    converge(compute, GatewayState((ONE,)))
    for dp, name in ((gateway, "gwa-vl-5001"), (compute, "gwa-vl-1001")):
        link = dp.nl.by_name(name)
        dp.nl.brport_set(link.index, learning=not link.port_learning)
    assert gateway.observe().networks != want_gw.networks
    assert compute.observe().networks != (ONE,)
    converge(gateway, want_gw)
    converge(compute, GatewayState((ONE,)))
    assert gateway.nl.by_name("gwa-vl-5001").port_learning is False
    assert compute.nl.by_name("gwa-vl-1001").port_learning is True

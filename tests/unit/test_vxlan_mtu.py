"""The Linux backend's VXLAN devices carry what their underlay carries:
each device's MTU is its underlay link's less the encapsulation, made so,
observed as a difference when it is not, and put right in place (the FDB
stays), on the kernel model."""
from __future__ import annotations

import dataclasses

from gwagent.control.planner import plan
from gwagent.dataplane.linux import LinuxBackend, vxlan_mtus
from gwagent.dataplane.netlink import Link
from gwagent.state import TRANSIT, GatewayState, MacEntry, NetworkOp, NetworkSpec, Segment

from fakes import FakeKernel, _QuietMonitor

RED = NetworkSpec(5001, "red", Segment(1001, "198.18.1.1"), Segment(5001, "198.18.0.1"))
WANT = GatewayState((RED,), frozenset({MacEntry("red", "fa:16:3e:00:00:02", TRANSIT,
                                                "198.18.0.2")}))


def gateway(site_mtu: int, transit_mtu: int) -> LinuxBackend:
    kernel = FakeKernel()
    kernel.add_link(Link(2, "eth1", None, True, None, mtu=transit_mtu))
    kernel.table[1] = dataclasses.replace(kernel.table[1], mtu=site_mtu)
    kernel.addresses = {"198.18.1.1": "eth0", "198.18.0.1": "eth1"}
    return LinuxBackend(None, nl=kernel, monitor=_QuietMonitor())


def mtus(dp: LinuxBackend) -> dict[str, int]:
    return {name: dp.nl.by_name(name).mtu for name in ("gwa-vl-5001", "gwa-vt-5001")}


def test_each_side_takes_its_underlay_mtu_less_the_encapsulation():
    dp = gateway(9000, 1500)
    assert dp.apply(plan(WANT, dp.observe())) == []
    assert mtus(dp) == {"gwa-vl-5001": 8950, "gwa-vt-5001": 1450}
    assert dp.observe() == WANT


def test_an_underlay_mtu_changed_later_is_a_difference_put_right_in_place():
    dp = gateway(1500, 1500)
    assert dp.apply(plan(WANT, dp.observe())) == []
    index = dp.nl.by_name("gwa-vt-5001").index
    dp.nl.table[2] = dataclasses.replace(dp.nl.table[2], mtu=9000)  # the operator's jumbo
    observed = dp.observe()
    ops = plan(WANT, observed)
    assert ops[0] == NetworkOp("ensure", RED)
    assert dp.apply(ops) == []
    assert mtus(dp) == {"gwa-vl-5001": 1450, "gwa-vt-5001": 8950}
    assert dp.nl.by_name("gwa-vt-5001").index == index  # fixed, not recreated
    assert dp.observe() == WANT and plan(WANT, dp.observe()) == []


def test_an_address_not_held_here_leaves_the_kernel_default():
    dp = gateway(9000, 9000)
    dp.nl.addresses.pop("198.18.0.1")  # a standby: the transit address is the active's
    assert dp.apply(plan(WANT, dp.observe())) == []
    assert mtus(dp) == {"gwa-vl-5001": 8950, "gwa-vt-5001": 1500}
    dp.nl.addresses["198.18.0.1"] = "eth1"  # taken over
    assert dp.apply(plan(WANT, dp.observe())) == []
    assert mtus(dp)["gwa-vt-5001"] == 8950


def test_the_encapsulation_depends_on_the_underlay_family():
    # an underlay too small to carry IPv4 inside (68 bytes) is left to the kernel
    assert vxlan_mtus({"198.18.0.1": 1500, "2001:db8::1": 1500, "127.0.0.1": 100}) == {
        "198.18.0.1": 1450, "2001:db8::1": 1430}

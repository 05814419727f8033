"""``lab_up``: a lab with a prefix of its own, always brought down.

A module of its own (not conftest) so that tests import it by a name no
other test directory uses.
"""
from __future__ import annotations

import contextlib
import os
import secrets
import sys
import time

import pytest

from gwagent.lab import build
from gwagent.lab import topology as topo_mod


#: The gateways' backends every lab test and drill runs on.
BACKENDS = ("linux", "openflow")

VIP_MAC = "fa:16:3e:00:01:00"        # a VRRP-style MAC of its own
VIP_IP = "198.19.10.100"             # in allowed address pairs with VIP_MAC
VIP_SAME_MAC_IP = "198.19.10.101"    # in allowed address pairs with the port's MAC


def neutron_topology() -> topo_mod.Topology:
    """The Neutron lab's: the default lab, a1-red holding two VIPs in its
    allowed address pairs, and a third site c (one compute, c1-red) for
    the fault matrix."""
    data = topo_mod.to_dict(topo_mod.load())
    for vm in data["vms"]:
        if vm["name"] == "a1-red":
            vm["allowed_address_pairs"] = [
                {"ip_address": VIP_IP, "mac_address": VIP_MAC},
                {"ip_address": VIP_SAME_MAC_IP, "mac_address": vm["mac"]}]
    data["sites"].append({"name": "c", "gateway": "c-gw", "computes": ["c-cn1"],
                          "segmentation_ids": {"red": 3001, "blue": 3002}})
    data["vms"].append({"name": "c1-red", "site": "c", "compute": "c-cn1",
                        "network": "red", "ip": "198.19.10.31"})
    return topo_mod.parse(data)


@contextlib.contextmanager
def lab_up(topology: topo_mod.Topology | None = None, agents: bool = True,
           neutron: bool = False, backend: str = "linux"):
    if os.geteuid() != 0:
        pytest.fail("functional lab tests need root (network namespaces); run them as root")
    if neutron:
        from gwagent.lab import neutron as lab_neutron
        missing = lab_neutron.missing_requirements()
        if missing:  # CI provides both: a missing one is a failure, not a skip
            pytest.fail("the Neutron lab tests need " + " and ".join(missing))
    prefix = f"gwf-{secrets.token_hex(3)}-"
    lab = None
    try:
        lab = build.up(topology or topo_mod.load(), prefix, agents=agents, neutron=neutron,
                       backend=backend)
        yield lab
    finally:
        if lab is not None:
            for record in lab.processes.values():
                sys.stdout.write(f"--- tail of {record['log']}\n{build.log_tail(record['log'])}\n")
        build.down(prefix)


def wait_for(predicate, timeout: float, interval: float = 0.02):
    """The first true value of ``predicate()``; fails the test after ``timeout``
    (a deadline, never a fixed sleep)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout}s: {predicate.__doc__ or predicate}")
        time.sleep(interval)

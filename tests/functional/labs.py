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
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gwagent.lab import build
from gwagent.lab import topology as topo_mod


#: The gateways' backends every lab test and drill runs on.
BACKENDS = ("linux", "openflow")


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


def wait_for(predicate, timeout: float, interval: float = 0.02, seen=None):
    """The first true value of ``predicate()``; fails the test after ``timeout``
    (a deadline, never a fixed sleep), saying what ``seen()`` (if given) shows
    of the state at that moment."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            what = f"; last seen: {seen()}" if seen is not None else ""
            pytest.fail(f"condition not met within {timeout}s: "
                        f"{predicate.__doc__ or predicate}{what}")
        time.sleep(interval)


def scrape(lab, site: str) -> dict:
    """The site's agent's Prometheus metrics over HTTP, parsed by
    prometheus_client's own parser: {(name, labels as a sorted tuple): value}."""
    with urllib.request.urlopen(build.metrics_url(lab, site), timeout=10) as resp:
        text = resp.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}

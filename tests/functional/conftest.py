"""Fixtures for the lab's functional tests: real namespaces, real agents.

Each lab gets its own prefix (``gwf-<random>-``), so runs never collide with
a developer's ``gwl-`` lab or with each other, and is ALWAYS brought down,
whatever happened: ``lab_up`` calls ``down`` in a ``finally``, and ``down``
also clears a half-built lab. ``lab`` is shared by a module's tests, which
must leave it as they found it; ``own_lab`` is a fresh lab for a test that
moves things around (a lab comes up in about two seconds). ``lab_up(...,
neutron=True)`` brings up a Neutron lab (one Neutron per site and RabbitMQ,
about 45 s), stopped the same way by ``down``.
"""
from __future__ import annotations

import contextlib
import os
import secrets
import sys

import pytest

from gwagent.lab import build
from gwagent.lab import topology as topo_mod


@contextlib.contextmanager
def lab_up(topology: topo_mod.Topology | None = None, agents: bool = True,
           neutron: bool = False):
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
        lab = build.up(topology or topo_mod.load(), prefix, agents=agents, neutron=neutron)
        yield lab
    finally:
        if lab is not None:
            for record in lab.processes.values():
                sys.stdout.write(f"--- tail of {record['log']}\n{build.log_tail(record['log'])}\n")
        build.down(prefix)


@pytest.fixture(scope="module")
def lab():
    with lab_up() as shared:
        yield shared


@pytest.fixture
def own_lab():
    with lab_up() as fresh:
        yield fresh

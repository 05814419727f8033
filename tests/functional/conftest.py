"""Fixtures for the lab's functional tests: real namespaces, real agents.

Each lab gets its own prefix (``gwf-<random>-``), so runs never collide with
a developer's ``gwl-`` lab or with each other, and is ALWAYS brought down,
whatever happened: ``lab_up`` calls ``down`` in a ``finally``, and ``down``
also clears a half-built lab. ``lab`` is shared by a module's tests, which
must leave it as they found it; ``own_lab`` is a fresh lab for a test that
moves things around (a lab comes up in about two seconds). ``lab_up(...,
neutron=True)`` brings up a Neutron lab (one Neutron per site and RabbitMQ,
about 45 s), stopped the same way by ``down``. ``lab`` and ``own_lab`` are
parametrised over the gateways' backends (``linux``, ``openflow``): every
test that takes them runs on both. ``neutron_lab`` is one three-site Neutron
lab per backend (:func:`labs.neutron_topology`) shared by the whole session
(the Neutron tests and the fault matrix: a Neutron lab takes about a minute
to come up), whose tests must leave it as they found it; down stops every
process it started.
"""
from __future__ import annotations

import contextlib
import time

import pytest

from gwagent.lab import build
from labs import BACKENDS, lab_up, neutron_topology


@pytest.fixture(scope="module", params=BACKENDS)
def lab(request):
    with lab_up(backend=request.param) as shared:
        yield shared


@pytest.fixture(params=BACKENDS)
def own_lab(request):
    with lab_up(backend=request.param) as fresh:
        yield fresh


_NEUTRON_LABS: dict[str, contextlib.ExitStack] = {}


@pytest.fixture(scope="session", params=BACKENDS)
def neutron_lab(request):
    stack = _NEUTRON_LABS[request.param] = contextlib.ExitStack()
    records: dict = {}

    def all_stopped():
        # down stopped every process it started (Neutron servers, RabbitMQ
        # and the L2 agents included), by pid and process group.
        left = {name: r["pid"] for name, r in records.items() if build.process_alive(r)}
        assert not left, f"still running after lab down: {left}"
    stack.callback(all_stopped)
    start = time.monotonic()
    lab = stack.enter_context(lab_up(neutron_topology(), neutron=True, backend=request.param))
    print(f"Neutron lab ({request.param}) up in {time.monotonic() - start:.1f} s")
    records.update(lab.processes)
    yield lab
    stack.close()


def pytest_runtest_teardown(item, nextitem):
    """A Neutron lab goes down after the last test that uses it, not at the
    end of the session: the rest of the suite should not run beside three
    idle Neutrons and their pollers."""
    if "neutron_lab" in item.fixturenames and (
            nextitem is None or "neutron_lab" not in nextitem.fixturenames):
        for stack in _NEUTRON_LABS.values():
            stack.close()

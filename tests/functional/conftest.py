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
test that takes them runs on both.
"""
from __future__ import annotations

import pytest

from labs import BACKENDS, lab_up


@pytest.fixture(scope="module", params=BACKENDS)
def lab(request):
    with lab_up(backend=request.param) as shared:
        yield shared


@pytest.fixture(params=BACKENDS)
def own_lab(request):
    with lab_up(backend=request.param) as fresh:
        yield fresh

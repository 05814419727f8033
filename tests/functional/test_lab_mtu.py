"""A jumbo underlay: the gateways carry every frame the computes of a site
carry between themselves, on both backends.

The lab's underlay at MTU 9000 (``mtu:`` in the topology), the VMs at 8950:
a datagram of 8,000 bytes sent with DF from a1-red reaches a2-red (the
computes' own VXLAN, no gateway) and b1-red (through both gateways). Before
the Linux backend took its VXLAN devices' MTU from the underlay, both were
dropped on Linux: its devices sat at the kernel's 1500, on the gateways and
on the lab's computes, which use the same backend (a real compute sets its
own from the network's MTU)."""
from __future__ import annotations

import socket
import time

import pytest

from gwagent.lab import probe
from gwagent.lab import topology as topo_mod

from labs import BACKENDS, lab_up

PORT, SIZE = 9401, 8000
IP_MTU_DISCOVER, IP_PMTUDISC_DO = 10, 2


@pytest.fixture(scope="module", params=BACKENDS)
def jumbo_lab(request):
    topology = topo_mod.parse({**topo_mod.to_dict(topo_mod.load()), "mtu": 9000})
    with lab_up(topology, backend=request.param) as lab:
        yield lab


def arrives(lab, src: str, dst: str, size: int, timeout: float = 10.0) -> int | None:
    """The length of the first datagram of ``size`` bytes (DF set) from
    ``src`` that ``dst`` receives, sent every 50 ms until ``timeout``."""
    rx = probe.udp_receiver(lab.ns(dst), PORT)
    tx = probe.ns_socket(lab.ns(src))
    try:
        tx.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DO)
        rx.settimeout(0.05)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            tx.sendto(b"j" * size, (lab.topology.vm(dst).ip, PORT))
            try:
                return len(rx.recv(65535))
            except socket.timeout:
                continue
        return None
    finally:
        rx.close()
        tx.close()


def test_the_lab_is_jumbo(jumbo_lab):
    topology = jumbo_lab.topology
    assert topology.mtu == 9000 and topology.vm_mtu == 8950
    assert topo_mod.parse(topo_mod.to_dict(topology)) == topology


@pytest.mark.parametrize("dst", ["a2-red", "b1-red", "b2-blue"])
def test_a_jumbo_frame_crosses_as_it_does_inside_a_site(jumbo_lab, dst):
    src = "a1-blue" if dst.endswith("blue") else "a1-red"
    assert arrives(jumbo_lab, src, dst, SIZE) == SIZE

"""TCP throughput VM to VM: across the gateways against the direct VXLAN path.

One lab (the default topology, prefix ``gwp-<random>-``, always brought
down) carries both paths from the same source VM ``a1-red``:

* through the gateways: ``a1-red`` (site a) to ``b1-red`` (site b): VXLAN to
  gateway a, decap, bridge, re-encap on the transit VNI, the same again in
  gateway b, VXLAN to the compute;
* direct: ``a1-red`` to ``a2-red`` (site a, the other compute): one VXLAN hop
  compute to compute over one underlay segment, no gateway, exactly what
  Neutron's linuxbridge agent builds between two computes.

Both run iperf3 (TCP, one stream, ``-t`` seconds) with server and client as
processes inside the VM namespaces (``ip netns exec``), started and stopped
by PID. The paths are measured alternately, twice each, and the mean of
each is compared: the figure is the ratio gateway/direct (target >= 0.8,
aim 0.9; DESIGN.md measured about 0.8 here). Figures go to the benchmark's
``extra_info`` and to the shared report's ``figures`` under
``throughput/*``.

The ingress filter (``[gateway] ingress_filter``) and the MAC guard
(``[gateway] mac_guard``) are measured on the path through the gateways, on
and off alternately by SIGHUP, on both backends: ``-k ingress``, ``-k
guard``.
"""
from __future__ import annotations

import configparser
import contextlib
import json
import os
import secrets
import signal
import subprocess
import time

import pytest

from gwagent.lab import build
from gwagent.lab import topology as topo_mod

SECONDS = 5
RUNS_PER_PATH = 2
PORT = 5201
TARGET, AIM = 0.8, 0.9


@contextlib.contextmanager
def backend_lab(backend: str = "linux", tag: str = "gwp"):
    """The default topology's lab on ``backend``, prefix ``<tag>-<random>-``,
    always brought down."""
    prefix = f"{tag}-{secrets.token_hex(3)}-"
    try:
        yield build.up(topo_mod.load(), prefix, backend=backend)
    finally:
        build.down(prefix)


@pytest.fixture(scope="module")
def lab():
    with backend_lab() as built:
        yield built


def iperf(lab: build.Lab, src: str, dst: str, seconds: int = SECONDS,
          udp_len: int | None = None) -> float:
    """Bits per second received by ``dst`` from one TCP stream from ``src``;
    with ``udp_len``: packets per second received of a UDP stream of
    payloads that long, sent as fast as iperf3 can (``-b 0``)."""
    server = subprocess.Popen(["ip", "netns", "exec", lab.ns(dst), "iperf3", "-s", "-1",
                               "-p", str(PORT)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.3)
        out = subprocess.run(["ip", "netns", "exec", lab.ns(src), "iperf3", "-c",
                              lab.topology.vm(dst).ip, "-p", str(PORT), "-t", str(seconds),
                              "-J", *(("-u", "-l", str(udp_len), "-b", "0") if udp_len else ())],
                             capture_output=True, text=True, timeout=seconds + 20)
        result = json.loads(out.stdout)
        if "error" in result:
            raise RuntimeError(f"iperf3 {src} -> {dst}: {result['error']}")
        if udp_len:  # the receiver's count, which the client reports at the end
            total = result["end"]["sum"]
            return (total["packets"] - total["lost_packets"]) / total["seconds"]
        return result["end"]["sum_received"]["bits_per_second"]
    finally:
        with contextlib.suppress(ProcessLookupError):
            server.terminate()
        try:
            server.wait(timeout=5)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def direct_and_through(benchmark, lab, **kwargs) -> tuple[list, list]:
    """iperf3 a1-red -> a2-red (direct) and a1-red -> b1-red (through both
    gateways), alternately, RUNS_PER_PATH each, as one benchmark round."""
    direct, gateway = [], []

    def measure():
        for _ in range(RUNS_PER_PATH):
            direct.append(iperf(lab, "a1-red", "a2-red", **kwargs))
            gateway.append(iperf(lab, "a1-red", "b1-red", **kwargs))

    benchmark.pedantic(measure, rounds=1, iterations=1)
    return direct, gateway


def test_throughput_through_gateways_vs_direct_vxlan(benchmark, lab, figures):
    direct, gateway = direct_and_through(benchmark, lab)
    direct_bps = sum(direct) / len(direct)
    gateway_bps = sum(gateway) / len(gateway)
    ratio = gateway_bps / direct_bps
    info = {"direct_gbit_s": round(direct_bps / 1e9, 3),
            "gateway_gbit_s": round(gateway_bps / 1e9, 3),
            "ratio": round(ratio, 3), "target": TARGET, "aim": AIM,
            "runs": {"direct": [round(b / 1e9, 3) for b in direct],
                     "gateway": [round(b / 1e9, 3) for b in gateway]},
            "iperf3": f"TCP, 1 stream, -t {SECONDS}, {RUNS_PER_PATH} runs per path"}
    benchmark.extra_info.update(info)
    figures["throughput/vm-to-vm"] = info
    print(f"\nthroughput: direct {info['direct_gbit_s']} Gbit/s, through gateways "
          f"{info['gateway_gbit_s']} Gbit/s, ratio {ratio:.2f} (target >= {TARGET}, aim {AIM}); "
          f"runs {info['runs']}")
    assert gateway_bps > 0 and direct_bps > 0


FILTER_TARGET, FILTER_RUNS = 0.98, 4


@pytest.fixture(scope="module", params=("linux", "openflow"))
def filter_lab(request):
    with backend_lab(request.param) as built:
        yield built


#: (option of [gateway], its key in the agent's status): the ingress
#: filter and the MAC guard, each measured on vs off
FILTERS = {"ingress": ("ingress_filter", "ingress"), "guard": ("mac_guard", "mac_guard")}


def set_filter(lab: build.Lab, option: str, key: str, on: bool, timeout: float = 15.0) -> None:
    """[gateway] ``option`` of both gateways, by SIGHUP; waits until both
    agents report it (status ``key``)."""
    for site in lab.topology.sites:
        conf = configparser.ConfigParser()
        conf.read(lab.agent_conf(site.name))
        conf["gateway"][option] = str(on).lower()
        with open(lab.agent_conf(site.name), "w") as handle:
            conf.write(handle)
        os.kill(lab.processes[f"{site.name}-gw"]["pid"], signal.SIGHUP)
    deadline = time.monotonic() + timeout
    while not all(((build.agent_status(lab, s.name) or {}).get(key) or {}).get("enabled")
                  is on for s in lab.topology.sites):
        if time.monotonic() > deadline:
            raise AssertionError(f"the agents did not report {option} = {on}")
        time.sleep(0.1)


@pytest.mark.parametrize("which", sorted(FILTERS))
def test_throughput_with_the_filter_on_vs_off(benchmark, filter_lab, figures, which):
    """TCP a1-red -> b1-red through both gateways with the ingress filter
    (``-k ingress``) or the MAC guard (``-k guard``) on and off,
    FILTER_RUNS each, in the order on-off, off-on, ... so that a drift of
    the machine falls on both (target: on >= 0.98 of off; one run's spread
    here is about 10%, see the README)."""
    lab, runs = filter_lab, {True: [], False: []}
    option, key = FILTERS[which]

    def measure():
        for i in range(FILTER_RUNS):
            for on in ((True, False) if i % 2 == 0 else (False, True)):
                set_filter(lab, option, key, on)
                runs[on].append(iperf(lab, "a1-red", "b1-red"))
        set_filter(lab, option, key, True)

    benchmark.pedantic(measure, rounds=1, iterations=1)
    on_bps, off_bps = (sum(runs[k]) / len(runs[k]) for k in (True, False))
    info = {"on_gbit_s": round(on_bps / 1e9, 3), "off_gbit_s": round(off_bps / 1e9, 3),
            "ratio": round(on_bps / off_bps, 3), "target": FILTER_TARGET,
            "runs": {k: [round(b / 1e9, 3) for b in v] for k, v in
                     (("on", runs[True]), ("off", runs[False]))},
            "iperf3": f"TCP, 1 stream, -t {SECONDS}, {FILTER_RUNS} runs each"}
    benchmark.extra_info.update(info)
    figures[f"throughput/{option.replace('_', '-')}/{lab.backend}"] = info
    print(f"\n{option} ({lab.backend}): on {info['on_gbit_s']} Gbit/s, off "
          f"{info['off_gbit_s']} Gbit/s, ratio {info['ratio']} (target >= {FILTER_TARGET}); "
          f"runs {info['runs']}")
    assert on_bps > 0 and off_bps > 0


SMALL, SMALL_TARGET = 64, 0.8


def test_small_packets_through_gateways_vs_direct_vxlan(benchmark, filter_lab, figures):
    """UDP packets per second, 64-byte payloads (the VNFs' signalling and
    media are small packets), a1-red -> b1-red through both gateways
    against a1-red -> a2-red direct, alternately, RUNS_PER_PATH each, on
    both backends (target: >= 0.8x direct)."""
    lab = filter_lab
    direct, gateway = direct_and_through(benchmark, lab, udp_len=SMALL)
    direct_pps, gateway_pps = sum(direct) / len(direct), sum(gateway) / len(gateway)
    info = {"direct_kpps": round(direct_pps / 1e3, 1), "gateway_kpps": round(gateway_pps / 1e3, 1),
            "ratio": round(gateway_pps / direct_pps, 3), "target": SMALL_TARGET,
            "runs": {"direct": [round(p / 1e3, 1) for p in direct],
                     "gateway": [round(p / 1e3, 1) for p in gateway]},
            "iperf3": f"UDP, -l {SMALL} -b 0, -t {SECONDS}, {RUNS_PER_PATH} runs per path"}
    benchmark.extra_info.update(info)
    figures[f"throughput/small-packets/{lab.backend}"] = info
    print(f"\nsmall packets ({lab.backend}): direct {info['direct_kpps']} kpps, through "
          f"gateways {info['gateway_kpps']} kpps, ratio {info['ratio']} (target >= "
          f"{SMALL_TARGET}); runs {info['runs']}")
    assert gateway_pps > 0 and direct_pps > 0

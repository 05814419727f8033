"""What each per-packet setting does to forwarding through the gateways.

The speed issue's item 3: GRO, GSO, checksum offloads, RPS, UDP GRO
forwarding, and bridge netfilter, each on and off in one lab of the
default topology, ``a1-red`` -> ``b1-red`` through both gateways: UDP
packets per second (64-byte payloads) and TCP (one stream). The states
alternate (on-off, off-on, ...) so that a drift of the machine falls on
both; each setting is put back before the next. Settings are applied by
hand (``ethtool``, sysfs, sysctl) inside the lab's gateway namespaces, on
the gateway's own devices ("own": ``gwa-`` VXLAN devices and bridges, which
exist on Linux only) or on its underlay NICs (``eth0``/``eth1``: the
operator's, on both backends).

One case changes the computes too: ``vxlan-gro-off/mtu-sized`` turns GSO
off on the lab's computes so that frames reach the gateway one MTU each, as
from a wire whose NIC does not aggregate; that is where the gateway's own
GRO matters. What the product sets after this is in the README.

Figures go to ``figures["forwarding/<backend>/<setting>/<udp|tcp>"]``.
"""
from __future__ import annotations

import subprocess

import pytest

from gwagent.lab import build

from test_throughput import backend_lab, iperf

RUNS = 3
GATEWAYS = ("a-gw", "b-gw")
COMPUTES = ("a-cn1", "a-cn2", "b-cn1", "b-cn2")


def _sh(lab: build.Lab, node: str, script: str) -> None:
    subprocess.run(["ip", "netns", "exec", lab.ns(node), "sh", "-c", script], check=True,
                   capture_output=True)


def _each(lab: build.Lab, node: str, devices: str, command: str) -> None:
    """``command`` with ``$d`` for each device of ``node`` matching the glob."""
    _sh(lab, node, f"for d in $(ls /sys/class/net); do case $d in {devices}) {command};; "
                   "esac; done")


def _rps(mask: str) -> str:
    return f"for q in /sys/class/net/$d/queues/rx-*; do echo {mask} > $q/rps_cpus; done"


#: name -> (backends, mode(s), set(lab, on))
SETTINGS = {
    "vxlan-gro-off": (("linux",), ("udp", "tcp"), lambda lab, on: [
        _each(lab, g, "gwa-v*", f"ethtool -K $d gro {'off' if on else 'on'}") for g in GATEWAYS]),
    "vxlan-gro-off/mtu-sized": (("linux",), ("tcp",), lambda lab, on: [
        _each(lab, g, "gwa-v*", f"ethtool -K $d gro {'off' if on else 'on'}") for g in GATEWAYS]),
    "rps-own": (("linux",), ("udp", "tcp"), lambda lab, on: [
        _each(lab, g, "gwa-*", _rps("3" if on else "0")) for g in GATEWAYS]),
    "tx-checksum-off-own": (("linux",), ("udp", "tcp"), lambda lab, on: [
        _each(lab, g, "gwa-*", f"ethtool -K $d tx {'off' if on else 'on'}") for g in GATEWAYS]),
    "gso-off-own": (("linux",), ("udp", "tcp"), lambda lab, on: [
        _each(lab, g, "gwa-*", f"ethtool -K $d gso {'off' if on else 'on'} "
                               f"tso {'off' if on else 'on'}") for g in GATEWAYS]),
    "bridge-netfilter-off": (("linux",), ("udp", "tcp"), lambda lab, on: [
        _sh(lab, g, " ".join(f"sysctl -qw net.bridge.bridge-nf-call-{t}={0 if on else 1};"
                             for t in ("iptables", "ip6tables", "arptables")))
        for g in GATEWAYS]),
    "udp-gro-forwarding-underlay": (("linux", "openflow"), ("udp", "tcp"), lambda lab, on: [
        _each(lab, g, "eth*", f"ethtool -K $d gro {'on' if on else 'off'} "
                              f"rx-udp-gro-forwarding {'on' if on else 'off'}")
        for g in GATEWAYS]),
    "rps-underlay": (("linux", "openflow"), ("udp", "tcp"), lambda lab, on: [
        _each(lab, g, "eth*", _rps("3" if on else "0")) for g in GATEWAYS]),
}


def _segmented(lab: build.Lab, on: bool) -> None:
    """Frames from the computes one MTU each (GSO off on every device of
    theirs), or as the lab sends them (GSO skbs across the veths)."""
    for node in COMPUTES:
        _each(lab, node, "eth*|gwa-*|tap*", f"ethtool -K $d gso {'off' if on else 'on'} "
                                           f"tso {'off' if on else 'on'}")


#: (backend, setting) where the setting's devices exist
CASES = [(backend, name) for backend in build.BACKENDS for name in sorted(SETTINGS)
         if backend in SETTINGS[name][0]]


@pytest.fixture(scope="module")
def settings_lab(request):
    with backend_lab(request.param, "gws") as built:
        yield built


@pytest.mark.parametrize("settings_lab, setting", CASES, indirect=["settings_lab"])
def test_forwarding_setting_on_vs_off(benchmark, settings_lab, figures, setting):
    lab = settings_lab
    _, modes, apply = SETTINGS[setting]
    segmented = setting.endswith("/mtu-sized")
    results: dict[str, dict[bool, list[float]]] = {m: {True: [], False: []} for m in modes}

    def measure():
        _segmented(lab, segmented)
        try:
            for mode in modes:
                for i in range(RUNS):
                    for on in ((True, False) if i % 2 == 0 else (False, True)):
                        apply(lab, on)
                        results[mode][on].append(iperf(
                            lab, "a1-red", "b1-red", **({"udp_len": 64} if mode == "udp" else {})))
        finally:
            apply(lab, False)
            _segmented(lab, False)

    benchmark.pedantic(measure, rounds=1, iterations=1)
    for mode, runs in results.items():
        scale, unit = (1e3, "kpps") if mode == "udp" else (1e9, "Gbit/s")
        on, off = (sum(runs[k]) / len(runs[k]) / scale for k in (True, False))
        info = {"on": round(on, 2), "off": round(off, 2), "unit": unit,
                "ratio": round(on / off, 3),
                "runs": {"on": [round(x / scale, 2) for x in runs[True]],
                         "off": [round(x / scale, 2) for x in runs[False]]},
                "iperf3": ("UDP -l 64 -b 0" if mode == "udp" else "TCP, 1 stream")
                + f", {RUNS} runs each state"}
        figures[f"forwarding/{lab.backend}/{setting}/{mode}"] = info
        benchmark.extra_info[mode] = info
        print(f"\n{lab.backend} {setting} {mode}: on {on:.2f} off {off:.2f} {unit}, "
              f"ratio {on / off:.3f}; runs {info['runs']}")
        assert on > 0 and off > 0

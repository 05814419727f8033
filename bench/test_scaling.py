"""The scaling curve: the gateway at 1k, 10k, 100k and 1M remote endpoints.

    .venv/bin/pytest bench/test_scaling.py -p no:cacheprovider --benchmark-only -s

Over 10 and over 1000 networks, on both backends, each point in a process of
its own (bench/scaling_point.py says what it measures). Writes
``bench/results/scaling.md`` (the table), ``scaling.json`` and
``scaling.png`` (log-log: time and memory against endpoints). About 30-45
minutes; ``GWAGENT_SCALING_SIZES=1000,10000`` runs a shorter curve.

A step is "worse than linear" where a figure grows by more than the size
times 1.5 (and by more than 50 ms or 50 MiB, below which noise rules);
each step says so in the table.
"""
from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
RESULTS = HERE / "results"
SIZES = tuple(int(n) for n in os.environ.get(
    "GWAGENT_SCALING_SIZES", "1000,10000,100000,1000000").split(","))
SPREADS = (10, 1000)
BACKENDS = ("linux", "openflow")
FIGURES = (("cold_s", "cold reconcile", "s"), ("idle_s", "pass with nothing to change", "s"),
           ("change_s", "one endpoint changed", "s"),
           ("registry_change_s", "the registrar after it", "s"),
           ("rss_peak_mib", "agent peak RSS", "MiB"),
           ("dataplane_mib", "kernel / OVS memory", "MiB"))
FLOOR = {"s": 0.05, "MiB": 50.0}


def point(backend: str, endpoints: int, networks: int) -> dict:
    start = time.monotonic()
    out = subprocess.run([sys.executable, str(HERE / "scaling_point.py"), "--backend", backend,
                          "--endpoints", str(endpoints), "--networks", str(networks)],
                         capture_output=True, text=True, timeout=1800)
    if out.returncode != 0:
        raise AssertionError(f"{backend} {endpoints}/{networks}: {out.stderr[-2000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"  {backend:8} {endpoints:>9,} endpoints / {networks:>4} networks: "
          f"cold {result['cold_s']:.2f} s, idle {result['idle_s'] * 1000:.1f} ms, "
          f"change {result['change_s'] * 1000:.1f} ms, registrar "
          f"{result['registry_change_s'] * 1000:.2f} ms, RSS {result['rss_peak_mib']:.0f} MiB "
          f"({time.monotonic() - start:.0f} s)", flush=True)
    return result


def superlinear(points: list[dict]) -> list[str]:
    """The steps of one curve where a figure grew faster than linear."""
    worse = []
    for a, b in zip(points, points[1:]):
        growth = b["endpoints"] / a["endpoints"]
        for key, label, unit in FIGURES:
            if b[key] > a[key] * growth * 1.5 and b[key] - a[key] > FLOOR[unit]:
                worse.append(f"{label} {a['endpoints']:,} -> {b['endpoints']:,}: "
                             f"x{b[key] / max(a[key], 1e-9):.1f} for x{growth:.0f}")
    return worse


def curves(results: list[dict]) -> dict:
    out: dict = {}
    for r in results:
        out.setdefault((r["backend"], r["networks"]), []).append(r)
    return {k: sorted(v, key=lambda r: r["endpoints"]) for k, v in sorted(out.items())}


def table(results: list[dict]) -> str:
    lines = ["| backend | networks | endpoints | cold reconcile | nothing to change | "
             "one endpoint changed | the registrar after it | agent peak RSS | "
             "kernel / OVS memory |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    notes = []
    for (backend, networks), pts in curves(results).items():
        for r in pts:
            lines.append(f"| {backend} | {networks:,} | {r['endpoints']:,} | {r['cold_s']:.2f} s | "
                         f"{r['idle_s'] * 1000:.1f} ms | {r['change_s'] * 1000:.0f} ms | "
                         f"{r['registry_change_s'] * 1000:.2f} ms | "
                         f"{r['rss_peak_mib']:,.0f} MiB | {r['dataplane_mib']:,.0f} MiB |")
        notes += [f"* {backend}, {networks} networks: {w}" for w in superlinear(pts)]
    lines += ["", "Steps worse than linear (x1.5 the size's growth):", ""]
    lines += notes or ["* none"]
    return "\n".join(lines) + "\n"


def plot(results: list[dict], path: pathlib.Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.5))
    styles = {"linux": "-", "openflow": "--"}
    colours = {"cold_s": "C0", "idle_s": "C1", "change_s": "C2", "registry_change_s": "C5",
               "rss_peak_mib": "C3", "dataplane_mib": "C4"}
    markers = {10: "o", 1000: "s"}
    for (backend, networks), pts in curves(results).items():
        xs = [r["endpoints"] for r in pts]
        for key, label, unit in FIGURES:
            ax = axes[0] if unit == "s" else axes[1]
            ax.plot(xs, [max(r[key], 1e-4) for r in pts], styles[backend],
                    marker=markers.get(networks, "x"), color=colours[key],
                    label=f"{label}, {backend}, {networks} networks")
    for ax, unit in zip(axes, ("seconds", "MiB")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("remote endpoints")
        ax.set_ylabel(unit)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=6)
    axes[0].set_title("time (linux solid, openflow dashed; o 10 networks, s 1000)")
    axes[1].set_title("memory")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def test_scaling_curve(benchmark, figures):
    results: list[dict] = []

    def curve():
        for backend in BACKENDS:
            for networks in SPREADS:
                for endpoints in SIZES:
                    results.append(point(backend, endpoints, networks))
    benchmark.pedantic(curve, rounds=1, iterations=1)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "scaling.json").write_text(json.dumps(results, indent=1) + "\n")
    (RESULTS / "scaling.md").write_text(
        "# The scaling curve\n\n`.venv/bin/pytest bench/test_scaling.py -p no:cacheprovider "
        "--benchmark-only -s` (bench/scaling_point.py: what each figure is)\n\n"
        + table(results))
    plot(results, RESULTS / "scaling.png")
    print("\n" + table(results))
    figures["scaling"] = {"points": results}

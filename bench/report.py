"""The benchmark report: one table of figures, baselines, ratios and targets.

The benchmarks (bench/test_*.py) record what they measured through the
``figures`` fixture (bench/conftest.py); at the end of the run this module
turns those into rows, prints them and merges them into ``bench/results.json``
(figures of earlier runs of other benchmarks stay; a figure measured again
replaces its old value), from which ``bench/results.md`` is rewritten. Throughput comparisons are ratios of entries/s,
higher is better; targets are stated, never asserted (a benchmark is not a
timed test).
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import pathlib


@dataclasses.dataclass(frozen=True)
class Row:
    name: str
    figure: str
    baseline: str = "-"
    ratio: str = "-"
    target: str = "-"
    met: str = "-"


def _rate(figures: dict, key: str) -> float | None:
    entry = figures.get(key)
    return entry["entries"] / entry["seconds"] if entry else None


def agent_pass_rows(figures: dict) -> list[Row]:
    """bench/test_agent_pass.py: the agent's whole pass, events against a
    full read (the audit), per backend."""
    rows = []
    for backend in ("linux", "openflow"):
        e = figures.get(f"agent_pass/{backend}")
        if not e:
            continue
        world = f"{e['endpoints']:,} remote endpoints, {e['networks']} networks"
        idle, audit = e["idle_seconds"], e["audit_seconds"]
        rows.append(Row(f"{backend}: agent pass with nothing to change, events vs a full read "
                        f"(the audit), {world}", f"{idle * 1000:.1f} ms",
                        f"{audit * 1000:,.0f} ms", f"{audit / idle:,.0f}x faster",
                        "< 50 ms", "yes" if idle < 0.05 else "NO"))
        rows.append(Row(f"{backend}: agent cold pass, {world}", f"{e['cold_seconds']:.2f} s",
                        target="< 1 s", met="yes" if e["cold_seconds"] < 1 else "NO"))
        rows.append(Row(f"{backend}: one owned entry deleted behind the agent's back, "
                        f"event to repaired, {world}", f"{e['change_seconds'] * 1000:.1f} ms"))
    return rows


def scaling_rows(figures: dict) -> list[Row]:
    """bench/test_scaling.py: the speed issue's targets on the curve (10
    networks; the whole curve is bench/results/scaling.md)."""
    rows = []
    points = {(p["backend"], p["networks"], p["endpoints"]): p
              for p in figures.get("scaling", {}).get("points", [])}
    for backend in ("linux", "openflow"):
        p = points.get((backend, 10, 100_000))
        if p:
            rows.append(Row(f"{backend}: pass with nothing to change, 100,000 endpoints (curve)",
                            f"{p['idle_s'] * 1000:.1f} ms", target="< 50 ms",
                            met="yes" if p["idle_s"] < 0.05 else "NO"))
        p = points.get((backend, 10, 1_000_000))
        if p:
            rows.append(Row(f"{backend}: cold reconcile, 1,000,000 endpoints", f"{p['cold_s']:.1f} s",
                            target="< 10 s", met="yes" if p["cold_s"] < 10 else "NO"))
            rows.append(Row(f"{backend}: agent peak RSS, 1,000,000 endpoints",
                            f"{p['rss_peak_mib']:,.0f} MiB", target="< 1024 MiB",
                            met="yes" if p["rss_peak_mib"] < 1024 else "NO"))
            rows.append(Row(f"{backend}: one endpoint changed, 1,000,000 endpoints",
                            f"{p['change_s'] * 1000:,.0f} ms"))
    return rows


def build_rows(figures: dict) -> list[Row]:
    """Rows for whatever was measured; ``figures`` maps a key to
    {"seconds": median seconds, "entries": how many entries}."""
    rows = []
    per_call = _rate(figures, "fdb/per-call-pyroute2/10k")
    for size in ("10k", "100k"):
        ours = _rate(figures, f"fdb/ours/{size}")
        if ours is None:
            continue
        batch = _rate(figures, f"fdb/bridge-batch/{size}")
        if batch:
            ratio = ours / batch
            rows.append(Row(f"FDB bulk add {size}: ours vs bridge -batch",
                            f"{ours:,.0f}/s", f"{batch:,.0f}/s", f"{ratio:.2f}x",
                            ">= 1.0x" if size == "10k" else "(info)",
                            ("yes" if ratio >= 1.0 else "NO") if size == "10k" else "-"))
        if per_call:
            ratio = ours / per_call
            note = "" if size == "10k" else " (per-call rate measured at 10k)"
            rows.append(Row(f"FDB bulk add {size}: ours vs per-call pyroute2{note}",
                            f"{ours:,.0f}/s", f"{per_call:,.0f}/s", f"{ratio:.1f}x",
                            ">= 10x", "yes" if ratio >= 10 else "NO"))
    for key, label, limit in (("reconcile/cold", "cold reconcile", 5.0),
                              ("reconcile/idle", "idle reconcile (observe + plan)", 1.0),
                              ("reconcile/observe", "observe only", None)):
        entry = figures.get(key)
        if entry:
            name = f"{label}, {entry['endpoints']:,} remote endpoints, " \
                   f"{entry['networks']} networks ({entry['entries']:,} MAC places and flood destinations)"
            target = f"< {limit:g} s" if limit else "-"
            met = ("yes" if entry["seconds"] < limit else "NO") if limit else "-"
            figure = f"{entry['seconds']:.3f} s"
            if "cpu_seconds" in entry:
                figure += (f" (min {entry['min_seconds']:.3f} s, CPU {entry['cpu_seconds']:.3f} s;"
                           f" load {entry['load_average']:.1f} on {entry['cpus']} CPUs)")
            rows.append(Row(name, figure, target=target, met=met))
    rows += agent_pass_rows(figures)
    rows += scaling_rows(figures)
    rows += openflow_rows(figures)
    bulk, naive = figures.get("neutron/bulk"), figures.get("neutron/naive")
    if bulk:
        ours = bulk["entries"] / bulk["seconds"]
        base = naive["entries"] / naive["seconds"] if naive else None
        rows.append(Row(f"Neutron cold sync, {bulk['entries']:,} remote ports, bulk "
                        f"{bulk['bulk_size']}: ours vs one request per port",
                        f"{bulk['seconds']:.1f} s ({ours:.1f} ports/s)",
                        f"{base:.1f} ports/s" if base else "-",
                        f"{ours / base:.2f}x" if base else "-", "< 10 s",
                        "yes" if bulk["seconds"] < 10 else "NO"))
    for key in ("neutron/bulk", "neutron/naive"):
        entry = figures.get(key)
        if entry and "one_change_s" in entry:
            rows.append(Row(f"Neutron one change to its remote port ({key.split('/')[1]}, "
                            f"{entry['entries']:,} ports)", f"{entry['one_change_s']:.2f} s",
                            target="< 2 s", met="yes" if entry["one_change_s"] < 2 else "NO"))
    rows += neutron_events_rows(figures)
    rows += failover_rows(figures)
    tput = figures.get("throughput/vm-to-vm")
    if tput:
        ratio = tput["ratio"]
        rows.append(Row("TCP VM to VM: through the gateways vs direct VXLAN",
                        f"{tput['gateway_gbit_s']} Gbit/s", f"{tput['direct_gbit_s']} Gbit/s",
                        f"{ratio:.2f}x", f">= {tput.get('target', 0.8)}x",
                        "yes" if ratio >= tput.get("target", 0.8) else "NO"))
    for backend in ("linux", "openflow"):
        small = figures.get(f"throughput/small-packets/{backend}")
        if small:
            rows.append(Row(f"UDP 64-byte packets VM to VM ({backend}): through the gateways "
                            "vs direct VXLAN", f"{small['gateway_kpps']} kpps",
                            f"{small['direct_kpps']} kpps", f"{small['ratio']:.2f}x",
                            f">= {small['target']}x",
                            "yes" if small["ratio"] >= small["target"] else "NO"))
    rows += forwarding_rows(figures)
    for (key, what), backend in itertools.product(
            (("ingress-filter", "ingress filter"), ("mac-guard", "MAC guard")),
            ("linux", "openflow")):
        fil = figures.get(f"throughput/{key}/{backend}")
        if fil:
            rows.append(Row(f"TCP through the gateways ({backend}): {what} on vs off",
                            f"{fil['on_gbit_s']} Gbit/s", f"{fil['off_gbit_s']} Gbit/s",
                            f"{fil['ratio']:.2f}x", f">= {fil['target']}x",
                            "yes" if fil["ratio"] >= fil["target"] else "NO"))
    return rows


def forwarding_rows(figures: dict) -> list[Row]:
    """bench/test_forwarding_settings.py: each setting on vs off (info:
    what helps is set by the product, see the README)."""
    rows = []
    for key in sorted(k for k in figures if k.startswith("forwarding/")):
        parts = key.split("/")  # forwarding/<backend>/<setting, may hold a />/<udp|tcp>
        backend, setting, mode = parts[1], "/".join(parts[2:-1]), parts[-1]
        f = figures[key]
        what = "UDP 64-byte packets" if mode == "udp" else "TCP"
        rows.append(Row(f"{what} through the gateways ({backend}): {setting} vs not",
                        f"{f['on']} {f['unit']}", f"{f['off']} {f['unit']}",
                        f"{f['ratio']:.2f}x", "(info)"))
    return rows


def neutron_events_rows(figures: dict) -> list[Row]:
    """bench/test_neutron_events.py: by notifications, per size."""
    rows = []
    for key in sorted((k for k in figures if k.startswith("neutron-events/")),
                      key=lambda k: figures[k]["entries"]):
        e = figures[key]
        if e.get("floor_s"):
            rows.append(Row(f"Neutron cold sync by the gateway, {e['ports']:,} ports: ours vs "
                            "Neutron's bulk create for a plain client",
                            f"{e['cold_s']:.1f} s", f"{e['floor_s']:.1f} s",
                            f"{e['cold_vs_floor']:.2f}x", "<= 1.2x",
                            "yes" if e["cold_vs_floor"] <= 1.2 else "NO"))
        rows.append(Row(f"Neutron one port created, {e['ports']:,} ports a site, by "
                        "notifications: to the peer's dataplane and registry",
                        f"{e['change_s']:.2f} s (dataplane {e['change_dataplane_s']:.2f} s, "
                        f"registry {e['change_registry_s']:.2f} s; max {e['change_max_s']:.2f} s)",
                        target="< 1 s", met="yes" if e["change_s"] < 1 else "NO"))
    return rows


def openflow_rows(figures: dict) -> list[Row]:
    rows = []
    per_message = _rate(figures, "of/per-message/10k")
    for size in ("10k", "100k"):
        ours = _rate(figures, f"of/ours/{size}")
        if ours is None:
            continue
        ofctl = _rate(figures, f"of/ofctl-bundle/{size}")
        if ofctl:
            ratio = ours / ofctl
            rows.append(Row(f"OVS bulk install {size} MAC flows: ours (one bundle) vs "
                            f"ovs-ofctl --bundle add-flows", f"{ours:,.0f}/s",
                            f"{ofctl:,.0f}/s", f"{ratio:.2f}x", ">= 1.0x",
                            "yes" if ratio >= 1.0 else "NO"))
        if per_message and size == "10k":
            rows.append(Row("OVS bulk install 10k MAC flows: ours vs per-message os-ken",
                            f"{ours:,.0f}/s", f"{per_message:,.0f}/s",
                            f"{ours / per_message:.2f}x"))
    for what, label in (("evidence", "GARP -> mobility evidence in the agent"),
                        ("move", "GARP -> traffic at the new place")):
        paths = [(name, figures.get(f"of/mobility/{what}/{name}"))
                 for name in ("tap", "tap-kernel", "packet-in", "learn")]
        paths = [(name, entry) for name, entry in paths if entry]
        if paths:
            rows.append(Row(f"OVS mobility: {label} (median, p90; side by side)",
                            "; ".join(f"{name} {entry['median_ms']:.2f} ms, "
                                      f"{entry['p90_ms']:.2f} ms"
                                      + (f" ({entry['lost']} lost)" if entry.get("lost") else "")
                                      for name, entry in paths)))
    for key, label in (("of/reconcile/cold", "OVS cold reconcile"),
                       ("of/reconcile/idle", "OVS pass with nothing to change")):
        entry = figures.get(key)
        if entry:
            extra = (f"; observe {entry['observe_seconds']:.2f} s"
                     if "observe_seconds" in entry else "")
            rows.append(Row(f"{label}, {entry['endpoints']:,} remote endpoints, "
                            f"{entry['networks']} networks", f"{entry['seconds']:.2f} s{extra}"))
    return rows


def _ms(value) -> str:
    return "-" if value is None else f"{value:.2f} ms"


def failover_rows(figures: dict) -> list[Row]:
    """Rows of bench/test_failover.py and bench/test_failure_domains.py."""
    rows = []
    g = figures.get("failover/garp")
    if g:
        med = g["first_reply_ms"]
        for mode in ("own-mac", "vmac"):
            cross, intra = med.get(f"{mode}/cross"), med.get(f"{mode}/intra")
            if cross is None or intra is None:
                continue
            added = cross - intra
            rows.append(Row(f"GARP to first reply, {mode}: across clouds vs inside one site "
                            f"({g['runs']} moves each way, every client)", _ms(cross),
                            _ms(intra), f"+{added:.2f} ms", "<= +5 ms",
                            "yes" if added <= 5 else "NO"))
    for advert in (100, 10):
        v = figures.get(f"failover/vrrp/{advert}")
        if not v:
            continue
        for mode in ("default", "vmac"):
            cross, intra = v["outage_ms"].get(f"{mode}/cross"), v["outage_ms"].get(f"{mode}/intra")
            if cross is None or intra is None:
                continue
            ratio = cross / intra if intra else float("inf")
            target = "<= 1.1x" + (", <= 50 ms" if advert == 10 else "")
            met = ratio <= 1.1 and (advert != 10 or cross <= 50)
            rows.append(Row(f"VRRP outage ({advert} ms adverts, {mode}): across clouds vs "
                            f"inside one site ({v['runs']} failovers each)", _ms(cross),
                            _ms(intra), f"{ratio:.2f}x", target, "yes" if met else "NO"))
    b = figures.get("failover/back-and-forth")
    if b:
        ok = b["stale"] == 0 and b["old_after"] == 0 and b["never"] == 0
        rows.append(Row(f"{b['moves']} GARP moves back and forth across clouds (vmac): stale "
                        "entries / replies from the old holder / never answered",
                        f"{b['stale']} / {b['old_after']} / {b['never']}", target="0 / 0 / 0",
                        met="yes" if ok else "NO"))
    st = figures.get("failover/storm")
    if st:
        for name, label in (("flapping", "a split brain: the virtual MAC from two candidates"),
                            ("rogue", "a rogue host claiming the virtual MAC")):
            r = st.get(name)
            if not r:
                continue
            cpu = max(r["cpu_percent"].values())
            rows.append(Row(f"CPU of the busiest gateway agent during {label}, "
                            f"{st['rate']:,.0f} frames/s for {r['seconds']} s",
                            f"{cpu:.0f}% of a core", target="bounded (frozen / refused)",
                            met=("yes" if (name == "rogue" or any(r["frozen"].values()))
                                 and cpu < 100 else "NO")))
    for backend in ("linux", "openflow"):
        h = figures.get(f"ha/gateway/{backend}")
        if not h:
            continue
        t, g = h["takeover"], h["giveback"]
        if t["outage_ms_median"] is not None:
            met = (t["outage_ms_max"] <= 500 and t["ratio_median"] <= 1.2 and not t["never"]
                   and not t["stale"] and not h["registry_writes"])
            rows.append(Row(f"gateway node death ({backend}; both NICs down, 100 ms adverts): "
                            f"outage across clouds vs VRRP's detection ({h['runs']} runs; "
                            f"worst {t['outage_ms_max']:.0f} ms; registry writes "
                            f"{h['registry_writes']})", _ms(t["outage_ms_median"]),
                            _ms(t["detection_ms_median"]), f"{t['ratio_median']:.2f}x",
                            "<= 500 ms and <= 1.2x", "yes" if met else "NO"))
        if g["outage_ms_median"] is not None:
            rows.append(Row(f"gateway give-back ({backend}): the preferred node returns and "
                            f"preempts; outage (worst {g['outage_ms_max']:.0f} ms)",
                            _ms(g["outage_ms_median"])))
    d = figures.get("domains/own-work")
    if d:
        for what, label in (("repair", "repair of an owned entry"),
                            ("change", "local port change to the dataplane")):
            r = d.get(what)
            if not r:
                continue
            met = r["ratio"] is not None and r["ratio"] <= 1.1 and r["delta_ms"] <= 100
            rows.append(Row(f"{label}: a peer's Neutron hung vs every peer healthy "
                            f"(median of {r['n']})", f"{r['hung_s'] * 1000:.1f} ms",
                            f"{r['healthy_s'] * 1000:.1f} ms", f"{r['ratio']:.2f}x",
                            "<= 1.1x and <= +100 ms", "yes" if met else "NO"))
    return rows


def render(rows: list[Row]) -> str:
    head = ["name", "figure", "baseline", "ratio", "target", "met"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append("| " + " | ".join(dataclasses.astuple(r)) + " |")
    return "\n".join(lines) + "\n"


def merge(directory: pathlib.Path, figures: dict, command: str) -> tuple[dict, list]:
    """``figures`` over those already in results.json; the commands that
    produced them (each figure's last)."""
    try:
        old = json.loads((directory / "results.json").read_text())
    except (OSError, ValueError):
        old = {}
    merged = {**old.get("figures", {}), **figures}
    before = old.get("commands")
    if before is None:  # written before commands were kept: the one in results.md
        try:
            before = [line.strip()[len("Command: `"):-1] for line in
                      (directory / "results.md").read_text().splitlines()
                      if line.startswith("Command: `")]
        except OSError:
            before = []
    commands = [c for c in before if c != command] + [command]
    return merged, commands


def write(rows: list[Row], figures: dict, directory: pathlib.Path, command: str) -> None:
    """Merge ``figures`` into results.json and rewrite results.md from all
    of them (``rows`` are this run's; the file gets every figure's row)."""
    figures, commands = merge(directory, figures, command)
    rows = build_rows(figures)
    text = ("# gwagent benchmark results\n\n"
            + "".join(f"Command: `{c}`\n" for c in commands) + "\n" + render(rows) +
            "\nFigures are medians over the benchmark's rounds (wall time); entries/s "
            "counts FDB entries programmed per second of wall time. CPU is the "
            "process's user + system time, which includes the kernel's work done "
            "in its netlink calls.\n")
    (directory / "results.md").write_text(text)
    (directory / "results.json").write_text(
        json.dumps({"rows": [dataclasses.asdict(r) for r in rows], "figures": figures,
                    "commands": commands},
                   indent=2, sort_keys=True) + "\n")

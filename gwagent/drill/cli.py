"""``gwagent drill``: failover drills against a running lab.

    gwagent drill garp [--mode own-mac|vmac|both] [--scope intra|cross|both] [--runs N]
    gwagent drill vrrp [--advert-ms 100] [--mode default|vmac|both] [--scope ...] [--runs N]
    gwagent drill gateway [--site a] [--runs N]   (a site with two gateway nodes)
    gwagent drill cleanup

Common options: ``--prefix``/``--lab-dir`` (which lab), ``--network``,
``--json`` (the results as JSON on stdout instead of the table),
``--plot FILE.png`` (a timeline of the first run of each mode and scope).
Progress goes to stderr. The exit status is 0 when every client reached
the VIP at its new place after every move and no stale entry was found,
1 otherwise, 2 when the drill could not run.
"""
from __future__ import annotations

import argparse
import sys


def _progress(msg: str) -> None:
    print(f"drill: {msg}", file=sys.stderr, flush=True)


def add_parser(subparsers) -> argparse.ArgumentParser:
    drill = subparsers.add_parser(
        "drill", help="failover drills against a running lab (GARP injection, keepalived)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = drill.add_subparsers(dest="drill_command", required=True, metavar="DRILL")

    def common(sp):
        sp.add_argument("--prefix", default="gwl-", help="the lab's prefix (default %(default)s)")
        sp.add_argument("--lab-dir", default=None,
                        help="the lab's directory (default /run/gwagent/lab/<prefix>)")
        return sp

    def drill_opts(sp, modes):
        common(sp)
        sp.add_argument("--network", default=None,
                        help="stretched network to drill on (default: the lab's first)")
        sp.add_argument("--mode", choices=[*modes, "both"], default="both",
                        help="where the VIP lives: " + " or ".join(modes)
                             + " (default: both, one after the other)")
        sp.add_argument("--scope", choices=["intra", "cross", "both"], default="both",
                        help="move inside the first site (the baseline), across to the "
                             "second, or both (default)")
        sp.add_argument("--runs", type=int, default=2, metavar="N",
                        help="moves per mode and scope, back and forth (default %(default)s)")
        sp.add_argument("--timeout", type=float, default=3.0,
                        help="seconds a move may take before it counts as failed")
        sp.add_argument("--json", action="store_true", help="results as JSON on stdout")
        sp.add_argument("--plot", metavar="FILE.png", help="write a timeline plot")
        return sp

    garp = drill_opts(sub.add_parser(
        "garp", help="move a VIP between VMs by one gratuitous ARP (scapy)"),
        ["own-mac", "vmac"])
    garp.set_defaults(func=cmd_garp)
    vrrp = drill_opts(sub.add_parser(
        "vrrp", help="real keepalived (VRRPv3) in the VMs; the master's NIC goes down"),
        ["default", "vmac"])
    vrrp.add_argument("--advert-ms", type=int, default=100,
                      help="VRRP advert interval in ms, 10..1000 (default %(default)s)")
    vrrp.set_defaults(func=cmd_vrrp)
    gw = common(sub.add_parser(
        "gateway", help="kill the active gateway node of a site under traffic (both its "
                        "NICs down), then bring it back (give-back)",
        description="For a site with two gateway nodes (topology: 'gateways: [a-gw1, "
                    "a-gw2]'): per run, both NICs of the active node go down under 1 ms "
                    "probes across clouds; the standby's keepalived takes the site's tunnel "
                    "and transit addresses. Reports per client the outage and probes lost, "
                    "VRRP's detection time (failure to the standby's GARP), whether the new "
                    "active node's dataplane is the old one's, and the writes to every "
                    "site's registry that followed (expected: none). Then the node comes "
                    "back and takes over again, measured the same way."))
    gw.add_argument("--site", default=None,
                    help="the site whose active gateway dies (default: the first with two)")
    gw.add_argument("--network", default=None,
                    help="stretched network to probe on (default: the lab's first)")
    gw.add_argument("--runs", type=int, default=1, metavar="N",
                    help="failures (each with its give-back; default %(default)s)")
    gw.add_argument("--timeout", type=float, default=3.0,
                    help="seconds a takeover may take after the GARP before it counts as "
                         "failed")
    gw.add_argument("--json", action="store_true", help="results as JSON on stdout")
    gw.add_argument("--plot", metavar="FILE.png", help="write a timeline plot")
    gw.set_defaults(func=cmd_gateway)
    common(sub.add_parser("cleanup", help="remove drill VMs left by an interrupted drill")
           ).set_defaults(func=cmd_cleanup)
    return drill


def _lab(args):
    from gwagent.lab.names import default_lab_dir
    from gwagent.lab.record import Lab
    return Lab.load(args.lab_dir or default_lab_dir(args.prefix))


def _choices(value, all_values):
    return list(all_values) if value == "both" else [value]


def _finish(args, moves, extra) -> int:
    from gwagent.drill import report
    if args.plot:
        report.plot(moves, args.plot)
        _progress(f"timeline written to {args.plot}")
    print(report.to_json(moves, extra) if args.json else report.table(moves))
    bad = [m for m in moves if m.stale or any(c.first_reply_ms is None for c in m.clients)]
    return 1 if bad else 0


def _run(args, body) -> int:
    from gwagent.drill import scenario as sc
    from gwagent.extras import MissingExtra, require
    from gwagent.lab.names import LabError
    if args.runs < 1:
        print("drill: error: --runs must be at least 1", file=sys.stderr)
        return 2
    try:
        require("drills", "scapy", "matplotlib", "os_ken", "ovsdbapp", feature="gwagent drill")
        lab = _lab(args)
        scenario = sc.prepare(lab, args.network, progress=_progress)
    except (MissingExtra, sc.DrillError, LabError) as exc:
        print(f"drill: error: {exc}", file=sys.stderr)
        return 2
    try:
        moves, extra = body(scenario)
    except sc.DrillError as exc:
        print(f"drill: error: {exc}", file=sys.stderr)
        return 2
    finally:
        _progress("removing the drill's VMs")
        sc.teardown(lab, scenario)
    return _finish(args, moves, extra)


def cmd_garp(args) -> int:
    from gwagent.drill import garp

    def body(scenario):
        moves = garp.run(scenario, _choices(args.mode, ("own-mac", "vmac")),
                         _choices(args.scope, ("intra", "cross")), args.runs,
                         timeout=args.timeout, progress=_progress)
        return moves, {"drill": "garp", "vip": scenario.vip, "vmac": scenario.vmac}
    return _run(args, body)


def cmd_vrrp(args) -> int:
    from gwagent.drill import vrrp

    if not 10 <= args.advert_ms <= 1000:
        print("drill: error: --advert-ms must be 10..1000", file=sys.stderr)
        return 2

    def body(scenario):
        moves = vrrp.run(scenario, _choices(args.mode, ("default", "vmac")),
                         _choices(args.scope, ("intra", "cross")), args.runs,
                         advert_ms=args.advert_ms, timeout=args.timeout, progress=_progress)
        return moves, {"drill": "vrrp", "vip": scenario.vip, "vmac": scenario.vmac,
                       "advert_ms": args.advert_ms}
    return _run(args, body)


def cmd_gateway(args) -> int:
    from gwagent.drill import gateway
    from gwagent.drill.scenario import DrillError
    from gwagent.extras import MissingExtra, require
    from gwagent.lab.names import LabError
    if args.runs < 1:
        print("drill: error: --runs must be at least 1", file=sys.stderr)
        return 2
    try:
        require("drills", "matplotlib", feature="gwagent drill")
        moves, extra = gateway.run(_lab(args), args.site, args.network, args.runs,
                                   timeout=args.timeout, progress=_progress)
    except (MissingExtra, DrillError, LabError) as exc:
        print(f"drill: error: {exc}", file=sys.stderr)
        return 2
    return _finish(args, moves, extra)


def cmd_cleanup(args) -> int:
    from gwagent.drill import scenario as sc
    from gwagent.lab.names import LabError
    try:
        lab = _lab(args)
    except LabError as exc:
        print(f"drill: error: {exc}", file=sys.stderr)
        return 2
    sc.teardown(lab)
    _progress("no drill VMs left")
    return 0

"""``gwagent lab``: bring a namespace lab up and down, look at it, run in it.

Subcommands: ``up [--topology FILE] [--no-agents] [--neutron]``, ``down``, ``status
[--json]``, ``exec NODE -- CMD...`` and ``check`` (ICMP ping matrix of every
pair of VMs on the same network; non-zero exit on any failure). Each takes
``--prefix`` (default ``gwl-``) and ``--lab-dir`` (default
``/run/gwagent/lab/<prefix without trailing '-'>``), so several labs can
coexist. :func:`add_parser` plugs the commands into ``gwagent``'s parser;
:func:`main` runs them alone (``python -m gwagent.lab.cli``).
"""
from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import sys

from gwagent.lab import build, probe, vrrp
from gwagent.lab import computes as computes_mod
from gwagent.lab import topology as topo_mod
from gwagent.lab.faults import FAULTS, clear, inject
from gwagent.lab.names import DEFAULT_PREFIX, LabError, default_lab_dir
from gwagent.lab.processes import process_alive
from gwagent.lab.record import Lab


def _progress(msg: str) -> None:
    print(f"lab: {msg}", file=sys.stderr, flush=True)


def _lab_dir(args):
    return args.lab_dir or default_lab_dir(args.prefix)


def cmd_up(args) -> int:
    topo = topo_mod.load(args.topology)
    if args.computes:
        topo = topo_mod.parse({**topo_mod.to_dict(topo), "computes": args.computes})
    if topo.computes == topo_mod.OVS_AGENT and not args.neutron:
        raise LabError("computes: ovs-agent (Neutron's own OVS agent) needs --neutron")
    try:
        lab = build.up(topo, args.prefix, _lab_dir(args), agents=not args.no_agents,
                       progress=_progress, neutron=args.neutron, backend=args.backend)
    except LabError as exc:
        if "already up" in str(exc) or "exist" in str(exc) or "root" in str(exc):
            raise
        raise LabError(f"{exc}\nthe partial lab stays for a look; remove it with: "
                             f"{_me()} down{_opts(args)}") from None
    except Exception as exc:  # noqa: BLE001 - say what failed and how to clean up
        raise LabError(f"up failed: {type(exc).__name__}: {exc}\nthe partial lab stays "
                             f"for a look; remove it with: {_me()} down{_opts(args)}") from exc
    _progress(f"up: {len(lab.namespaces())} namespaces, lab dir {lab.lab_dir}")
    print(f"lab is up; try: {_me()} check{_opts(args)} ; {_me()} status{_opts(args)}")
    return 0


def _me() -> str:
    if sys.argv[0].endswith(os.path.join("lab", "cli.py")):
        return "python -m gwagent.lab.cli"
    return "gwagent lab"


def _opts(args) -> str:
    text = "" if args.prefix == DEFAULT_PREFIX else f" --prefix {args.prefix}"
    return text + (f" --lab-dir {args.lab_dir}" if args.lab_dir else "")


def cmd_down(args) -> int:
    build.down(args.prefix, _lab_dir(args), progress=_progress)
    return 0


def status_dict(lab: Lab) -> dict:
    agents = {}
    for name, record in lab.processes.items():
        agents[name] = {"pid": record["pid"], "alive": process_alive(record),
                        "log": record.get("log")}
    return {"prefix": lab.prefix, "lab_dir": str(lab.lab_dir), "state": lab.state,
            "source": lab.truth.kind,
            "nodes": lab.nodes(), "processes": agents,
            "agent_configs": {lab.gateway_key(s.name, n): str(lab.agent_conf(s.name, n))
                              for s in lab.topology.sites for n in s.gateways},
            "gateways": _gateways(lab),
            "neutron": lab.truth.status(),
            "computes": lab.topology.computes,
            "compute_flows": computes_mod.of(lab).status()}


def _gateways(lab: Lab) -> list[dict]:
    """Per gateway node: its site, whether it holds the site's addresses
    (active), and the VRRP state its keepalived reported (two per site)."""
    rows = []
    for site in lab.topology.sites:
        for node in site.gateways:
            try:
                holds = vrrp.holds(lab, site, node) if site.ha else True
            except Exception:  # noqa: BLE001 - a namespace gone: say so, not crash
                holds = None
            rows.append({"node": node, "site": site.name, "ha": site.ha,
                         "role": {True: "active", False: "standby", None: "?"}[holds],
                         "vrrp": vrrp.state(lab, site.name, node) if site.ha else None,
                         "tunnel_ip": site.tunnel_ip, "transit_ip": site.transit_ip})
    return rows


def cmd_status(args) -> int:
    lab = Lab.load(_lab_dir(args))
    data = status_dict(lab)
    if args.json:
        print(json.dumps(data, indent=1))
        return 0
    print(f"lab {lab.prefix!r} in {lab.lab_dir} ({lab.state}; source: {data['source']})\n")
    print(f"{'NODE':<14} {'KIND':<8} {'SITE':<6} {'NETWORK':<8} {'IP (TRANSIT IP)':<26} "
          f"{'MAC':<18} NAMESPACE")
    for n in data["nodes"]:
        ip = n["ip"] or "-"
        if n.get("transit_ip"):
            ip += f" ({n['transit_ip']})"
        print(f"{n['node']:<14} {n['kind']:<8} {n['site'] or '-':<6} {n['network'] or '-':<8} "
              f"{ip:<26} {n['mac'] or '-':<18} {n['namespace']}"
              + ("" if n["present"] else "  (MISSING)"))
    print(f"\n{'GATEWAY':<14} {'SITE':<6} {'ROLE':<8} {'VRRP':<8} ADDRESSES (TUNNEL, TRANSIT)")
    for g in data["gateways"]:
        print(f"{g['node']:<14} {g['site']:<6} {g['role']:<8} {g['vrrp'] or '-':<8} "
              f"{g['tunnel_ip']}, {g['transit_ip']}"
              + ("" if g["ha"] else "  (the site's only gateway)"))
    print(f"\n{'PROCESS':<14} {'PID':>8}  STATE    LOG")
    for name, p in data["processes"].items():
        print(f"{name:<14} {p['pid']:>8}  {'running' if p['alive'] else 'DEAD':<8} {p['log']}")
    neutron = data["neutron"]
    if neutron:
        print(f"\n{'SITE':<6} {'CLOUD':<10} {'NEUTRON URL':<26} {'STATE':<9} WORKDIR")
        for name, site in neutron["sites"].items():
            print(f"{name:<6} {site['cloud']:<10} {site['url']:<26} "
                  f"{'answering' if site['answering'] else 'DOWN':<9} {site['workdir']}")
        print(f"\nclouds.yaml: {neutron['clouds_file']}  (OS_CLIENT_CONFIG_FILE=... "
              f"openstack --os-cloud {next(iter(neutron['sites'].values()))['cloud']} "
              f"port list)\nRabbitMQ: {neutron['rabbit']}")
    if data["compute_flows"]:
        print(f"\n{'COMPUTE':<14} {'VNI':>6}  {'MAC':<18} {'VTEP':<16} (br-tun of Neutron's "
              "OVS agent: table 20, unicast)")
        for compute, flows in data["compute_flows"].items():
            if "error" in flows:
                print(f"{compute:<14} {'?':>6}  {flows['error']}")
                continue
            for row in flows["unicast"]:
                print(f"{compute:<14} {row['vni'] or '-':>6}  {row['mac']:<18} "
                      f"{row['vtep']:<16} {row['by']}")
            for vni, vteps in sorted(flows["flood"].items()):
                print(f"{compute:<14} {vni:>6}  {'(flood)':<18} {', '.join(vteps)}")
    return 0


def cmd_exec(args) -> int:
    lab = Lab.load(_lab_dir(args))
    ns = lab.node_namespace(args.node)
    command = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not command:
        raise LabError("nothing to run: lab exec NODE -- CMD [ARGS...]")
    os.execvp("ip", ["ip", "netns", "exec", ns, *command])
    return 127  # not reached


def ping_matrix(lab: Lab) -> dict[tuple[str, str], float | None]:
    """RTT (or None) for every ordered pair of VMs on the same network."""
    pairs = [(a, b) for a in lab.topology.vms for b in lab.topology.vms
             if a.name != b.name and a.network == b.network]
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        rtts = pool.map(lambda p: probe.ping(lab.ns(p[0].name), p[1].ip), pairs)
        return {(a.name, b.name): rtt for (a, b), rtt in zip(pairs, rtts)}


def format_matrix(lab: Lab, results: dict) -> str:
    lines = []
    for net in lab.topology.networks:
        vms = [vm.name for vm in lab.topology.vms if vm.network == net.name]
        if not vms:
            continue
        width = max(9, *(len(v) for v in vms)) + 1
        lines.append(f"network {net.name} (RTT ms; rows ping columns)")
        lines.append(" " * width + "".join(f"{v:>{width}}" for v in vms))
        for src in vms:
            cells = []
            for dst in vms:
                if src == dst:
                    cells.append(f"{'.':>{width}}")
                    continue
                rtt = results.get((src, dst))
                cells.append(f"{'FAIL' if rtt is None else f'{rtt * 1000:.2f}':>{width}}")
            lines.append(f"{src:<{width}}" + "".join(cells))
        lines.append("")
    return "\n".join(lines)


def cmd_check(args) -> int:
    lab = Lab.load(_lab_dir(args))
    results = ping_matrix(lab)
    print(format_matrix(lab, results))
    failed = [pair for pair, rtt in results.items() if rtt is None]
    print(f"{len(results) - len(failed)}/{len(results)} pairs answered")
    return 1 if failed else 0


def cmd_fault(args) -> int:
    lab = Lab.load(_lab_dir(args))
    if args.fault not in ("rabbit-stop", "clear") and not args.site:
        raise LabError(f"{args.fault} needs --site")
    if args.fault == "clear":
        print(clear(lab, args.site))
    else:
        print(inject(lab, args.site, args.fault, args.delay))
    return 0


def add_parser(subparsers, help: str = "namespace lab: sites, computes, VMs, gateways"
               ) -> argparse.ArgumentParser:
    """Add ``lab`` and its subcommands to an argparse subparsers object."""
    lab = subparsers.add_parser("lab", help=help)
    sub = lab.add_subparsers(dest="lab_command", required=True, metavar="LAB_COMMAND")

    def common(sp):
        sp.add_argument("--prefix", default=DEFAULT_PREFIX,
                        help="namespace name prefix (default %(default)s)")
        sp.add_argument("--lab-dir", default=None,
                        help="lab directory (default /run/gwagent/lab/<prefix>)")
        return sp

    up = common(sub.add_parser("up", help="build the lab and start its agents"))
    up.add_argument("--topology", default=None,
                    help=f"topology file (default {topo_mod.DEFAULT_FILE})")
    up.add_argument("--no-agents", action="store_true",
                    help="build everything but start no gateway agent")
    up.add_argument("--backend", default="linux", choices=["linux", "openflow"],
                    help="the gateways' dataplane: linux (bridge, VXLAN devices, FDB; the "
                         "default) or openflow (an Open vSwitch per gateway, userspace "
                         "datapath, programmed by the agent's embedded os-ken controller)")
    up.add_argument("--neutron", action="store_true",
                    help="one real Neutron per site (and RabbitMQ) as the source of truth, "
                         "instead of inventory files; needs .venv-neutron and rabbitmq-server")
    up.add_argument("--computes", default=None, choices=topo_mod.COMPUTE_KINDS,
                    help="what every compute is (overrides the topology's 'computes'): "
                         "emulated (Linux bridges programmed by the lab's L2 population "
                         "emulator; the default) or ovs-agent (an Open vSwitch per compute "
                         "driven by Neutron's own neutron-openvswitch-agent; needs --neutron)")
    up.set_defaults(func=_guard(cmd_up))
    common(sub.add_parser("down", help="stop the lab's processes, delete its namespaces")
           ).set_defaults(func=_guard(cmd_down))
    st = common(sub.add_parser("status", help="nodes, addresses and processes"))
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=_guard(cmd_status))
    ex = common(sub.add_parser("exec", help="run a command in a node's namespace"))
    ex.add_argument("node", help="node name (e.g. a1-red, a-gw, a-cn1, switch); options "
                    "such as --prefix go before it")
    ex.add_argument("cmd", nargs=argparse.REMAINDER, help="-- CMD [ARGS...]")
    ex.set_defaults(func=_guard(cmd_exec))
    common(sub.add_parser("check", help="ping every pair of VMs on the same network")
           ).set_defaults(func=_guard(cmd_check))
    fault = common(sub.add_parser(
        "fault", help="inject a fault into a Neutron lab's control plane (or clear it)",
        description="api-freeze (SIGSTOP the site's Neutron API), api-kill, api-error "
                    "(every request answered 500), api-slow (every request --delay s late), "
                    "rabbit-stop (the lab's RabbitMQ), clear (back to normal; without "
                    "--site: every site and RabbitMQ)."))
    fault.add_argument("fault", choices=FAULTS)
    fault.add_argument("--site", default=None, help="the site (not for rabbit-stop)")
    fault.add_argument("--delay", type=float, default=3.0,
                       help="seconds per request for api-slow (default %(default)s)")
    fault.set_defaults(func=_guard(cmd_fault))
    return lab


def _guard(func):
    def run(args) -> int:
        try:
            return func(args)
        except (LabError, topo_mod.TopologyError) as exc:
            print(f"lab: error: {exc}", file=sys.stderr)
            return 2
    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gwagent.lab.cli")
    sub = parser.add_subparsers(dest="command", required=True)
    add_parser(sub)
    args = parser.parse_args(["lab", *(sys.argv[1:] if argv is None else argv)])
    return args.func(args) or 0


if __name__ == "__main__":
    sys.exit(main())

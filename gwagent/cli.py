"""The ``gwagent`` command.

``run`` reconciles until SIGTERM (which leaves the dataplane as it is, so a
restarted agent adopts it without a lost packet); SIGHUP re-reads the
configuration files. ``status`` reads what the running agent last wrote.
``cleanup`` is the one explicit way to remove what the gateway owns. ``lab``
builds and drives the namespace lab, ``drill`` runs failover drills in it.

The lab is a client of the product, not a part of it: this module imports
it only when a ``lab`` command runs (``gwagent --help`` lists ``lab`` from a
placeholder), and the drills import it only when a drill runs.

Configuration is oslo.config: options are declared in gwagent.config, read
here, and passed into constructors. Logging is oslo.log, as in Neutron's
agents: ``run`` takes its command-line options (``--log-file``,
``--log-dir``, ``--use-journal``, ``--use-syslog``, ``--debug``) and hands
them to oslo.config with the configuration files, whose ``[DEFAULT]`` may set
the rest. Under systemd (etc/systemd/gwagent.service) ``run`` tells systemd
when it is ready and feeds its watchdog (gwagent.service).
"""
from __future__ import annotations

import argparse
import importlib.metadata
import json
import logging
import os
import signal
import socket
import sys
import time
from pathlib import Path

from oslo_config import cfg
from oslo_log import log as oslo_logging

from gwagent import config
from gwagent.control.agent import Agent, MobilityWorker
from gwagent.control.mobility import MobilityTable
from gwagent.control.sources import FileInventory, Throttled
from gwagent.drill.cli import add_parser as add_drill_parser
from gwagent.extras import MissingExtra, require
from gwagent.model import Gateway, Site, ValidationError
from gwagent.neutron.source import NeutronClient, NeutronSite
from gwagent.service import Notifier

LOG = logging.getLogger("gwagent")
LAB_HELP = "namespace lab: sites, computes, VMs, gateways"


def version() -> str:
    try:
        return importlib.metadata.version("gwagent")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed)"


def load_conf(config_files: list[str], cli_args: list[str] = ()) -> cfg.ConfigOpts:
    """The configuration of ``config_files``; ``cli_args`` are oslo.log's
    command-line options (:func:`log_args`)."""
    for path in config_files:
        if not os.path.isfile(path):
            raise SystemExit(f"gwagent: config file not found: {path}")
    conf = cfg.ConfigOpts()
    config.register_opts(conf)
    oslo_logging.register_options(conf)
    args = [arg for path in config_files for arg in ("--config-file", path)] + list(cli_args)
    conf(args=args, project="gwagent", default_config_files=[])
    config.register_peer_opts(conf)
    return conf


def build_sources(conf: cfg.ConfigOpts):
    """(local source, peer sources, local registry) as the configuration says."""
    g = conf.gateway
    if g.source == "file":
        if not g.site_file:
            raise SystemExit("gwagent: [gateway] site_file is required with source=file")
        local = FileInventory(g.site_file, g.registry_file or None)
        return local, [FileInventory(p) for p in g.peer_site_files], local
    return neutron_sources(conf)


def neutron_sources(conf: cfg.ConfigOpts):
    n = conf.neutron

    def site(name, group, cloud_group, nodes=()):
        missing = [opt for opt in ("cloud", "network_ids", "gateway_host", "gateway_tunnel_ip",
                                   "gateway_transit_ip") if not cloud_group[opt]]
        if missing:
            raise SystemExit(f"gwagent: [{group}] needs {', '.join(missing)} with source=neutron")
        unknown = sorted(set(networks) ^ set(cloud_group.network_ids))
        if unknown:
            raise SystemExit(f"gwagent: [{group}] network_ids must name exactly the stretched "
                             f"networks of [neutron] networks ({', '.join(sorted(networks))}); "
                             f"mismatch: {', '.join(unknown)}")
        try:
            gw = Gateway(cloud_group.gateway_host, cloud_group.gateway_tunnel_ip,
                         cloud_group.gateway_transit_ip, nodes)
            feed = None
            if cloud_group.notification_url:
                require("neutron", "kombu", feature="Neutron notifications "
                                                    "([neutron] notification_url)")
                from gwagent.neutron.notifications import Feed
                feed = Feed(cloud_group.notification_url, cloud_group.notification_exchange,
                            cloud_group.notification_topic, name=f"gwagent-{n.site_name}-{name}")
            return NeutronSite(NeutronClient(cloud_group.cloud, cloud_group.clouds_file,
                                             timeout=(n.api_connect_timeout,
                                                      n.api_read_timeout)),
                               Site(name, gw), networks, cloud_group.network_ids,
                               feed=feed, audit_interval=n.audit_interval,
                               probe_interval=n.poll_interval)
        except ValidationError as exc:
            raise SystemExit(f"gwagent: [{group}] {exc}") from None

    if not n.site_name or not n.networks:
        raise SystemExit("gwagent: [neutron] site_name and networks are required with "
                         "source=neutron")
    try:
        networks = {name: int(vni) for name, vni in n.networks.items()}
    except ValueError:
        raise SystemExit(f"gwagent: [neutron] networks: transit VNIs must be integers: "
                         f"{n.networks}") from None
    local = site(n.site_name, "neutron", n, n.gateway_nodes)
    peers = []
    for peer in n.peers:
        group = config.PEER_GROUP.format(peer)
        peers.append(Throttled(site(peer, group, conf[group]), n.poll_interval))
    return Throttled(local, n.poll_interval), peers, local


def build_backend(conf: cfg.ConfigOpts):
    # Lazily: a backend (pyroute2; os-ken and OVSDB) only for the commands that program it.
    netns = conf.gateway.netns or None
    if conf.gateway.backend == "openflow":
        from gwagent.openflow.backend import OpenFlowBackend
        o = conf.openflow
        return OpenFlowBackend(netns, o.ovsdb_connection, o.bridge, o.vxlan_port,
                               o.datapath_type, o.listen_address, o.listen_port,
                               o.request_timeout, evidence=o.mobility_evidence,
                               evidence_rate=o.evidence_rate, evidence_burst=o.evidence_burst)
    from gwagent.dataplane.linux import LinuxBackend
    return LinuxBackend(netns)


def ha_args(conf: cfg.ConfigOpts) -> dict:
    """The agent's view of its role: with ``high_availability = vrrp``, what
    reads whether this node holds the site's addresses."""
    node = conf.gateway.node or socket.gethostname()
    if conf.gateway.high_availability != "vrrp":
        return {"node": node}
    from gwagent.dataplane.addresses import AddressHolder
    return {"holder": AddressHolder(conf.gateway.netns or None), "node": node}


def state_paths(conf: cfg.ConfigOpts) -> tuple[Path, Path]:
    base = Path(conf.gateway.state_dir)
    return base / "status.json", base / "gwagent.pid"


def log_args(args) -> list[str]:
    """oslo.log's options as given to argparse, for oslo.config to parse."""
    out = [f"--{name.replace('_', '-')}" for name in ("debug", "use_journal", "use_syslog")
           if getattr(args, name, False)]
    for name in ("log_file", "log_dir"):
        if getattr(args, name, None):
            out += [f"--{name.replace('_', '-')}", getattr(args, name)]
    return out


def setup_logging(conf: cfg.ConfigOpts) -> None:
    """oslo.log as ``conf`` says. Without a log file or the journal, lines go
    to stderr, where gwagent has always written them (oslo.log's own
    fallback is stdout); under systemd, stderr is the journal."""
    if not (conf.log_file or conf.log_dir or conf.use_journal):
        conf.set_override("use_stderr", True)
    try:
        oslo_logging.setup(conf, "gwagent", version())
    except RuntimeError as exc:  # --use-journal without systemd's Python bindings
        hint = (" (--use-journal needs systemd's Python module; under systemd, stderr goes "
                "to the journal anyway)" if conf.use_journal else "")
        raise SystemExit(f"gwagent: cannot set up logging: {exc}{hint}") from None


def cmd_run(args) -> int:
    conf = load_conf(args.config_file, log_args(args))
    setup_logging(conf)
    status_path, pid_path = state_paths(conf)
    pid_path.parent.mkdir(parents=True, exist_ok=True)
    pid_path.write_text(f"{os.getpid()}\n")
    a = conf.agent
    local, peers, registry = build_sources(conf)
    backend = build_backend(conf)
    m = conf.mobility
    agent = Agent(local, peers, registry, backend, status_path=status_path,
                  resync_interval=a.resync_interval, poll_interval=a.poll_interval,
                  audit_interval=a.audit_interval, backoff_initial=a.backoff_initial, backoff_max=a.backoff_max,
                  mobility=MobilityTable(m.max_moves, m.move_window, m.freeze_time),
                  read_deadline=a.source_deadline, pass_budget=a.pass_budget,
                  ingress_filter=conf.gateway.ingress_filter,
                  mac_guard=conf.gateway.mac_guard, **ha_args(conf))
    worker = MobilityWorker(agent) if m.enabled else None
    notifier = Notifier()
    agent.on_loop = notifier.tick
    # Ready once a desired state is programmed without an error; a peer that
    # is down or unknown does not hold the gateway back (it is in STATUS=).
    agent.on_pass = lambda result, line: notifier.passed(
        agent.desired is not None and not result.errors,
        line + (f"; {result.source_error}" if result.source_error else ""))

    me = os.getpid()

    def on_term(signum, frame):
        if os.getpid() != me:
            # pyroute2's helper, forked to open a socket in a namespace, has
            # this handler too and is ended by SIGTERM: it is not the agent
            # stopping (it logged so, and told systemd)
            os._exit(128 + signum)
        LOG.info("signal %d: stopping; the dataplane stays as it is", signum)
        notifier.stopping()
        agent.stopping = True

    def on_hup(signum, frame):
        agent.reload_requested = True

    def reload():
        LOG.info("SIGHUP: reloading configuration from %s", ", ".join(args.config_file))
        try:
            new = load_conf(args.config_file, log_args(args))
            if new.gateway.netns != conf.gateway.netns or new.gateway.backend != conf.gateway.backend:
                LOG.warning("netns/backend changes need a restart; keeping %r",
                            conf.gateway.netns)
            agent.configure(*build_sources(new))
            n = new.agent
            agent.resync_interval, agent.poll_interval = n.resync_interval, n.poll_interval
            agent.pass_budget = n.pass_budget
            agent.audit_interval = n.audit_interval
            agent.ingress_filter = new.gateway.ingress_filter
            agent.mac_guard = new.gateway.mac_guard
            agent.items.initial, agent.items.cap = n.backoff_initial, n.backoff_max
            mob = new.mobility
            with agent.lock:
                agent.mobility.max_moves = mob.max_moves
                agent.mobility.window, agent.mobility.hold = mob.move_window, mob.freeze_time
        except (SystemExit, cfg.Error, OSError) as exc:
            LOG.error("reload failed, keeping the running configuration: %s", exc)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    signal.signal(signal.SIGHUP, on_hup)
    LOG.info("gwagent starting: source=%s netns=%s status=%s", conf.gateway.source,
             conf.gateway.netns or "(current)", status_path)
    metrics = start_metrics(conf, agent)
    if worker is not None:
        worker.start()
    try:
        agent.run(on_reload=reload)
    finally:
        if metrics is not None:
            metrics.close()
        if worker is not None:
            worker.stop()
            worker.join(2.0)
            worker.close()
        agent.close()
        backend.close()
        notifier.close()
        if pid_path.exists() and pid_path.read_text().strip() == str(os.getpid()):
            pid_path.unlink()
    return 0


def start_metrics(conf, agent):
    """The Prometheus endpoint of [metrics], if a port is set; a port that
    cannot be bound is logged, and the gateway runs on without metrics."""
    if not conf.metrics.port:
        return None
    from gwagent.metrics import Metrics
    from gwagent.neutron.source import NeutronClient
    metrics = Metrics()
    metrics.watch(agent)
    try:
        metrics.serve(conf.metrics.address, conf.metrics.port)
    except OSError as exc:
        LOG.error("metrics: cannot listen on %s:%d (%s); running without metrics",
                  conf.metrics.address, conf.metrics.port, exc)
        return None
    agent.metrics = NeutronClient.metrics = metrics
    return metrics


def _alive(pid_path: Path) -> int | None:
    try:
        pid = int(pid_path.read_text())
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError):
        return None


def cmd_status(args) -> int:
    conf = load_conf(args.config_file)
    status_path, pid_path = state_paths(conf)
    try:
        status = json.loads(status_path.read_text())
    except FileNotFoundError:
        status = None
    pid = _alive(pid_path)
    if args.json:
        print(json.dumps({"agent_pid": pid, "running": pid is not None, "status": status},
                         indent=1))
        return 0 if status else 1
    if status is None:
        print(f"no status yet at {status_path} (agent {'running, pid %d' % pid if pid else 'not running'})")
        return 1
    print(format_status(status, pid))
    return 0


def _notifications_detail(src: dict) -> str:
    """A source's notification feed, in words (Neutron sources with
    [neutron] notification_url)."""
    n = src.get("notifications")
    if not n:
        return ""
    reads = n.get("reads") or {}
    if n.get("live"):
        how = (f"notifications heard ({n.get('kept', 0)} kept of {n.get('messages', 0)}); "
               f"reads by ID {reads.get('by_id', 0)}, full listings {reads.get('full', 0)}"
               f" every {n.get('audit_interval', 0):g}s")
    else:
        how = f"notifications NOT heard, listing every change check: {n.get('error') or 'connecting'}"
    return how


def format_status(status: dict, pid: int | None) -> str:
    last = status.get("last_pass") or {}
    ago = f"{time.time() - last['at']:.0f}s ago" if last.get("at") else "never"
    ops = ", ".join(f"{k} {v}" for k, v in (last.get("ops") or {}).items()) or "no changes"
    lines = [
        f"gateway of site {status.get('site')}: agent "
        + (f"running (pid {pid})" if pid else "NOT running (status may be stale)"),
        f"last pass: {'ok' if last.get('ok') else 'FAILED'}, {ago}, reason {last.get('reason')},"
        f" {last.get('elapsed_ms')} ms, {ops}",
        "",
        f"{'NETWORK':<16} {'SEG-ID':>8} {'TRANSIT':>8} {'LOCAL':>6} {'REMOTE':>6} {'ENTRIES':>7}",
    ]
    for net in status.get("networks", []):
        lines.append(f"{net['name']:<16} {net['segmentation_id']:>8} {net['transit_vni']:>8} "
                     f"{net['local_endpoints']:>6} {net['remote_endpoints']:>6} "
                     f"{net['entries']:>7}")
    eps = status.get("endpoints", {})
    lines += [
        "",
        f"endpoints: {eps.get('local', 0)} local, {eps.get('remote', 0)} remote;"
        f" entries programmed (MACs and flood destinations) on the"
        f" {status.get('backend', 'linux')} backend: {status.get('entries_programmed', 0)};"
        f" remote ports registered: {status.get('remote_ports_registered')};"
        f" items retrying: {status.get('retrying', 0)}",
        f"last error: {status.get('last_error') or 'none'}",
    ]
    audit = status.get("dataplane_audit")
    if audit:
        read = (f", the last {time.time() - audit['last_audit']:.0f}s ago "
                f"({audit.get('last_dump_reason')})" if audit.get("last_audit") else "")
        lines.append(f"dataplane: {audit['audits']} full reads{read}, every "
                     f"{audit['audit_interval']:g}s; drift found {audit['drift']}"
                     f"{' (changed with no event seen: see the log)' if audit['drift'] else ''}; "
                     f"foreign changes reported {audit['foreign_changes']}; events lost "
                     f"{audit['events_lost']}")
    ha = status.get("ha") or {}
    if ha.get("mode") == "vrrp":
        since = f", since {time.time() - ha['since']:.0f}s ago" if ha.get("since") else ""
        lines.append(f"high availability: vrrp; node {ha.get('node') or '-'} is "
                     f"{str(ha.get('role')).upper()}{since} (site addresses "
                     f"{', '.join(ha.get('addresses') or []) or '-'}"
                     f"{'; held here' if ha.get('role') == 'active' else '; held elsewhere'}"
                     f"); registrar {'writes' if ha.get('role') == 'active' else 'silent'}"
                     + (f"; the site's nodes: {', '.join(ha['nodes'])}" if ha.get("nodes") else "")
                     + (f"; {ha['error']}" if ha.get("error") else ""))
    sources = status.get("sources") or []
    if sources:
        lines += ["", f"{'SOURCE':<16} {'ROLE':<6} {'STATE':<8} {'LAST GOOD':>10} {'ENDPOINTS':>9}"
                      "  DETAIL"]
        for src in sources:
            ago = src.get("seconds_since_good")
            good = "never" if ago is None else f"{ago:.0f}s ago"
            detail = ""
            if src["state"] in ("hung", "stale") and src.get("reading_for") is not None:
                detail = f"a read has run {src['reading_for']:.0f}s (deadline {src['deadline']:.0f}s)"
            elif src["state"] == "stale" and (src.get("last_read_s") or 0) > src["deadline"]:
                detail = (f"answers too late: its last read took {src['last_read_s']:.1f}s "
                          f"(deadline {src['deadline']:g}s)")
            elif src["state"] == "stale":
                detail = f"no answer for longer than its deadline ({src['deadline']:.0f}s)"
            elif src["state"] == "failing":
                since = src.get("error_since")
                detail = (f"since {time.time() - since:.0f}s: " if since else "") + str(src["error"])
            elif src["state"] == "unknown":
                detail = "no good read yet: what it owns is left alone"
            if src["state"] in ("hung", "failing", "stale") and ago is not None:
                detail += "; its last good snapshot stays in force"
            detail = "; ".join(d for d in (detail, _notifications_detail(src)) if d)
            eps = "-" if src.get("endpoints") is None else src["endpoints"]
            lines.append(f"{src['name'][:16]:<16} {src['role']:<6} {src['state'].upper() if src['state'] != 'fresh' else 'fresh':<8} "
                         f"{good:>10} {eps:>9}  {detail}")
    ingress = status.get("ingress") or {}
    if ingress.get("enabled"):
        lines.append("")
        for side, where in (("site", "tunnel address"), ("transit", "transit address")):
            offenders = ingress.get("offenders", {}).get(side) or {}
            top = sorted(offenders.items(), key=lambda kv: -kv[1])[:5]
            lines.append(
                f"ingress filter, {where}: {len(ingress.get('admitted', {}).get(side, []))} "
                f"admitted, {ingress.get('dropped', {}).get(side, 0)} packets dropped"
                + (f"; offenders: {', '.join(f'{ip} ({n})' for ip, n in top)}"
                   + (f" and {len(offenders) - 5} more" if len(offenders) > 5 else "")
                   if offenders else ""))
    elif ingress:
        lines += ["", "ingress filter: off ([gateway] ingress_filter = false)"]
    guard = status.get("mac_guard") or {}
    if guard.get("enabled"):
        for side, where in (("transit", "from peer gateways"), ("site", "from computes")):
            claimed = guard.get("claims", {}).get(side) or {}
            top = sorted(claimed.items(), key=lambda kv: -kv[1])[:5]
            lines.append(
                f"MAC guard, {where}: {guard.get('dropped', {}).get(side, 0)} frames dropped"
                + (f"; MACs claimed: {', '.join(f'{m} ({n})' for m, n in top)}"
                   + (f" and {len(claimed) - 5} more" if len(claimed) > 5 else "")
                   if claimed else ""))
    elif guard:
        lines.append("MAC guard: off ([gateway] mac_guard = false)")
    reg = status.get("registry")
    if reg:
        text = reg.get("state", "?")
        if reg.get("at") and reg.get("since"):
            text += f" (last sync took {reg['at'] - reg['since']:.1f}s)"
        if reg.get("error"):
            text += f": {reg['error']}"
        lines.append(f"registry: {text}")
    if last.get("over_budget"):
        lines.append(f"last pass OVER BUDGET: {last.get('elapsed_ms')} ms > "
                     f"{status.get('pass_budget_ms'):.0f} ms")
    mobile = status.get("mobile_macs") or []
    if mobile:
        counts = status.get("mobility") or {}
        lines += ["", f"mobile MACs: {len(mobile)}; moves {counts.get('moved', 0)}, refused "
                      f"claims {counts.get('refused', 0)}, claims while frozen "
                      f"{counts.get('frozen', 0)}",
                  f"{'NETWORK':<12} {'MAC':<18} {'AT':<24} {'SEQ':>4} {'MOVED':>8}  "
                  f"CANDIDATES / ALARMS"]
        for m in mobile:
            at = m["location"]
            where = f"{at['side']} {at['vtep']}" if at else "nowhere (floods)"
            moved = f"{time.time() - m['moved_at']:.0f}s ago" if m.get("moved_at") else "-"
            notes = ", ".join(f"{c['side']} {c['vtep']}" for c in m["candidates"])
            if m.get("frozen"):
                notes = (f"FROZEN (flapping: {m['moves_in_window']} moves), for "
                         f"{m['frozen_for']}s more; " + notes)
            if m.get("refused"):
                notes += "; REFUSED claims from " + ", ".join(
                    f"{src} x{n}" for src, n in sorted(m["refused"].items()))
            lines.append(f"{m['network']:<12} {m['mac']:<18} {where:<24} {m['seq']:>4} "
                         f"{moved:>8}  {notes}")
    rejected = status.get("rejected_endpoints") or []
    if rejected:
        lines += ["", f"endpoints left out: {len(rejected)}",
                  f"{'SITE':<8} {'NETWORK':<12} {'PORT':<38} {'MAC':<18} REASON"]
        for r in rejected:
            lines.append(f"{r['site']:<8} {r['network']:<12} {r['port_id'] or '-':<38} "
                         f"{r['mac']:<18} {r['reason']}")
    return "\n".join(lines)


def cmd_cleanup(args) -> int:
    conf = load_conf(args.config_file)
    setup_logging(conf)
    pid = _alive(state_paths(conf)[1])
    if pid and not args.force:
        print(f"gwagent: the agent is running (pid {pid}); stop it first or pass --force",
              file=sys.stderr)
        return 1
    backend = build_backend(conf)
    try:
        removed = backend.remove_all()
    finally:
        backend.close()
    print(f"removed {removed} owned devices (and their FDB entries or flows), the "
          f"ingress filter and the MAC guard in netns {conf.gateway.netns or '(current)'}")
    if args.remote_ports:
        _, _, registry = build_sources(conf)
        ports = registry.remote_ports()
        failures = registry.unregister(ports)
        for key, error in failures.items():
            print(f"could not unregister {'/'.join(key)}: {error}", file=sys.stderr)
        print(f"unregistered {len(ports) - len(failures)} of {len(ports)} remote ports")
        return 1 if failures else 0
    return 0


def add_lab_parser(subparsers, argv: list[str] | None) -> None:
    """``lab`` with its whole parser when the command line is a lab command;
    otherwise a placeholder with the same help line, so that ``gwagent``
    does not import the lab (a third of the code) for the agent's commands."""
    if argv and argv[0] == "lab":
        from gwagent.lab.cli import add_parser  # lazy: only a lab command needs the lab
        add_parser(subparsers, help=LAB_HELP)
        return
    lab = subparsers.add_parser("lab", help=LAB_HELP, add_help=False)
    lab.add_argument("args", nargs=argparse.REMAINDER)
    lab.set_defaults(func=lambda args: main(["lab", *args.args]))


def parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The command line parser; ``argv`` says whether it needs the lab's commands."""
    p = argparse.ArgumentParser(
        prog="gwagent",
        description="VXLAN gateway agent: stretches networks across clouds by registering "
                    "remote endpoints locally and programming a VXLAN dataplane with VNI "
                    "translation.")
    p.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_config(sp):
        sp.add_argument("--config-file", action="append", required=True, metavar="FILE",
                        help="oslo.config file (repeatable; later files override earlier)")
        return sp

    run = with_config(sub.add_parser("run", help="run the reconcile loop until SIGTERM"))
    run.add_argument("--debug", action="store_true", help="log at DEBUG level")
    run.add_argument("--log-file", metavar="PATH",
                     help="log to this file instead of stderr (relative to --log-dir)")
    run.add_argument("--log-dir", metavar="DIR", help="directory of --log-file (alone: "
                                                     "a file named after the program)")
    run.add_argument("--use-journal", action="store_true",
                     help="log to the systemd journal with its fields, instead of stderr "
                          "(needs systemd's Python bindings; under systemd, stderr goes "
                          "to the journal anyway)")
    run.add_argument("--use-syslog", action="store_true", help="log to syslog as well")
    run.set_defaults(func=cmd_run)
    st = with_config(sub.add_parser("status", help="show what the agent last did"))
    st.add_argument("--json", action="store_true", help="machine-readable output")
    st.set_defaults(func=cmd_status)
    cl = with_config(sub.add_parser(
        "cleanup", help="remove every device, FDB entry, ingress filter and MAC guard rule "
                   "the gateway owns (nothing else)"))
    cl.add_argument("--remote-ports", action="store_true",
                    help="also unregister the remote ports this gateway registered")
    cl.add_argument("--force", action="store_true", help="even if the agent is running")
    cl.set_defaults(func=cmd_cleanup)
    add_lab_parser(sub, argv)
    add_drill_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parser(argv).parse_args(argv)
    try:
        return args.func(args) or 0
    except MissingExtra as exc:  # a feature configured whose extra is not installed
        raise SystemExit(f"gwagent: {exc}") from None


if __name__ == "__main__":
    sys.exit(main())

"""Build, record and tear down a lab: namespaces, underlay, computes, VMs.

Everything lives in network namespaces named ``<prefix><node>``; nothing is
added to the root namespace (every veth is created inside a lab namespace
with its peer placed straight into another one). The shape:

* ``<prefix>switch``: one Linux bridge per underlay segment, ``br-site<n>``
  for site n (198.18.<n>.0/24) and ``br-transit`` (198.18.0.0/24);
* ``<prefix><compute>``: ``eth0`` on its site's segment and, per network,
  the product's Linux backend's devices for a one-sided network:
  ``gwa-br-<segid>`` with ``gwa-vl-<segid>`` (VNI = the site's segmentation
  ID, local = compute IP, dstport 4789), made here and programmed by the L2
  population emulator (:mod:`gwagent.lab.l2pop`) through that backend and
  the product's planner, as Neutron's l2population does, with static
  entries; VXLAN and bridge-port learning are on for the MACs it leaves
  alone (mobile MACs), as the OVS agent's learn flows do; VMs plug in with
  ``tap<hash>`` veths;
* ``<prefix><vm>``: ``eth0`` with the VM's MAC and IP, MTU 1450;
* ``<prefix><gateway>``: ``eth0`` (tunnel IP, site segment) and ``eth1``
  (transit IP, transit segment). Its VXLAN devices belong to the agent.

The lab directory holds what the agents and the L2 population emulator read
(the sites' truth, ``<site>-gw.conf``), their logs, and ``lab.json``
(:mod:`gwagent.lab.record`), written before anything is built and after
every change, so ``down`` works from another process and after a
half-finished ``up``; ``down`` also removes any namespace carrying the
prefix.

:func:`write_agent_configs` is the one writer of every gateway's
configuration file and its ``[gateway]`` section; the lab's truth
(:mod:`gwagent.lab.truth`) says where the gateway reads its sites.

Changes to a running lab (:func:`add_vm`, :func:`remove_vm`, :func:`move_vm`)
re-plug the VM first, then tell the sites' truth (inventory files or
Neutron ports) the way a cloud would after a migration (the site losing a
port first), and return the moment of the change so a test can measure
convergence from it.
"""
from __future__ import annotations

import configparser
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from pyroute2 import netns

from gwagent.control.sources import atomic_write
from gwagent.lab import computes as computes_mod
from gwagent.lab import probe, vrrp
from gwagent.lab import topology as topo_mod
from gwagent.lab.names import (DEFAULT_PREFIX, SWITCH, LabError, check_prefix,
                               default_lab_dir, tap_name)
from gwagent.lab.names import vxlan_name  # noqa: F401 - tests name a compute's device by it
from gwagent.lab.namespaces import index, new_namespace, uplink
from gwagent.lab.namespaces import ipr as open_ipr
from gwagent.lab.ovs import Ovs
from gwagent.lab.ovs import missing as ovs_missing
from gwagent.lab.processes import (log_tail, process_alive, start_process,
                                   stop_process, stop_processes)
from gwagent.lab.record import Lab
from gwagent.lab.topology import Topology, Vm

AGENT_RESYNC = 2.0
SOURCE_DEADLINE = 3.0  # a lab's sources answer in milliseconds
# Drills move VIPs back and forth many times a minute: duplicate detection
# (production default 5 moves in 180 s) would freeze them. The lab keeps it
# on with room for drills; a test of damping sets its own.
MOBILITY_SECTION = ("\n[mobility]\n"
                    "max_moves = 1000\n"
                    "move_window = 60\n"
                    "freeze_time = 30\n")


BACKENDS = ("linux", "openflow")


def _progress_none(_msg: str) -> None:
    pass


# -- building ----------------------------------------------------------------

def _build_switch(lab: Lab) -> None:
    new_namespace(lab.ns(SWITCH))
    with open_ipr(lab.ns(SWITCH)) as sw:
        for name in ["br-transit"] + [f"br-site{s.number}" for s in lab.topology.sites]:
            sw.link("add", ifname=name, kind="bridge")
            sw.link("set", index=index(sw, name), state="up")


def _build_site(lab: Lab, site) -> None:
    sw_ns = lab.ns(SWITCH)
    with open_ipr(sw_ns) as sw:
        for node in site.gateways:
            gw_ns = lab.ns(node)
            new_namespace(gw_ns)
            ports = _switch_ports(site, node)
            mtu = lab.topology.mtu
            uplink(sw, ports[0], f"br-site{site.number}", gw_ns, "eth0",
                   site.node_tunnel_ip(node), mtu)
            uplink(sw, ports[1], "br-transit", gw_ns, "eth1", site.node_transit_ip(node), mtu)
        for j, compute in enumerate(site.computes, 1):
            cn_ns = lab.ns(compute)
            new_namespace(cn_ns)
            uplink(sw, f"c{site.number}-{j}", f"br-site{site.number}", cn_ns, "eth0",
                   site.compute_ip(compute), lab.topology.mtu)
            computes_mod.of(lab).build(site, compute)


def _switch_ports(site, node: str) -> tuple[str, str]:
    """The switch's ends of a gateway node's eth0 (site) and eth1 (transit)."""
    tag = str(site.gateways.index(node)) if site.ha else ""
    return f"g{site.number}s{tag}", f"g{site.number}t{tag}"


def underlay_nics(lab: Lab) -> tuple[str, str]:
    """Where a gateway node's site and transit addresses live: its NICs
    (linux), or the internal ports of its OVS's underlay bridges (openflow)."""
    return ("ul-site", "ul-transit") if lab.backend == "openflow" else ("eth0", "eth1")


def _build_gateway_ovs(lab: Lab, site, node: str) -> None:
    """An OpenFlow lab's gateway node: its own OVS (userspace datapath) with
    the underlay NICs in underlay bridges whose internal ports carry the
    addresses (native tunnelling routes through them); the agent makes its
    own bridge. The OVS daemons are recorded as the lab's processes."""
    ovs = Ovs(lab.ns(node), lab.ovs_dir(site.name, node)).start()
    ovs.record(lab, node if site.ha else site.name)
    ports = _switch_ports(site, node)
    for nic, bridge, address, far in (("eth0", "ul-site", site.node_tunnel_ip(node), ports[0]),
                                      ("eth1", "ul-transit", site.node_transit_ip(node),
                                       ports[1])):
        ovs.attach_underlay(bridge, nic, f"{address}/24", (lab.ns(SWITCH), far),
                            lab.topology.mtu)


def _resolve_underlay(lab: Lab) -> None:
    """Let each OpenFlow gateway's OVS learn its underlay neighbours (its
    computes, the peer gateways) once, as a deployment's traffic would long
    before a tenant arrives. OVS's userspace tunnels drop a packet toward a
    VTEP whose MAC they have not resolved yet (measured: a fresh lab's first
    cross-site ARP crossed three cold VTEPs and took 3.2 s, the kernel's
    retries); OVS snoops the gateway's own ARP for them.

    Measured: OVS snoops only once the datapath has a tunnel port (the
    agent's ``gwa-vxlan``), and only an ARP exchange (a ping over a
    neighbour the kernel already knows teaches it nothing). So this runs
    after the agents' first passes, with the gateway's kernel neighbours
    flushed first."""
    for site in lab.topology.sites:
        for node in site.gateways:
            ns = lab.ns(node)
            subprocess.run(["ip", "-n", ns, "neigh", "flush", "all"], check=True)
            targets = [site.compute_ip(c) for c in site.computes]
            if not site.ha or vrrp.holds(lab, site, node):
                # A standby has no route to the transit subnet until it
                # holds the site's transit address; its OVS then resolves
                # the peers it sends to (a few packets, not a tenant's ARP).
                targets += [peer.transit_ip for peer in lab.topology.sites if peer is not site]
            for ip in targets:
                if probe.ping(ns, ip) is None:
                    raise LabError(f"{node} cannot reach {ip} on its underlay")


def plug_vm(lab: Lab, vm: Vm) -> None:
    """Create the VM's namespace if needed and plug its eth0 into its
    compute (a compute with an OVS agent takes it into br-int only once
    its Neutron port exists: ``computes.attach``)."""
    vm_ns = lab.ns(vm.name)
    if vm_ns not in netns.listnetns():
        new_namespace(vm_ns)
    tap = tap_name(vm.name)
    with open_ipr(lab.ns(vm.compute)) as cn:
        cn.link("add", ifname=tap, kind="veth", peer={"ifname": "eth0", "net_ns_fd": vm_ns})
        cn.link("set", index=index(cn, tap), mtu=lab.topology.vm_mtu, state="up")
        computes_mod.of(lab).connect(cn, vm, tap)
    with open_ipr(vm_ns) as ipr:
        idx = index(ipr, "eth0")
        ipr.link("set", index=idx, address=vm.mac, mtu=lab.topology.vm_mtu)
        ipr.addr("add", index=idx, address=vm.ip, prefixlen=lab.topology.prefixlen(vm.network))
        ipr.link("set", index=idx, state="up")


def unplug_vm(lab: Lab, vm: Vm, delete_namespace: bool = False) -> None:
    """Remove the VM's tap from its compute (its eth0 goes with it)."""
    computes_mod.of(lab).detach(vm)
    with open_ipr(lab.ns(vm.compute)) as cn:
        found = cn.link_lookup(ifname=tap_name(vm.name))
        if found:
            cn.link("del", index=found[0])
    if delete_namespace and lab.ns(vm.name) in netns.listnetns():
        netns.remove(lab.ns(vm.name))


def write_agent_configs(lab: Lab) -> None:
    """Each gateway node's configuration file (``<site>-gw.conf``, or
    ``<node>.conf`` for one of two). The one writer of the ``[gateway]``
    section: the lab's truth says where the gateway reads (``source``,
    ``site_file``...) and adds its own sections. The two nodes of a site
    differ only in their namespace, state and switch: they are one gateway
    to everyone else."""
    for site in lab.topology.sites:
        for node in site.gateways:
            gateway = {**lab.truth.gateway_options(site),
                       "netns": lab.ns(node),
                       "state_dir": str(lab.state_dir(site.name, node)),
                       "node": node}
            if site.ha:
                gateway["high_availability"] = "vrrp"
            openflow = ""
            if lab.backend == "openflow":
                gateway["backend"] = "openflow"
                ovs = Ovs(lab.ns(node), lab.ovs_dir(site.name, node))
                openflow = ("\n[openflow]\n"
                            f"ovsdb_connection = {ovs.db_sock}\n"
                            "datapath_type = netdev\n")
            atomic_write(lab.agent_conf(site.name, node), (
                "[gateway]\n"
                + "".join(f"{key} = {value}\n" for key, value in gateway.items())
                + openflow
                + f"\n[metrics]\nport = {free_port()}\n"
                + "\n[agent]\n"
                f"resync_interval = {AGENT_RESYNC}\n"
                "poll_interval = 0.1\n"
                f"source_deadline = {SOURCE_DEADLINE}\n"
                + MOBILITY_SECTION
                + lab.truth.config_sections(site)))


def free_port() -> int:
    """A TCP port free on the host's loopback now: the lab's agents serve
    their metrics there (the agents run in the host's namespace)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def metrics_url(lab: Lab, site: str, node: str | None = None) -> str | None:
    conf = configparser.ConfigParser()
    conf.read(lab.agent_conf(site, node))
    port = conf.get("metrics", "port", fallback="0")
    return f"http://127.0.0.1:{port}/metrics" if port != "0" else None


# -- agents ----------------------------------------------------------------------

def agent_argv(lab: Lab, site: str, node: str | None = None) -> list[str]:
    return [sys.executable, "-m", "gwagent.cli", "run", "--config-file",
            str(lab.agent_conf(site, node))]


def start_agent(lab: Lab, site: str, node: str | None = None) -> dict:
    return start_process(lab, lab.gateway_key(site, node), agent_argv(lab, site, node))


def stop_agent(lab: Lab, site: str, node: str | None = None) -> bool:
    return stop_process(lab, lab.gateway_key(site, node))


def restart_agent(lab: Lab, site: str, node: str | None = None) -> dict:
    stop_agent(lab, site, node)
    return start_agent(lab, site, node)


def agent_status(lab: Lab, site: str, node: str | None = None) -> dict | None:
    """The agent's status.json: of ``node``, else of the site's active
    gateway node (its first when none holds the site's addresses)."""
    if node is None and lab.topology.site(site).ha:
        node = vrrp.active(lab, site) or lab.topology.site(site).gateways[0]
    try:
        return json.loads((lab.state_dir(site, node) / "status.json").read_text())
    except (OSError, ValueError):
        return None


def wait_agents_ready(lab: Lab, timeout: float = 20.0, since: float = 0.0,
                      progress: Callable[[str], None] = _progress_none) -> None:
    """Wait until every agent reported a good pass (newer than ``since``, wall
    time) and every site's registry holds the peers' VMs, its active
    registrar's last sync without an error."""
    deadline = time.monotonic() + timeout
    pending = [s.name for s in lab.topology.sites]
    why: dict[str, str] = {}
    while pending:
        for site in list(pending):
            nodes = lab.topology.site(site).gateways
            waiting = None
            for node in nodes:
                key = lab.gateway_key(site, node)
                record = lab.processes.get(key)
                if record is None or not process_alive(record):
                    raise LabError(f"agent {key} of site {site} is not running; its log says:\n"
                                   + log_tail(record["log"] if record
                                              else lab.lab_dir / f"{key}.log"))
                status = agent_status(lab, site, node)
                last = (status or {}).get("last_pass") or {}
                if not (last.get("ok") and last.get("at", 0) >= since):
                    waiting = (f"{key}: last pass {'ok' if last.get('ok') else 'FAILED'}: "
                               f"{(status or {}).get('last_error') or last.get('errors') or '-'}")
            if waiting:
                why[site] = waiting
                continue
            if lab.topology.site(site).ha and vrrp.active(lab, site) is None:
                why[site] = "no gateway node holds the site's addresses yet (VRRP election)"
                continue
            status = agent_status(lab, site)
            want = sum(1 for vm in lab.topology.vms if vm.site != site)
            try:
                have = len(lab.truth.remote_ports(site))
            except Exception as exc:  # noqa: BLE001 - a registry being rewritten: look again
                why[site] = f"its registry unreadable: {exc}"
                continue
            registry = (status or {}).get("registry") or {}
            if have == want and registry.get("state") != "ok":
                # the ports are there, but its registrar has not yet synced
                # without an error: a lab is up when nothing is left to do
                why[site] = f"{have} of {want} remote ports registered; registry {registry}"
            elif have == want:
                pending.remove(site)
            else:
                why[site] = (f"{have} of {want} remote ports registered; registry "
                             f"{(status or {}).get('registry')}")
        if pending and time.monotonic() > deadline:
            raise LabError(f"agents not ready after {timeout:.0f}s: {', '.join(pending)} "
                           f"(see {lab.lab_dir}/<site>-gw.log and "
                           f"gwagent status --config-file {lab.agent_conf(pending[0])}); "
                           + "; ".join(f"{s}: {why.get(s, '?')}" for s in pending)
                           + f"\nthe log of {lab.gateway_key(pending[0])} ends:\n"
                           + log_tail(lab.processes[lab.gateway_key(pending[0])]["log"], 25))
        time.sleep(0.05)
    computes_mod.of(lab).settle(progress)


# -- up and down ---------------------------------------------------------------

def check_root() -> None:
    if os.geteuid() != 0:
        raise LabError("the lab needs root (network namespaces, netlink); run it with sudo")


def up(topology: Topology, prefix: str = DEFAULT_PREFIX, lab_dir: str | Path | None = None,
       agents: bool = True, progress: Callable[[str], None] = _progress_none,
       neutron: bool = False, backend: str = "linux") -> Lab:
    """Build the lab; on failure the partial lab stays for ``down`` (and for a look).

    ``neutron``: one real Neutron per site is the source of truth
    (:mod:`gwagent.lab.neutron`) instead of inventory files; the lab's
    :attr:`~gwagent.lab.record.Lab.truth` is chosen here, once."""
    check_root()
    check_prefix(prefix)
    if topology.computes == topo_mod.OVS_AGENT:
        if not neutron:
            raise LabError("computes: ovs-agent needs a Neutron lab (lab up --neutron): the "
                           "agents are Neutron's")
        if ovs_missing():
            raise LabError(f"computes with Neutron's OVS agent need {ovs_missing()}")
    lab_dir = Path(lab_dir) if lab_dir else default_lab_dir(prefix)
    if (lab_dir / "lab.json").exists():
        raise LabError(f"a lab is already up at {lab_dir}; run 'lab down' first")
    taken = [n for n in netns.listnetns() if n.startswith(prefix)]
    if taken:
        raise LabError(f"namespaces with prefix {prefix!r} exist ({', '.join(sorted(taken)[:4])}"
                       f"{', ...' if len(taken) > 4 else ''}); run 'lab down' first")
    lab_dir.mkdir(parents=True, exist_ok=True)
    if backend not in BACKENDS:
        raise LabError(f"unknown backend {backend!r} (one of: {', '.join(BACKENDS)})")
    if backend == "openflow" and ovs_missing():
        raise LabError(f"the OpenFlow lab needs {ovs_missing()}")
    lab = Lab(prefix, lab_dir, topology, source="neutron" if neutron else "file",
              backend=backend)
    lab.save()
    progress(f"underlay switch {lab.ns(SWITCH)}")
    _build_switch(lab)
    for site in topology.sites:
        progress(f"site {site.name}: gateway {', '.join(lab.ns(n) for n in site.gateways)}, "
                 f"{len(site.computes)} computes, {len(topology.networks)} networks")
        _build_site(lab, site)
        for node in site.gateways:
            if backend == "openflow":
                progress(f"site {site.name}: Open vSwitch in {lab.ns(node)}")
                _build_gateway_ovs(lab, site, node)
        if site.ha:
            progress(f"site {site.name}: keepalived (VRRP) in {', '.join(site.gateways)} "
                     f"for {site.tunnel_ip} and {site.transit_ip}")
            for node in site.gateways:
                vrrp.make_vip_devices(lab, site, node)
                vrrp.start(lab, site, node, underlay_nics(lab))
    progress(f"{len(topology.vms)} VMs")
    for vm in topology.vms:
        plug_vm(lab, vm)
    lab.truth.up(progress)
    computes = computes_mod.of(lab)
    computes.attach(topology.vms, progress=progress)
    write_agent_configs(lab)
    computes.start(progress)
    if agents:
        since = time.time()
        for site in topology.sites:
            for node in site.gateways:
                progress(f"agent of site {site.name} ({lab.agent_conf(site.name, node)})")
                start_agent(lab, site.name, node)
        progress("waiting for the agents' first passes")
        wait_agents_ready(lab, since=since, timeout=lab.truth.ready_timeout,
                          progress=progress)
        if backend == "openflow":
            progress("gateways' OVS: resolving underlay neighbours")
            _resolve_underlay(lab)
    lab.state = "up"
    lab.save()
    return lab


def down(prefix: str = DEFAULT_PREFIX, lab_dir: str | Path | None = None,
         progress: Callable[[str], None] = _progress_none) -> int:
    """Stop what the lab started, delete its namespaces and its directory.

    Works on a half-built lab: processes and namespaces come from lab.json
    when it is readable, and every namespace with the prefix goes too.
    Returns the number of namespaces deleted.
    """
    check_root()
    check_prefix(prefix)
    lab_dir = Path(lab_dir) if lab_dir else default_lab_dir(prefix)
    names: set[str] = set()
    try:
        lab = Lab.load(lab_dir)
    except (LabError, KeyError, ValueError):
        lab = None
    if lab is not None:
        prefix = lab.prefix
        # Agents first (so nothing re-registers), then the emulator, then
        # (Neutron mode) L2 agents, Neutron servers and RabbitMQ.
        # (those of one order together)
        orders: dict[int, list[str]] = {}
        for name, record in lab.processes.items():
            orders.setdefault(record.get("order", 1 if name == "l2pop" else 0), []).append(name)
        for order in sorted(orders):
            for name in stop_processes(lab, sorted(orders[order])):
                progress(f"stopped {name}")
        names.update(lab.namespaces())
    present = set(netns.listnetns())
    names = {n for n in names if n in present}
    names.update(n for n in present if n.startswith(prefix))
    for name in sorted(names):
        netns.remove(name)
    progress(f"deleted {len(names)} namespaces")
    if lab_dir.exists():
        shutil.rmtree(lab_dir)
    return len(names)


# -- changes to a running lab ----------------------------------------------------

def _set_vms(lab: Lab, vms: list[dict]) -> Topology:
    return topo_mod.replace_vms(lab.topology, vms)


def add_vm(lab: Lab, vm: dict) -> float:
    """Plug a new VM (file-format dict) and add its port; returns the time
    (monotonic) of the inventory change."""
    return add_vms(lab, [vm])


def add_vms(lab: Lab, vms: list[dict]) -> float:
    """Plug new VMs (file-format dicts) and add their ports in one change of
    each site concerned; returns the time (monotonic) of the change."""
    topo = _set_vms(lab, topo_mod.to_dict(lab.topology)["vms"] + list(vms))
    new = [topo.vm(vm["name"]) for vm in vms]
    lab.topology = topo
    lab.save()
    for vm in new:
        plug_vm(lab, vm)
    t0 = time.monotonic()
    lab.truth.publish(sorted({vm.site for vm in new}))
    computes_mod.of(lab).attach(new)
    return t0


def remove_vm(lab: Lab, name: str) -> float:
    """Delete the VM's port, then the VM; returns the inventory change time."""
    return remove_vms(lab, [name])


def remove_vms(lab: Lab, names: list[str]) -> float:
    """Delete the VMs' ports, then the VMs; returns the inventory change time."""
    old = [lab.topology.vm(name) for name in names]
    lab.topology = _set_vms(lab, [v for v in topo_mod.to_dict(lab.topology)["vms"]
                                  if v["name"] not in names])
    t0 = time.monotonic()
    lab.truth.publish(sorted({vm.site for vm in old}))
    for vm in old:
        unplug_vm(lab, vm, delete_namespace=True)
    lab.save()
    return t0


def move_vm(lab: Lab, name: str, compute: str) -> float:
    """Re-plug the VM on ``compute`` (in its site or another one), then update
    the inventories (the site losing the port first). The VM keeps its
    namespace, MAC and IP, and announces itself like a migrated guest.
    Returns the time (monotonic) of the inventory change."""
    old = lab.topology.vm(name)
    site = lab.topology.site_of_compute(compute)
    vms = []
    for item in topo_mod.to_dict(lab.topology)["vms"]:
        if item["name"] == name:
            item = dict(item, site=site.name, compute=compute)
        vms.append(item)
    topo = _set_vms(lab, vms)
    unplug_vm(lab, old)
    lab.topology = topo
    lab.save()
    new = topo.vm(name)
    plug_vm(lab, new)
    probe.announce(lab.ns(name), new.mac, new.ip)
    t0 = time.monotonic()
    lab.truth.publish([old.site] + ([new.site] if new.site != old.site else []))
    computes_mod.of(lab).attach([new])
    return t0

"""Build, record and tear down a lab: namespaces, underlay, computes, VMs.

Everything lives in network namespaces named ``<prefix><node>``; nothing is
added to the root namespace (every veth is created inside a lab namespace
with its peer placed straight into another one). The shape:

* ``<prefix>switch``: one Linux bridge per underlay segment, ``br-site<n>``
  for site n (198.18.<n>.0/24) and ``br-transit`` (198.18.0.0/24);
* ``<prefix><compute>``: ``eth0`` on its site's segment and, per network,
  ``brq-<segid>`` with ``vxlan-<segid>`` (VNI = the site's segmentation ID,
  local = compute IP, dstport 4789), programmed as Neutron's l2population
  does, with static entries; VXLAN learning is on for the MACs it leaves
  alone (mobile MACs), as the OVS agent's learn flows do; VMs plug in with
  ``tap<hash>`` veths;
* ``<prefix><vm>``: ``eth0`` with the VM's MAC and IP, MTU 1450;
* ``<prefix><gateway>``: ``eth0`` (tunnel IP, site segment) and ``eth1``
  (transit IP, transit segment). Its VXLAN devices belong to the agent.

The lab directory holds what the agents and the L2 population emulator read
(``<site>.yaml`` inventories, ``<site>-gw.conf``), their logs, and
``lab.json``: the topology, prefix and the processes the lab started (pid and
kernel start time, so a recycled pid is never signalled). ``lab.json`` is
written before anything is built and after every change, so ``down`` works
from another process and after a half-finished ``up``; ``down`` also removes
any namespace carrying the prefix.

Changes to a running lab (:func:`add_vm`, :func:`remove_vm`, :func:`move_vm`)
re-plug the VM first, then rewrite the inventories the way a cloud would
after a migration (the site losing a port first), and return the moment of
the inventory change so a test can measure convergence from it.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import yaml
from pyroute2 import IPRoute, netns

from gwagent.control.sources import FileInventory, atomic_write, site_to_dict
from gwagent.lab import topology as topo_mod
from gwagent.lab.topology import Topology, Vm

LAB_ROOT = Path("/run/gwagent/lab")
DEFAULT_PREFIX = "gwl-"
PREFIX_RE = re.compile(r"^[a-z][a-z0-9]{0,11}-([a-z0-9]{1,8}-)?$")
VM_MTU = 1450
VXLAN_PORT = 4789
SWITCH = "switch"
AGENT_RESYNC = 2.0
SOURCE_DEADLINE = 3.0  # a lab's sources answer in milliseconds
# Drills move VIPs back and forth many times a minute: duplicate detection
# (production default 5 moves in 180 s) would freeze them. The lab keeps it
# on with room for drills; a test of damping sets its own.
MOBILITY_SECTION = ("\n[mobility]\n"
                    "max_moves = 1000\n"
                    "move_window = 60\n"
                    "freeze_time = 30\n")


class LabError(Exception):
    """The lab cannot do what was asked; the message says why."""


def default_lab_dir(prefix: str) -> Path:
    return LAB_ROOT / prefix.rstrip("-")


def tap_name(vm_name: str) -> str:
    return "tap" + hashlib.sha256(vm_name.encode()).hexdigest()[:10]


def vxlan_name(segmentation_id: int) -> str:
    return f"vxlan-{segmentation_id}"


def bridge_name(segmentation_id: int) -> str:
    return f"brq-{segmentation_id}"


def _progress_none(_msg: str) -> None:
    pass


@dataclasses.dataclass
class Lab:
    """A lab as recorded in ``<lab_dir>/lab.json``."""

    prefix: str
    lab_dir: Path
    topology: Topology
    processes: dict = dataclasses.field(default_factory=dict)
    state: str = "building"
    neutron: dict | None = None  # Neutron mode: servers, clouds.yaml, RabbitMQ (lab.neutron)

    # -- names and paths ----------------------------------------------------
    def ns(self, node: str) -> str:
        return self.prefix + node

    @property
    def json_path(self) -> Path:
        return self.lab_dir / "lab.json"

    def inventory(self, site: str) -> Path:
        return self.lab_dir / f"{site}.yaml"

    def registry(self, site: str) -> Path:
        return FileInventory(self.inventory(site)).registry_path

    def agent_conf(self, site: str) -> Path:
        return self.lab_dir / f"{site}-gw.conf"

    def state_dir(self, site: str) -> Path:
        return self.lab_dir / f"{site}-gw"

    def namespaces(self) -> list[str]:
        nodes = [SWITCH]
        for site in self.topology.sites:
            nodes += [site.gateway, *site.computes]
        nodes += [vm.name for vm in self.topology.vms]
        return [self.ns(n) for n in nodes]

    def node_namespace(self, node: str) -> str:
        """The namespace of a node given by name (or by namespace)."""
        names = self.namespaces()
        for candidate in (self.ns(node), node):
            if candidate in names:
                return candidate
        raise LabError(f"no node {node!r} in the lab (nodes: "
                       f"{', '.join(n[len(self.prefix):] for n in names)})")

    # -- persistence --------------------------------------------------------
    def to_dict(self) -> dict:
        return {"prefix": self.prefix, "lab_dir": str(self.lab_dir), "state": self.state,
                "topology": topo_mod.to_dict(self.topology), "processes": self.processes,
                "neutron": self.neutron}

    def save(self) -> None:
        atomic_write(self.json_path, json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def load(cls, lab_dir: str | Path) -> "Lab":
        path = Path(lab_dir) / "lab.json"
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise LabError(f"no lab at {lab_dir} (no lab.json): is it up?") from None
        except (OSError, ValueError) as exc:
            raise LabError(f"cannot read {path}: {exc}") from None
        return cls(data["prefix"], Path(data["lab_dir"]), topo_mod.parse(data["topology"]),
                   data.get("processes", {}), data.get("state", "?"), data.get("neutron"))

    # -- description --------------------------------------------------------
    def nodes(self) -> list[dict]:
        """Every node: namespace, site, kind, network, IP, MAC (status output)."""
        present = set(netns.listnetns())
        rows = [{"node": SWITCH, "kind": "switch", "site": None, "network": None,
                 "ip": None, "mac": None}]
        for site in self.topology.sites:
            rows.append({"node": site.gateway, "kind": "gateway", "site": site.name,
                         "network": None, "ip": site.tunnel_ip,
                         "transit_ip": site.transit_ip, "mac": None})
            for compute in site.computes:
                rows.append({"node": compute, "kind": "compute", "site": site.name,
                             "network": None, "ip": site.compute_ip(compute), "mac": None})
        for vm in self.topology.vms:
            rows.append({"node": vm.name, "kind": "vm", "site": vm.site, "compute": vm.compute,
                         "network": vm.network, "ip": vm.ip, "mac": vm.mac})
        for row in rows:
            row["namespace"] = self.ns(row["node"])
            row["present"] = row["namespace"] in present
        return rows


# -- netlink helpers ---------------------------------------------------------

def _ipr(ns: str) -> IPRoute:
    """A netlink socket inside ``ns``; never creates the namespace."""
    return IPRoute(netns=ns, flags=0)


def _index(ipr: IPRoute, ifname: str) -> int:
    found = ipr.link_lookup(ifname=ifname)
    if not found:
        raise LabError(f"no interface {ifname!r} in namespace {ipr.status.get('netns')}")
    return found[0]


def _sysctls_in(ns: str, values: dict[str, str]) -> None:
    """Write /proc/sys keys as seen from inside ``ns`` (a forked child joins it)."""
    pid = os.fork()
    if pid == 0:  # child: join the namespace, write, leave without cleanup
        code = 0
        try:
            netns.setns(ns, flags=0)
            for key, value in values.items():
                with open("/proc/sys/" + key.replace(".", "/"), "w") as handle:
                    handle.write(value)
        except BaseException:
            code = 1
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise LabError(f"could not set sysctls {sorted(values)} in {ns}")


def _new_namespace(ns: str) -> None:
    netns.create(ns)
    # No IPv6: link-local chatter (RS, MLD, DAD) would flood the overlay and
    # show up as unknown MACs in every capture.
    _sysctls_in(ns, {"net.ipv6.conf.all.disable_ipv6": "1",
                     "net.ipv6.conf.default.disable_ipv6": "1"})
    with _ipr(ns) as ipr:
        ipr.link("set", index=_index(ipr, "lo"), state="up")


def _uplink(sw: IPRoute, sw_port: str, bridge: str, ns: str, ifname: str,
            address: str) -> None:
    """A veth from the switch's ``bridge`` to ``ifname`` in ``ns`` with ``address``/24."""
    sw.link("add", ifname=sw_port, kind="veth", peer={"ifname": ifname, "net_ns_fd": ns})
    sw.link("set", index=_index(sw, sw_port), master=_index(sw, bridge), state="up")
    with _ipr(ns) as ipr:
        idx = _index(ipr, ifname)
        ipr.addr("add", index=idx, address=address, prefixlen=24)
        ipr.link("set", index=idx, state="up")


# -- building ----------------------------------------------------------------

def _build_switch(lab: Lab) -> None:
    _new_namespace(lab.ns(SWITCH))
    with _ipr(lab.ns(SWITCH)) as sw:
        for name in ["br-transit"] + [f"br-site{s.number}" for s in lab.topology.sites]:
            sw.link("add", ifname=name, kind="bridge")
            sw.link("set", index=_index(sw, name), state="up")


def _build_site(lab: Lab, site) -> None:
    sw_ns = lab.ns(SWITCH)
    gw_ns = lab.ns(site.gateway)
    _new_namespace(gw_ns)
    with _ipr(sw_ns) as sw:
        _uplink(sw, f"g{site.number}s", f"br-site{site.number}", gw_ns, "eth0", site.tunnel_ip)
        _uplink(sw, f"g{site.number}t", "br-transit", gw_ns, "eth1", site.transit_ip)
        for j, compute in enumerate(site.computes, 1):
            cn_ns = lab.ns(compute)
            _new_namespace(cn_ns)
            _uplink(sw, f"c{site.number}-{j}", f"br-site{site.number}", cn_ns, "eth0",
                    site.compute_ip(compute))
            _build_compute_networks(cn_ns, site.compute_ip(compute),
                                    [seg for _, seg in site.segmentation_ids])


def _build_compute_networks(ns: str, local_ip: str, segmentation_ids: list[int]) -> None:
    with _ipr(ns) as ipr:
        uplink = _index(ipr, "eth0")
        for seg in segmentation_ids:
            br, vx = bridge_name(seg), vxlan_name(seg)
            ipr.link("add", ifname=br, kind="bridge")
            # Learning on, for the MACs Neutron does not pin (mobile ones):
            # static entries are never moved by it (DESIGN.md, kernel facts).
            ipr.link("add", ifname=vx, kind="vxlan", vxlan_id=seg, vxlan_local=local_ip,
                     vxlan_link=uplink, vxlan_port=VXLAN_PORT, vxlan_learning=1,
                     mtu=VM_MTU)
            ipr.link("set", index=_index(ipr, vx), master=_index(ipr, br), state="up")
            ipr.link("set", index=_index(ipr, br), state="up")


def plug_vm(lab: Lab, vm: Vm) -> None:
    """Create the VM's namespace if needed and plug its eth0 into its compute."""
    vm_ns = lab.ns(vm.name)
    if vm_ns not in netns.listnetns():
        _new_namespace(vm_ns)
    site = lab.topology.site(vm.site)
    seg = site.segmentation_id(vm.network)
    tap = tap_name(vm.name)
    with _ipr(lab.ns(vm.compute)) as cn:
        cn.link("add", ifname=tap, kind="veth", peer={"ifname": "eth0", "net_ns_fd": vm_ns})
        cn.link("set", index=_index(cn, tap), master=_index(cn, bridge_name(seg)),
                mtu=VM_MTU, state="up")
    with _ipr(vm_ns) as ipr:
        idx = _index(ipr, "eth0")
        ipr.link("set", index=idx, address=vm.mac, mtu=VM_MTU)
        ipr.addr("add", index=idx, address=vm.ip, prefixlen=lab.topology.prefixlen(vm.network))
        ipr.link("set", index=idx, state="up")


def unplug_vm(lab: Lab, vm: Vm, delete_namespace: bool = False) -> None:
    """Remove the VM's tap from its compute (its eth0 goes with it)."""
    with _ipr(lab.ns(vm.compute)) as cn:
        found = cn.link_lookup(ifname=tap_name(vm.name))
        if found:
            cn.link("del", index=found[0])
    if delete_namespace and lab.ns(vm.name) in netns.listnetns():
        netns.remove(lab.ns(vm.name))


def write_inventories(lab: Lab, sites: list[str] | None = None) -> None:
    """Write the sites' inventory files from the lab's topology (atomically)."""
    for site in sites or [s.name for s in lab.topology.sites]:
        snap = topo_mod.site_snapshot(lab.topology, site)
        atomic_write(lab.inventory(site), yaml.safe_dump(site_to_dict(snap), sort_keys=False))


def write_agent_configs(lab: Lab) -> None:
    for site in lab.topology.sites:
        if lab.neutron is not None:
            from gwagent.lab import neutron as lab_neutron
            atomic_write(lab.agent_conf(site.name), lab_neutron.agent_config(lab, site))
            continue
        peers = ",".join(str(lab.inventory(s.name)) for s in lab.topology.sites
                         if s.name != site.name)
        atomic_write(lab.agent_conf(site.name), (
            "[gateway]\n"
            f"site_file = {lab.inventory(site.name)}\n"
            f"peer_site_files = {peers}\n"
            f"netns = {lab.ns(site.gateway)}\n"
            f"state_dir = {lab.state_dir(site.name)}\n"
            "\n[agent]\n"
            f"resync_interval = {AGENT_RESYNC}\n"
            "poll_interval = 0.1\n"
            f"source_deadline = {SOURCE_DEADLINE}\n"
            + MOBILITY_SECTION))


# -- processes -----------------------------------------------------------------

def _proc_start_time(pid: int) -> tuple[str, int] | None:
    """(state, start time in clock ticks) of ``pid``, or None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return fields[0], int(fields[19])


def process_alive(record: dict) -> bool:
    """True if the recorded process (same pid AND same start time) still runs."""
    info = _proc_start_time(record["pid"])
    return info is not None and info[1] == record["start"] and info[0] not in ("Z", "X")


def _package_root() -> str:
    return str(Path(__file__).resolve().parents[2])


def python_env() -> dict[str, str]:
    """The environment for a child Python that must import this gwagent."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_package_root(), env.get("PYTHONPATH"))
                                        if p)
    return env


def start_process(lab: Lab, name: str, argv: list[str], env: dict | None = None,
                  group: bool = False, order: int = 0) -> dict:
    """Start ``argv`` in its own session, output to <lab_dir>/<name>.log; record it.

    ``group``: stop it by its process group (it forks helpers); ``order``:
    ``down`` stops lower orders first."""
    env = python_env() if env is None else env
    log = lab.lab_dir / f"{name}.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True, env=env,
                                cwd=str(lab.lab_dir))
    info = _proc_start_time(proc.pid)
    record = {"pid": proc.pid, "start": info[1] if info else None, "argv": argv,
              "log": str(log), "group": group, "order": order}
    lab.processes[name] = record
    lab.save()
    return record


def stop_process(lab: Lab, name: str, timeout: float = 5.0) -> bool:
    """SIGTERM the recorded process, SIGKILL after ``timeout``; True if it ran."""
    record = lab.processes.pop(name, None)
    lab.save()
    if record is None or record.get("start") is None or not process_alive(record):
        return False
    pid = record["pid"]
    # A session leader's pgid is its pid: its group holds the helpers it forked.
    kill = os.killpg if record.get("group") else os.kill
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 2.0)):
        with contextlib.suppress(ProcessLookupError):
            kill(pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)  # reap it if it is our child
            if not process_alive(record):
                return True
            time.sleep(0.02)
    return True


def agent_argv(lab: Lab, site: str) -> list[str]:
    return [sys.executable, "-m", "gwagent.cli", "run", "--config-file",
            str(lab.agent_conf(site))]


def start_agent(lab: Lab, site: str) -> dict:
    return start_process(lab, f"{site}-gw", agent_argv(lab, site))


def stop_agent(lab: Lab, site: str) -> bool:
    return stop_process(lab, f"{site}-gw")


def restart_agent(lab: Lab, site: str) -> dict:
    stop_agent(lab, site)
    return start_agent(lab, site)


def agent_status(lab: Lab, site: str) -> dict | None:
    try:
        return json.loads((lab.state_dir(site) / "status.json").read_text())
    except (OSError, ValueError):
        return None


def log_tail(path: str | Path, lines: int = 15) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def wait_agents_ready(lab: Lab, timeout: float = 20.0, since: float = 0.0) -> None:
    """Wait until every agent reported a good pass (newer than ``since``, wall
    time) and every site's registry holds the peers' VMs."""
    deadline = time.monotonic() + timeout
    pending = [s.name for s in lab.topology.sites]
    while pending:
        for site in list(pending):
            record = lab.processes.get(f"{site}-gw")
            if record is None or not process_alive(record):
                raise LabError(f"agent of site {site} is not running; its log says:\n"
                               + log_tail(record["log"] if record else lab.lab_dir / f"{site}-gw.log"))
            status = agent_status(lab, site)
            last = (status or {}).get("last_pass") or {}
            if not (last.get("ok") and last.get("at", 0) >= since):
                continue
            want = sum(1 for vm in lab.topology.vms if vm.site != site)
            try:
                have = len(registered_remote_ports(lab, site))
            except Exception:  # noqa: BLE001 - a registry being rewritten: look again
                continue
            if have == want:
                pending.remove(site)
        if pending and time.monotonic() > deadline:
            raise LabError(f"agents not ready after {timeout:.0f}s: {', '.join(pending)} "
                           f"(see {lab.lab_dir}/<site>-gw.log and "
                           f"gwagent status --config-file {lab.agent_conf(pending[0])})")
        time.sleep(0.05)
    if lab.neutron is not None:
        # Program the computes from the Neutrons' view now (idempotent with
        # the emulator's own pass), rather than guessing how long it takes.
        from gwagent.lab import l2pop
        l2pop.reconcile_once(lab)
    else:
        time.sleep(0.3)  # let the L2 population emulator see the registries


def registered_remote_ports(lab: Lab, site: str) -> list:
    """The remote ports registered in the site (its registry file or its Neutron)."""
    if lab.neutron is not None:
        from gwagent.lab import neutron as lab_neutron
        return lab_neutron.remote_ports_of(lab, site)
    return FileInventory(lab.inventory(site), owner=None).all_remote_ports()


def update_sites(lab: Lab, sites: list[str] | None = None) -> None:
    """Tell the sites' clouds about the topology's VMs: rewrite the inventory
    files, or create/update/delete the ports in the sites' Neutrons."""
    if lab.neutron is not None:
        from gwagent.lab import neutron as lab_neutron
        lab_neutron.sync_ports(lab, sites)
    else:
        write_inventories(lab, sites)


# -- up and down ---------------------------------------------------------------

def check_root() -> None:
    if os.geteuid() != 0:
        raise LabError("the lab needs root (network namespaces, netlink); run it with sudo")


def check_prefix(prefix: str) -> None:
    if not PREFIX_RE.match(prefix):
        raise LabError(f"bad prefix {prefix!r}: lower-case letters and digits ending in "
                       "'-', e.g. 'gwl-' or 'gwf-1a2b-'")


def up(topology: Topology, prefix: str = DEFAULT_PREFIX, lab_dir: str | Path | None = None,
       agents: bool = True, progress: Callable[[str], None] = _progress_none,
       neutron: bool = False) -> Lab:
    """Build the lab; on failure the partial lab stays for ``down`` (and for a look).

    ``neutron``: one real Neutron per site is the source of truth
    (:mod:`gwagent.lab.neutron`) instead of inventory files."""
    check_root()
    check_prefix(prefix)
    lab_dir = Path(lab_dir) if lab_dir else default_lab_dir(prefix)
    if (lab_dir / "lab.json").exists():
        raise LabError(f"a lab is already up at {lab_dir}; run 'lab down' first")
    taken = [n for n in netns.listnetns() if n.startswith(prefix)]
    if taken:
        raise LabError(f"namespaces with prefix {prefix!r} exist ({', '.join(sorted(taken)[:4])}"
                       f"{', ...' if len(taken) > 4 else ''}); run 'lab down' first")
    lab_dir.mkdir(parents=True, exist_ok=True)
    lab = Lab(prefix, lab_dir, topology)
    lab.save()
    progress(f"underlay switch {lab.ns(SWITCH)}")
    _build_switch(lab)
    for site in topology.sites:
        progress(f"site {site.name}: gateway {lab.ns(site.gateway)}, "
                 f"{len(site.computes)} computes, {len(topology.networks)} networks")
        _build_site(lab, site)
    progress(f"{len(topology.vms)} VMs")
    for vm in topology.vms:
        plug_vm(lab, vm)
    if neutron:
        from gwagent.lab import neutron as lab_neutron
        try:
            lab_neutron.up(lab, progress)
        except lab_neutron.NeutronLabError as exc:
            raise LabError(str(exc)) from None
    else:
        write_inventories(lab)
    write_agent_configs(lab)
    from gwagent.lab import l2pop
    l2pop.reconcile_once(lab)
    progress("L2 population emulator")
    start_process(lab, "l2pop", [sys.executable, "-m", "gwagent.lab.l2pop",
                                 "--lab-dir", str(lab_dir)], order=1)
    if agents:
        since = time.time()
        for site in topology.sites:
            progress(f"agent of site {site.name} ({lab.agent_conf(site.name)})")
            start_agent(lab, site.name)
        progress("waiting for the agents' first passes")
        wait_agents_ready(lab, since=since, timeout=60.0 if neutron else 20.0)
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
        for name in sorted(lab.processes, key=lambda n: (
                lab.processes[n].get("order", 1 if n == "l2pop" else 0), n)):
            if stop_process(lab, name):
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
    update_sites(lab, sorted({vm.site for vm in new}))
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
    update_sites(lab, sorted({vm.site for vm in old}))
    for vm in old:
        unplug_vm(lab, vm, delete_namespace=True)
    lab.save()
    return t0


def move_vm(lab: Lab, name: str, compute: str) -> float:
    """Re-plug the VM on ``compute`` (in its site or another one), then update
    the inventories (the site losing the port first). The VM keeps its
    namespace, MAC and IP, and announces itself like a migrated guest.
    Returns the time (monotonic) of the inventory change."""
    from gwagent.lab import probe
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
    update_sites(lab, [old.site] + ([new.site] if new.site != old.site else []))
    return t0

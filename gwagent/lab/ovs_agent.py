"""Computes with Neutron's own Open vSwitch agent (``computes: ovs-agent``).

A Neutron lab's computes are, by default, Linux bridges programmed by the
lab's L2 population emulator (:mod:`gwagent.lab.l2pop`) with stand-in
agents that only report state (:mod:`gwagent.lab.l2agents`). With
``computes: ovs-agent`` in the topology (``lab up --computes ovs-agent``)
every compute is what a carrier runs instead, configured as a deployer
would:

* its own Open vSwitch in its namespace, userspace datapath
  (:class:`~gwagent.lab.ovs.Ovs`, state in ``<lab_dir>/<compute>-ovs/``),
  ``eth0`` in an underlay bridge ``ul-site`` whose internal port carries
  the compute's address (OVS's native tunnels route through it);
* ``neutron-openvswitch-agent`` from the Neutron venv, run *inside* the
  namespace (it checks ``local_ip`` against the compute's devices, and its
  os-ken controller listens on the compute's 127.0.0.1 where that OVS
  connects), configuration in ``<lab_dir>/<compute>-agent/``: tunnel type
  vxlan, ``l2_population``, ``local_ip`` the compute's address,
  ``datapath_type = netdev``, OVSDB at the compute's own socket,
  ``root_helper`` empty and privsep's ``helper_command`` the venv's
  ``privsep-helper`` (the lab runs as root: no sudo);
* the lab's RabbitMQ listens on the host's loopback: the lab's forwarder
  (:mod:`gwagent.lab.forward`, one process for every compute) listens on
  the same port on each compute's loopback, so the agent's
  ``transport_url`` is the broker's own.

Two choices, documented in the README:

* ``firewall_driver = openvswitch``: Neutron's port security (the port's
  MAC and IPs, and its allowed address pairs, are all a VM may send from)
  applies to the VMs' traffic, VRRP and GARPs included, as in production.
  The lab's ports carry a security group of their own, ``lab-any``, that
  admits every IPv4 packet: what the lab tests is port security and the
  gateway's forwarding, not a tenant's rules (the default group admits
  only its members, and remote VMs are no members).
* ``arp_responder = false`` (Neutron's default): ARP crosses the tunnels
  like any broadcast, so a VIP's GARP reaches every cloud through the
  gateways; l2pop's ARP entries carry only fixed IPs, never a VIP.

VMs are plugged as Nova's VIF driver (os-vif's ovs plugin) plugs them:
the VM's ``tap`` in ``br-int`` with ``external_ids`` ``iface-id`` (the
Neutron port), ``attached-mac``, ``vm-uuid`` (the port's ``device_id``)
and ``iface-status=active``; the agent binds and wires them.

:func:`tunnel_places` reads where a compute's ``br-tun`` sends each MAC
(the agent's own flows in table 20: l2pop's, and those learned from the
tunnels), by VTEP address: ``lab status`` shows them, the tests and the
drills check them.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from gwagent.lab import probe
from gwagent.lab.names import SWITCH, LabError, tap_name
from gwagent.lab.ovs import Ovs
from gwagent.lab.processes import log_tail, process_alive, python_env, start_process

FIREWALL_DRIVER = "openvswitch"
UCAST_TO_TUN = 20   # br-tun's table of unicast MACs (neutron's constants)
FLOOD_TO_TUN = 22
AGENT_GRACE = 1.0  # seconds an agent gets after SIGTERM (lab down)


def ovs_of(lab, compute: str) -> Ovs:
    return Ovs(lab.ns(compute), lab.lab_dir / f"{compute}-ovs")


def agent_dir(lab, compute: str) -> Path:
    return lab.lab_dir / f"{compute}-agent"


def build_compute(lab, site, compute: str) -> None:
    """The compute's OVS, its underlay bridge, nothing else: the agent makes
    ``br-int`` and ``br-tun`` when it starts."""
    ovs = ovs_of(lab, compute).start()
    ovs.record(lab, compute)
    j = site.computes.index(compute) + 1
    ovs.attach_underlay("ul-site", "eth0", f"{site.compute_ip(compute)}/24",
                        (lab.ns(SWITCH), f"c{site.number}-{j}"), lab.topology.mtu)


#: the agent's privsep contexts (neutron.privileged): each starts its
#: daemon with ``sudo privsep-helper`` unless told otherwise; an empty
#: ``root_helper`` does not tell it (oslo.privsep keeps its sudo prefix)
PRIVSEP_SECTIONS = ("privsep", "privsep_dhcp_release", "privsep_ovs_vsctl",
                    "privsep_namespace", "privsep_conntrack", "privsep_link")


def _conf(lab, site, compute: str, transport_url: str, exchange: str, venv: Path,
          conf: Path) -> str:
    d = agent_dir(lab, compute)
    helper = f"{venv / 'bin' / 'privsep-helper'} --config-file {conf}"
    return "".join(f"[{section}]\nhelper_command = {helper}\n\n"
                   for section in PRIVSEP_SECTIONS) + textwrap.dedent(f"""\
        [DEFAULT]
        host = {compute}
        transport_url = {transport_url}
        control_exchange = {exchange}
        state_path = {d}
        debug = false
        use_stderr = true

        [oslo_concurrency]
        lock_path = {d}/lock

        [agent]
        tunnel_types = vxlan
        l2_population = true
        arp_responder = false
        # The lab runs as root: no sudo (privsep: helper_command above).
        root_helper =

        [ovs]
        integration_bridge = br-int
        tunnel_bridge = br-tun
        local_ip = {site.compute_ip(compute)}
        datapath_type = netdev
        ovsdb_connection = {ovs_of(lab, compute).db_sock}
        of_listen_address = 127.0.0.1
        bridge_mappings =

        [securitygroup]
        enable_security_group = true
        firewall_driver = {FIREWALL_DRIVER}
        """)


def process_name(compute: str) -> str:
    return f"{compute}-ovs-agent"


def _agent_env(lab, compute: str, venv: Path) -> dict:
    env = ovs_of(lab, compute).env()
    env.pop("PYTHONPATH", None)
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '/usr/sbin:/usr/bin')}"
    return env


def start(lab, venv: Path, sites: dict[str, dict], broker_port: int) -> list[str]:
    """The forwarder to the broker, then every compute's agent; returns the
    process names of the agents. ``sites``: per site its ``transport_url``
    and ``exchange`` (the Neutron lab's record)."""
    computes = [(site, c) for site in lab.topology.sites for c in site.computes]
    rec = start_process(lab, "forward-broker",
                        [sys.executable, "-m", "gwagent.lab.forward", str(broker_port),
                         *(lab.ns(c) for _, c in computes)], env=python_env(), order=7)
    deadline = time.monotonic() + 10
    while '"ready"' not in Path(rec["log"]).read_text(errors="replace"):
        if not process_alive(rec) or time.monotonic() > deadline:
            raise LabError(f"the broker forwarder did not start:\n{log_tail(rec['log'])}")
        time.sleep(0.05)
    names = []
    for site, compute in computes:
        d = agent_dir(lab, compute)
        (d / "lock").mkdir(parents=True, exist_ok=True)
        conf = d / "ovs-agent.ini"
        info = sites[site.name]
        conf.write_text(_conf(lab, site, compute, info["transport_url"], info["exchange"],
                              venv, conf))
        name = process_name(compute)
        start_process(lab, name, ["ip", "netns", "exec", lab.ns(compute),
                                  str(venv / "bin" / "neutron-openvswitch-agent"),
                                  "--config-file", str(conf)],
                      env=_agent_env(lab, compute, venv), group=True, order=4)
        # It finishes its loop's iteration before it exits (5 s and more
        # here); its namespace goes right after, so nothing needs it clean.
        lab.processes[name]["grace"] = AGENT_GRACE
        names.append(name)
    lab.save()
    return names


def plug(lab, vm, port_id: str) -> None:
    """Put the VM's tap into its compute's ``br-int`` as Nova's VIF driver
    does (the bridge made if missing, as os-vif does)."""
    tap = tap_name(vm.name)
    ovs_of(lab, vm.compute).vsctl(
        "--may-exist", "add-br", "br-int", "--", "set", "bridge", "br-int",
        "datapath_type=netdev",
        "--", "--may-exist", "add-port", "br-int", tap,
        "--", "set", "interface", tap, f"mtu_request={lab.topology.vm_mtu}",
        f"external_ids:iface-id={port_id}", "external_ids:iface-status=active",
        f"external_ids:attached-mac={vm.mac}", f"external_ids:vm-uuid={vm.port_id}")


def unplug(lab, vm) -> None:
    ovs_of(lab, vm.compute).vsctl("--if-exists", "del-port", "br-int", tap_name(vm.name))


def tunnel_ports(lab, compute: str) -> dict[str, str]:
    """{port name: remote VTEP} of the compute's ``br-tun`` VXLAN ports."""
    out = ovs_of(lab, compute).vsctl("--format=json", "--columns=name,options", "find",
                                     "interface", "type=vxlan")
    ports = {}
    for name, options in json.loads(out)["data"]:
        opts = dict(options[1]) if isinstance(options, list) else {}
        if "remote_ip" in opts:
            ports[name] = opts["remote_ip"]
    return ports


_FLOW_MAC = re.compile(r"dl_dst=([0-9a-f:]{17})")
_TUN_ID = re.compile(r"load:(0x[0-9a-f]+)->NXM_NX_TUN_ID\[\]")
_OUTPUT = re.compile(r'output:"?([^,"\s]+)"?')


def _br_tun_flows(lab, compute: str, table: int) -> list[str]:
    """The lines of ``ovs-ofctl dump-flows`` of one table of the compute's br-tun."""
    ovs = ovs_of(lab, compute)
    return ovs._run("ovs-ofctl", "--names", "dump-flows", f"unix:{ovs.rundir / 'br-tun.mgmt'}",
                    f"table={table}").stdout.splitlines()


def tunnel_places(lab, compute: str) -> list[dict]:
    """Where the compute's ``br-tun`` sends unicast frames: per flow of
    table 20, the MAC, the VNI, the VTEP (the VXLAN port's remote IP) and
    whether l2pop installed it or it was learned from a tunnel."""
    ports = tunnel_ports(lab, compute)
    rows = []
    for line in _br_tun_flows(lab, compute, UCAST_TO_TUN):
        mac, tun, out = _FLOW_MAC.search(line), _TUN_ID.search(line), _OUTPUT.findall(line)
        if not (mac and out):
            continue
        rows.append({"mac": mac.group(1), "vni": int(tun.group(1), 16) if tun else None,
                     "vtep": ports.get(out[-1], out[-1]),
                     "by": "l2pop" if "priority=2" in line else "learned"})
    return sorted(rows, key=lambda r: (r["vni"] or 0, r["mac"]))


def flood_vteps(lab, compute: str) -> dict[int, list[str]]:
    """{VNI: VTEPs} the compute's ``br-tun`` floods to (table 22)."""
    ports = tunnel_ports(lab, compute)
    out: dict[int, list[str]] = {}
    for line in _br_tun_flows(lab, compute, FLOOD_TO_TUN):
        tun = _TUN_ID.search(line)
        if tun:
            out[int(tun.group(1), 16)] = sorted(ports.get(p, p) for p in _OUTPUT.findall(line))
    return out


def bridge_port_of(lab, compute: str, mac: str) -> str | None:
    """The port of ``br-int`` where the compute's OVS learned ``mac`` (its
    NORMAL forwarding's MAC table), or None."""
    ovs = ovs_of(lab, compute)
    pid = ovs.pid("ovs-vswitchd")
    text = ovs._run("ovs-appctl", "-t", str(ovs.rundir / f"ovs-vswitchd.{pid}.ctl"),
                    "fdb/show", "br-int").stdout
    shown = ovs._run("ovs-ofctl", "show", f"unix:{ovs.rundir / 'br-int.mgmt'}").stdout
    names = dict(re.findall(r"^\s*(\d+)\(([^)]+)\):", shown, re.M))
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 3 and fields[2].lower() == mac:
            return names.get(fields[0], fields[0])
    return None


def resolve_underlay(lab, compute: str, targets: list[str]) -> None:
    """Let the compute's OVS learn its underlay neighbours' MACs (the
    gateway, the other computes), as :func:`gwagent.lab.build` does for
    gateways: OVS's userspace tunnels drop what they send to a VTEP not
    resolved yet, and they snoop the compute's own ARP for them."""
    ns = lab.ns(compute)
    subprocess.run(["ip", "-n", ns, "neigh", "flush", "all"], check=True)
    for ip in targets:
        if probe.ping(ns, ip) is None:
            raise LabError(f"{compute} cannot reach {ip} on its underlay")

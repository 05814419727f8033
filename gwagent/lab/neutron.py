"""The Neutron lab: one real Neutron per site as the source of truth.

``gwagent lab up --neutron`` builds the same namespaces as the file lab
(switch, gateways, computes with ``gwa-br-<segid>``/``gwa-vl-<segid>``, VMs), but
no inventory file is written: every site gets its own Neutron, and
everything the gateways and the computes learn comes from those APIs.

What runs (all on 127.0.0.1, all recorded in ``lab.json`` with pid and start
time, all stopped by ``lab down`` by process group, never by name):

* ``rabbit`` (+ ``rabbit-epmd``): one private RabbitMQ broker (Debian
  ``rabbitmq-server``) with a virtual host per site, so each site's Neutron
  has its own RPC bus, as separate clouds do;
* ``neutron-<site>-api`` and ``neutron-<site>-rpc``: the site's Neutron
  (``gwagent.lab.neutron_server``: uwsgi API + RPC server, ML2 with the
  ``gwagent``, ``openvswitch`` and ``l2population`` mechanism drivers, SQLite
  in ``<lab_dir>/neutron-<site>/``);
* ``l2agents-<site>``: for every compute of the site, an Open vSwitch L2
  agent as Neutron sees it (``report_state`` over RPC, ``tunneling_ip`` = the
  compute's underlay IP). This is the real mechanism by which Neutron knows a
  bound port's VTEP: the agent on its ``binding:host_id``;
  With ``computes: ovs-agent`` in the topology these are instead Neutron's
  own ``neutron-openvswitch-agent``, one per compute
  (:mod:`gwagent.lab.ovs_agent`), and ``l2pop`` does not run;
* ``l2pop``: the L2 population emulator, in Neutron mode (below);
* ``<site>-gw``: the gateway agents, ``[gateway] source = neutron``.

What the lab creates in each Neutron, as an operator would: per stretched
network a VXLAN provider network (``provider:segmentation_id`` = the site's
segmentation ID from the topology, name = the stretched name) with the
tenant subnet (no gateway, no DHCP); per VM one port (its MAC, its fixed IP,
``binding:host_id`` = its compute, its allowed address pairs, ``device_owner
= compute:lab``, ``device_id`` = the topology's ``port_id``, name = the VM's
name). ``<lab_dir>/clouds.yaml`` holds one ``auth_type: none`` entry per
site, ``lab-<site>``, usable by any OpenStack client::

    OS_CLIENT_CONFIG_FILE=/run/gwagent/lab/gwl/clouds.yaml \\
        openstack --os-cloud lab-a port list

The gateway agent of a site (``<site>-gw.conf``) reads its own site and every
peer site from their Neutrons and registers each peer VM in its own Neutron
as a remote port (``device_owner = network:gwagent_remote``,
``binding:profile.gwagent.tunnel_ip`` = its tunnel IP).

The L2 population emulator then programs the computes from Neutron's view
only: per site, the bound local ports (VTEP = the ``tunneling_ip`` of the
agent on ``binding:host_id``) and the remote ports of the site's gateway
(VTEP = the gateway's tunnel IP from the binding profile), through the same
pure functions as the file lab, polling each Neutron every 0.5 s (a narrow
listing of port revisions; a full read when it changed, and every few
seconds regardless).

Changes to a running lab (``build.add_vm``/``remove_vm``/``move_vm``) create,
delete or rebind the VM's Neutron port instead of rewriting an inventory:
the lab's :class:`~gwagent.lab.truth.NeutronTruth` calls this module for
everything that differs from a file lab, and nothing else does (it imports
no other lab module but the low ones: names, processes, the starters and
the fault proxy).

``lab status`` shows, besides nodes and processes, each site's Neutron URL,
cloud name and workdir, the RabbitMQ URL and the clouds.yaml path.

Requirements: the Neutron venv (``tools/setup-neutron-venv.sh``) and
``rabbitmq-server``; ``up --neutron`` fails with what is missing. A lab comes
up in about 30-60 s on a 2-CPU host (two Neutrons, ~200 MB each per
process).
"""
from __future__ import annotations

import contextlib
import dataclasses
import glob
import http.client
import os
import threading
import time
from pathlib import Path

import yaml

from gwagent.control.sources import atomic_write
from gwagent.lab import broker, faultproxy, ovs_agent
from gwagent.lab import neutron_server as nserver
from gwagent.lab import topology as topo_mod
from gwagent.lab.names import LabError
from gwagent.lab.processes import (free_port, log_tail, port_open, process_alive, python_env,
                                   record_popen, start_process)
from gwagent.model import Gateway, Site
from gwagent.neutron.source import NeutronClient, NeutronError, NeutronSite

LAB_DEVICE_OWNER = "compute:lab"
PROJECT = "lab"
TENANT_VNI_RANGE = "{}:{}".format(*topo_mod.TENANT_VNIS)
REPORT_INTERVAL = 20  # seconds between the L2 agents' report_state
#: seconds a lab's Neutron server gets after SIGTERM: its API (uwsgi) and
#: RPC server (oslo.service's graceful shutdown) never stopped within 5 s,
#: and the lab's throwaway database needs no clean shutdown
NEUTRON_GRACE = 1.0
RABBIT_NODE = "gwlab{}@localhost"
PORT_FIELDS = ["id", "name", "network_id", "mac_address", "fixed_ips", "binding:host_id",
               "allowed_address_pairs", "device_owner", "device_id"]


class NeutronLabError(LabError):
    """A Neutron lab requirement or step failed; the message says which."""


def cloud_name(site: str) -> str:
    return f"lab-{site}"


def clouds_file(lab) -> Path:
    return lab.lab_dir / "clouds.yaml"


def neutron_venv() -> Path:
    return nserver.DEFAULT_VENV


def _rabbit_script() -> str | None:
    found = sorted(glob.glob("/usr/lib/rabbitmq/lib/rabbitmq_server-*/sbin/rabbitmq-server"))
    return found[-1] if found else None


def missing_requirements() -> list[str]:
    """What ``up --neutron`` needs and this host lacks, in words."""
    missing = []
    venv = neutron_venv()
    if not (venv / "bin" / "uwsgi").exists():
        missing.append(f"the Neutron venv at {venv} (run tools/setup-neutron-venv.sh, or set "
                       "GWAGENT_NEUTRON_VENV)")
    if _rabbit_script() is None or not os.path.exists("/usr/bin/epmd"):
        missing.append("rabbitmq-server (apt-get install rabbitmq-server)")
    return missing


# -- RabbitMQ --------------------------------------------------------------------

def _rabbit_env(lab) -> dict:
    r = lab.neutron["rabbit"]
    return broker.environment(r["workdir"], r["node"], r["port"], r["dist_port"],
                              r["epmd_port"])


def start_rabbit(lab, vhosts: list[str], timeout: float = 60.0) -> dict[str, str]:
    """A private broker for the lab (as tests/integration/rabbit.py does),
    with ``vhosts`` (one per site); returns their transport URLs."""
    w = lab.lab_dir / "rabbit"
    w.mkdir(parents=True, exist_ok=True)
    lab.neutron["rabbit"] = {
        "workdir": str(w), "port": free_port(), "dist_port": free_port(),
        "epmd_port": free_port(), "node": RABBIT_NODE.format(lab.prefix.rstrip("-")
                                                             .replace("-", ""))}
    r = lab.neutron["rabbit"]
    r["url"] = f"rabbit://guest:guest@127.0.0.1:{r['port']}/"
    lab.save()
    broker.prepare(w, r["port"], vhosts)
    start_process(lab, "rabbit-epmd", ["/usr/bin/epmd", "-port", str(r["epmd_port"]),
                                             "-address", "127.0.0.1"],
                        env=_rabbit_env(lab), group=True, order=9)
    time.sleep(0.3)
    run_rabbit(lab, timeout)
    return {vhost: r["url"] + vhost for vhost in vhosts}


def run_rabbit(lab, timeout: float = 60.0) -> None:
    """(Re)start the lab's broker on its recorded ports and directory; its
    virtual hosts persist there."""
    r = lab.neutron["rabbit"]
    rec = start_process(lab, "rabbit", [_rabbit_script()], env=_rabbit_env(lab),
                              group=True, order=8)
    deadline = time.monotonic() + timeout
    while not port_open(r["port"]):
        if not process_alive(rec) or time.monotonic() > deadline:
            raise NeutronLabError(f"RabbitMQ did not start; see {rec['log']}:\n"
                                  + log_tail(rec["log"]))
        time.sleep(0.2)


# -- Neutron servers ----------------------------------------------------------------

def start_servers(lab, transport_urls: dict[str, str], timeout: float = 120.0) -> None:
    """One Neutron (API + RPC server) per site; both spawned, then awaited."""
    servers = {}
    for site in lab.topology.sites:
        port = free_port()
        # A tenant VXLAN range apart from the stretched networks' provider
        # segmentation IDs: tenants can create networks (of any name).
        srv = nserver.prepare(site.name, lab.lab_dir / f"neutron-{site.name}", port,
                              transport_url=transport_urls[site.name],
                              vni_range=TENANT_VNI_RANGE, venv=neutron_venv())
        servers[site.name] = srv
        lab.neutron["sites"][site.name] = {
            "cloud": cloud_name(site.name), "url": srv.url, "port": port,
            "workdir": str(srv.workdir), "exchange": f"neutron-{site.name}",
            "transport_url": transport_urls[site.name]}
    write_clouds(lab)
    for name, srv in servers.items():
        srv.spawn()
        record_popen(lab, f"neutron-{name}-api", srv.procs["api"], srv.log_file, order=6,
                     grace=NEUTRON_GRACE)
    for name, srv in servers.items():
        try:
            srv.wait_ready(timeout)
        except nserver.NeutronStartError as exc:
            raise NeutronLabError(str(exc)) from None
        finally:
            if "rpc" in srv.procs:
                record_popen(lab, f"neutron-{name}-rpc", srv.procs["rpc"],
                             srv.workdir / "neutron-rpc.log", order=5,
                             grace=NEUTRON_GRACE)


def restart_api(lab, site: str, timeout: float = 60.0) -> None:
    """Start a site's Neutron API again on its port and database (after it
    was killed); its RPC server runs on."""
    info = lab.neutron["sites"][site]
    srv = nserver.NeutronServer(site, Path(info["workdir"]), info["port"], neutron_venv(),
                                info["transport_url"])
    srv.spawn()
    record_popen(lab, f"neutron-{site}-api", srv.procs["api"], srv.log_file, order=6,
                     grace=NEUTRON_GRACE)
    try:
        srv.wait_ready(timeout, start_rpc=False)
    except nserver.NeutronStartError as exc:
        raise NeutronLabError(str(exc)) from None


def start_proxies(lab) -> None:
    """A fault proxy in front of every site's API (passing, to begin with)."""
    for site, info in lab.neutron["sites"].items():
        port = free_port()
        control = faultproxy.control_file(lab.lab_dir, site)
        faultproxy.set_mode(control)
        start_process(lab, f"neutron-{site}-proxy", faultproxy.argv(port, info["port"], control),
                      order=3)
        info["proxy_url"] = f"http://127.0.0.1:{port}"
        info["proxy_port"] = port
    lab.save()
    deadline = time.monotonic() + 10
    for info in lab.neutron["sites"].values():
        while not port_open(info["proxy_port"]):
            if time.monotonic() > deadline:
                raise NeutronLabError(f"fault proxy on port {info['proxy_port']} did not start")
            time.sleep(0.05)
    write_clouds(lab)


@dataclasses.dataclass
class ControlPlane:
    """What ``gwagent lab fault`` breaks and mends: each site's Neutron API
    (a recorded process, and the fault proxy in front of it) and the
    RabbitMQ every site's RPC goes through."""

    lab: object
    rabbit: str = "rabbit"  # the broker's process name

    @property
    def sites(self) -> list[str]:
        return list(self.lab.neutron["sites"])

    def api(self, site: str) -> str:
        """The process name of the site's API."""
        return f"neutron-{site}-api"

    def proxy_control(self, site: str) -> Path:
        return faultproxy.control_file(self.lab.lab_dir, site)

    def restart_api(self, site: str) -> None:
        restart_api(self.lab, site)

    def restart_rabbit(self) -> None:
        run_rabbit(self.lab)


def write_clouds(lab) -> None:
    """``lab-<site>``: what the gateways and an operator's client use, through
    the site's fault proxy when it has one (``gwagent lab fault``);
    ``lab-<site>-direct``: the API itself, for the lab's own work (the
    cloud's insides, which an API-side fault does not touch)."""
    clouds = {}
    for info in lab.neutron["sites"].values():
        front = info.get("proxy_url") or info["url"]
        clouds[info["cloud"]] = {"auth_type": "none", "auth": {"endpoint": front}}
        clouds[info["cloud"] + "-direct"] = {"auth_type": "none",
                                             "auth": {"endpoint": info["url"]}}
    clouds = {"clouds": clouds}
    lab.neutron["clouds_file"] = str(clouds_file(lab))
    atomic_write(clouds_file(lab), yaml.safe_dump(clouds, sort_keys=False))
    lab.save()


_CLIENTS: dict[tuple, NeutronClient] = {}


def client(lab, site: str, timeout: tuple[float, float] = (3.0, 30.0)):
    """A client of the site's API itself (not through its fault proxy).

    One per site, timeout and thread, kept: a new client's first request
    discovers the API's versions first (0.3-1.1 s here, where a listing
    takes 0.15 s), and the tests read every site's Neutron many times."""
    key = (str(clouds_file(lab)), cloud_name(site), timeout, threading.get_ident())
    found = _CLIENTS.get(key)
    if found is None:
        found = _CLIENTS[key] = NeutronClient(cloud_name(site) + "-direct",
                                              str(clouds_file(lab)), timeout=timeout)
    return found


def neutron_site(lab, site_name: str, timeout: tuple[float, float] = (3.0, 30.0)):
    """The site as its gateway agent sees it (source and registry), read
    from the API itself."""
    site = lab.topology.site(site_name)
    return NeutronSite(client(lab, site_name, timeout),
                       Site(site.name, Gateway(site.gateway, site.tunnel_ip, site.transit_ip)),
                       {n.name: n.transit_vni for n in lab.topology.networks},
                       network_ids(lab, site_name))


def network_ids(lab, site_name: str) -> dict[str, str]:
    """{stretched name: Neutron network ID} the lab created in the site."""
    return {name: info["id"] for name, info in lab.neutron["sites"][site_name]["networks"].items()}


def _ids_option(lab, site_name: str) -> str:
    return ",".join(f"{k}:{v}" for k, v in sorted(network_ids(lab, site_name).items()))


# -- L2 agents -------------------------------------------------------------------------

def start_l2_agents(lab, timeout: float = 120.0) -> None:
    """Every compute's L2 agent, and wait until each is registered with its
    underlay IP as ``tunneling_ip``: the stand-ins of ``l2agents`` (one
    process per site), or with ``computes: ovs-agent`` Neutron's own
    Open vSwitch agent in each compute (:mod:`gwagent.lab.ovs_agent`)."""
    if lab.topology.computes == topo_mod.OVS_AGENT:
        ovs_agent.start(lab, neutron_venv(), lab.neutron["sites"],
                        lab.neutron["rabbit"]["port"])
        procs = {site.name: [ovs_agent.process_name(c) for c in site.computes]
                 for site in lab.topology.sites}
    else:
        procs = {site.name: [f"l2agents-{site.name}"] for site in lab.topology.sites}
        _start_stand_ins(lab)
    deadline = time.monotonic() + timeout
    for site in lab.topology.sites:
        c = client(lab, site.name)
        want = {cn: site.compute_ip(cn) for cn in site.computes}
        while True:
            have = {a["host"]: (a.get("configurations") or {}).get("tunneling_ip")
                    for a in c.list("agents", fields=["host", "configurations"])}
            if all(have.get(h) == ip for h, ip in want.items()):
                break
            dead = [lab.processes[n] for n in procs[site.name]
                    if not process_alive(lab.processes[n])]
            if dead or time.monotonic() > deadline:
                rec = (dead or [lab.processes[procs[site.name][0]]])[0]
                raise NeutronLabError(f"L2 agents of site {site.name} not registered "
                                      f"(have {have}); log of {rec['argv'][-3:]}:\n"
                                      f"{log_tail(rec['log'])}")
            time.sleep(0.5)


def _start_stand_ins(lab) -> None:
    env = python_env()
    python = str(neutron_venv() / "bin" / "python")
    for site in lab.topology.sites:
        info = lab.neutron["sites"][site.name]
        conf = lab.lab_dir / f"l2agents-{site.name}.conf"
        conf.write_text(f"[DEFAULT]\ntransport_url = {info['transport_url']}\n"
                        f"control_exchange = {info['exchange']}\n"
                        "rpc_response_timeout = 5\n"
                        f"\n[AGENT]\nreport_interval = {REPORT_INTERVAL}\n")
        start_process(lab, f"l2agents-{site.name}",
                            [python, "-m", "gwagent.lab.l2agents", str(conf),
                             *(f"{c}={site.compute_ip(c)}" for c in site.computes)],
                            env=env, group=True, order=4)


# -- what an operator creates ----------------------------------------------------------

def create_networks(lab) -> None:
    """Per site and stretched network: a VXLAN provider network and its
    subnet; per site the lab's security group."""
    for site in lab.topology.sites:
        c = client(lab, site.name)
        nets = lab.neutron["sites"][site.name].setdefault("networks", {})
        for net in lab.topology.networks:
            made = _create_one(c, "network", {
                "name": net.name, "project_id": PROJECT,
                "provider:network_type": "vxlan",
                "provider:segmentation_id": site.segmentation_id(net.name)})
            sub = _create_one(c, "subnet", {
                "network_id": made["id"], "name": f"{net.name}-subnet", "cidr": net.subnet,
                "ip_version": 4, "project_id": PROJECT, "enable_dhcp": False,
                "gateway_ip": None}, network_id=made["id"])
            nets[net.name] = {"id": made["id"], "subnet_id": sub["id"],
                              "segmentation_id": site.segmentation_id(net.name)}
        # Every IPv4 packet in and out: what the lab tests is port security
        # (a port's MAC, IPs and allowed address pairs) and the gateways,
        # not a tenant's rules; the default group admits only its members,
        # and a remote VM is none. Both directions are written: the lab's
        # database is made from the models, without the migration that
        # fills Neutron's default rule templates (a new group's egress).
        group = _create_one(c, "security_group", {"name": "lab-any", "project_id": PROJECT},
                            collection="security-groups")
        for direction in ("ingress", "egress"):
            if not any(r["direction"] == direction and r["ethertype"] == "IPv4"
                       for r in group["security_group_rules"]):
                _create_one(c, "security_group_rule", {
                    "security_group_id": group["id"], "direction": direction,
                    "ethertype": "IPv4", "project_id": PROJECT},
                    collection="security-group-rules", security_group_id=group["id"],
                    direction=direction)
        lab.neutron["sites"][site.name]["security_group"] = group["id"]
        lab.save()


def _create_one(c, kind: str, body: dict, collection: str | None = None,
                timeout: float = 30.0, **match) -> dict:
    """POST one resource; on a 5xx (SQLite "database is locked" while the
    RPC server writes for the agents) look it up (by ``name``, else by
    ``match``), since it may have been committed before the error, and
    post again if it was not."""
    collection = collection or kind + "s"
    deadline = time.monotonic() + timeout
    while True:
        try:
            return c.request("POST", f"/{collection}", {kind: body})[kind]
        except NeutronError as exc:
            if exc.status < 500 or time.monotonic() > deadline:
                raise
        query = dict(match, **({"name": body["name"]} if "name" in body else {}))
        found = c.request("GET", f"/{collection}", params=query).get(
            collection.replace("-", "_"), [])
        if found:
            return found[0]
        time.sleep(0.2)


def _port_body(lab, vm) -> dict:
    net = lab.neutron["sites"][vm.site]["networks"][vm.network]
    return {"name": vm.name, "network_id": net["id"], "project_id": PROJECT,
            "mac_address": vm.mac,
            "fixed_ips": [{"subnet_id": net["subnet_id"], "ip_address": vm.ip}],
            "binding:host_id": vm.compute, "device_owner": LAB_DEVICE_OWNER,
            "device_id": vm.port_id,
            "security_groups": [lab.neutron["sites"][vm.site]["security_group"]],
            "allowed_address_pairs": [{"ip_address": p.ip_address,
                                       "mac_address": p.mac_address}
                                      for p in vm.allowed_address_pairs]}


def _differs(port: dict, body: dict) -> dict:
    change = {}
    if sorted(f["ip_address"] for f in port.get("fixed_ips") or ()) != [body["fixed_ips"][0]
                                                                        ["ip_address"]]:
        change["fixed_ips"] = body["fixed_ips"]
    if port.get("binding:host_id") != body["binding:host_id"]:
        change["binding:host_id"] = body["binding:host_id"]
    have = sorted((p["ip_address"], (p.get("mac_address") or "").lower())
                  for p in port.get("allowed_address_pairs") or ())
    want = sorted((p["ip_address"], p["mac_address"]) for p in body["allowed_address_pairs"])
    if have != want:
        change["allowed_address_pairs"] = body["allowed_address_pairs"]
    return change


def sync_ports(lab, sites: list[str] | None = None, conflict_wait: float = 20.0) -> int:
    """Make each site's lab-owned Neutron ports match the topology's VMs
    (delete, then update, then create); returns the number of changes."""
    changes = 0
    for site in sites or [s.name for s in lab.topology.sites]:
        c = client(lab, site)
        want = {vm.name: vm for vm in lab.topology.vms if vm.site == site}
        have = {p["name"]: p for p in c.list("ports", device_owner=LAB_DEVICE_OWNER,
                                                  fields=PORT_FIELDS)}
        creates = []
        for name, port in sorted(have.items()):
            vm = want.get(name)
            body = _port_body(lab, vm) if vm else None
            if (vm is None or port["network_id"] != body["network_id"]
                    or port["mac_address"].lower() != vm.mac):
                _retrying(c, "DELETE", f"/ports/{port['id']}")
                changes += 1
                if vm is not None:
                    creates.append(body)
                continue
            change = _differs(port, body)
            if change:
                _retrying(c, "PUT", f"/ports/{port['id']}", {"port": change})
                changes += 1
        creates += [_port_body(lab, vm) for name, vm in sorted(want.items())
                    if name not in have]
        if creates:
            _create(c, creates, conflict_wait)
            changes += len(creates)
    return changes


def _retrying(c, method: str, path: str, body: dict | None = None,
              timeout: float = 20.0) -> None:
    """A request retried on 5xx (SQLite "database is locked" under
    concurrent writers) until ``timeout``; a 404 on DELETE is done."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            c.request(method, path, body)
            return
        except NeutronError as exc:
            if method == "DELETE" and exc.status == 404:
                return
            if exc.status < 500 or time.monotonic() > deadline:
                raise
        time.sleep(0.2)


def _create(c, bodies: list[dict], conflict_wait: float) -> None:
    """Bulk-create ports. A MAC still held by a gateway's remote port (a VM
    that moved here from another site, whose remote port the gateway has not
    withdrawn yet) makes Neutron refuse with 409 (MAC in use, or IP already
    allocated): wait, reading only, until the MAC is free, then create; until ``conflict_wait`` runs out. A 500
    (SQLite "database is locked" under concurrent writers) is retried too."""
    deadline = time.monotonic() + conflict_wait
    while True:
        macs = [b["mac_address"] for b in bodies]
        try:
            c.request("POST", "/ports", {"ports": bodies})
            return
        except NeutronError as exc:
            text = str(exc).lower()
            conflict = exc.status == 409 and ("mac address" in text
                                              or "already allocated" in text)
            if not (conflict or exc.status >= 500) or time.monotonic() > deadline:
                raise
        # A 500 may come after the ports were committed (SQLite locked in a
        # later step): those that exist as the lab made them are done.
        made = {(p["name"], p["mac_address"].lower()) for p in c.list(
            "ports", device_owner=LAB_DEVICE_OWNER, mac_address=macs,
            fields=["name", "mac_address"])}
        bodies = [b for b in bodies if (b["name"], b["mac_address"]) not in made]
        if not bodies:
            return
        macs = [b["mac_address"] for b in bodies]
        while time.monotonic() < deadline:
            time.sleep(0.2)
            if not c.list("ports", mac_address=macs, fields=["id"]):
                break


def lab_ports(lab, site: str) -> dict[str, dict]:
    """{VM name: its port (id, status, binding:host_id)} in the site's Neutron."""
    return {p["name"]: p for p in client(lab, site).list(
        "ports", device_owner=LAB_DEVICE_OWNER, fields=["id", "name", "status",
                                                        "binding:host_id"])}


def wait_active(lab, vms, timeout: float = 60.0) -> None:
    """Until every port of ``vms`` is ACTIVE on its compute: the L2 agent
    there wired it and told Neutron (``update_device_up``)."""
    deadline = time.monotonic() + timeout
    for site in sorted({vm.site for vm in vms}):
        names = {vm.name: vm.compute for vm in vms if vm.site == site}
        while True:
            ports = lab_ports(lab, site)
            waiting = [n for n, host in names.items()
                       if (ports.get(n) or {}).get("status") != "ACTIVE"
                       or ports[n].get("binding:host_id") != host]
            if not waiting:
                break
            if time.monotonic() > deadline:
                raise NeutronLabError(f"ports of {', '.join(waiting)} in site {site} not "
                                      f"ACTIVE after {timeout:.0f} s: "
                                      + ", ".join(f"{n} {(ports.get(n) or {}).get('status')}"
                                                  for n in waiting))
            time.sleep(0.2)


def remote_ports_of(lab, site: str) -> list:
    """The remote ports the site's gateway registered in the site's Neutron."""
    return neutron_site(lab, site).remote_ports()


# -- the whole of it -------------------------------------------------------------------

def up(lab, progress) -> None:
    """Everything Neutron for a lab whose namespaces and VMs exist."""
    missing = missing_requirements()
    if missing:
        raise NeutronLabError("lab up --neutron needs " + " and ".join(missing))
    lab.neutron = {"sites": {}}
    lab.save()
    t0 = time.monotonic()
    progress("RabbitMQ (one broker, a virtual host per site)")
    vhosts = start_rabbit(lab, [f"site-{s.name}" for s in lab.topology.sites])
    urls = {s.name: vhosts[f"site-{s.name}"] for s in lab.topology.sites}
    progress(f"Neutron servers for sites {', '.join(urls)} ({time.monotonic() - t0:.1f} s)")
    start_servers(lab, urls)
    start_proxies(lab)
    progress(f"L2 agents of the computes ({time.monotonic() - t0:.1f} s)")
    start_l2_agents(lab)
    progress(f"networks, subnets and {len(lab.topology.vms)} VM ports "
             f"({time.monotonic() - t0:.1f} s)")
    create_networks(lab)
    sync_ports(lab)
    progress(f"Neutron ready ({time.monotonic() - t0:.1f} s)")


def config_sections(lab, site) -> str:
    """The ``[neutron]`` and ``[neutron_peer_<site>]`` sections of the
    site's gateway configuration (``[gateway] source = neutron``)."""
    nets = ",".join(f"{n.name}:{n.transit_vni}" for n in lab.topology.networks)
    peers = [s for s in lab.topology.sites if s.name != site.name]
    text = ("\n[neutron]\n"
            "api_connect_timeout = 1\n"
            # Writes to a lab Neutron (SQLite, one thread) take seconds when
            # several ports are created: a shorter deadline would time out
            # requests that Neutron completes anyway.
            "api_read_timeout = 10\n"
            f"cloud = {cloud_name(site.name)}\n"
            f"clouds_file = {clouds_file(lab)}\n"
            f"site_name = {site.name}\n"
            f"networks = {nets}\n"
            f"network_ids = {_ids_option(lab, site.name)}\n"
            f"gateway_host = {site.gateway}\n"
            f"gateway_tunnel_ip = {site.tunnel_ip}\n"
            f"gateway_transit_ip = {site.transit_ip}\n"
            + (f"gateway_nodes = {','.join(site.gateways)}\n" if site.ha else "")
            + f"peers = {','.join(p.name for p in peers)}\n"
            "poll_interval = 0.5\n"
            + _notifications_option(lab, site.name))
    for peer in peers:
        text += (f"\n[neutron_peer_{peer.name}]\n"
                 f"cloud = {cloud_name(peer.name)}\n"
                 f"clouds_file = {clouds_file(lab)}\n"
                 f"network_ids = {_ids_option(lab, peer.name)}\n"
                 f"gateway_host = {peer.gateway}\n"
                 f"gateway_tunnel_ip = {peer.tunnel_ip}\n"
                 f"gateway_transit_ip = {peer.transit_ip}\n"
                 + _notifications_option(lab, peer.name))
    return text


def _notifications_option(lab, site: str) -> str:
    """Where the gateways hear a site's Neutron notifications: its virtual
    host on the lab's broker, its control exchange."""
    info = lab.neutron["sites"][site]
    url = info.get("transport_url") or "fake:"
    if url.startswith("fake:"):
        return ""  # a lab without a broker: the gateways list
    return (f"notification_url = {url}\n"
            f"notification_exchange = {info['exchange']}\n")


def status(lab) -> dict:
    """What ``lab status`` shows of Neutron."""
    if not lab.neutron:
        return {}
    sites = {}
    for name, info in lab.neutron.get("sites", {}).items():
        sites[name] = {k: info.get(k) for k in ("cloud", "url", "workdir")}
        with contextlib.suppress(OSError):
            conn = http.client.HTTPConnection("127.0.0.1", info["port"], timeout=2)
            conn.request("GET", "/v2.0/networks?limit=1", headers={"Connection": "close"})
            sites[name]["answering"] = conn.getresponse().status == 200
            conn.close()
        sites[name].setdefault("answering", False)
    return {"clouds_file": lab.neutron.get("clouds_file"),
            "rabbit": (lab.neutron.get("rabbit") or {}).get("url"), "sites": sites}

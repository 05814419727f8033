"""A lab as recorded in ``<lab_dir>/lab.json``: names, paths, truth, processes.

``lab.json`` holds the topology, the prefix, the processes the lab started
(:mod:`gwagent.lab.processes`), where the sites' truth lives (``source``:
``file`` or ``neutron``) and, for a Neutron lab, what its clouds are made
of (``neutron``: servers, RabbitMQ, clouds.yaml). It is written before
anything is built and after every change, so any process (``lab down``,
the L2 population emulator, a drill) can load the lab as it is.

A :class:`Lab` gets its :attr:`Lab.truth` once, when it is made or loaded,
from ``source``; nothing else asks which kind of lab it is.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from pyroute2 import netns

from gwagent.control.sources import atomic_write
from gwagent.lab import topology as topo_mod
from gwagent.lab import truth as truth_mod
from gwagent.lab.names import SWITCH, LabError
from gwagent.lab.topology import Topology


@dataclasses.dataclass
class Lab:
    """A lab as recorded in ``<lab_dir>/lab.json``."""

    prefix: str
    lab_dir: Path
    topology: Topology
    processes: dict = dataclasses.field(default_factory=dict)
    state: str = "building"
    source: str = "file"        # where the sites' truth lives: file or neutron
    neutron: dict | None = None  # a Neutron lab's clouds (gwagent.lab.neutron reads it)
    backend: str = "linux"       # the gateways' dataplane: linux or openflow
    truth: truth_mod.Truth = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        try:
            self.truth = truth_mod.TRUTHS[self.source](self)
        except KeyError:
            raise LabError(f"unknown source {self.source!r} (one of: "
                           f"{', '.join(truth_mod.TRUTHS)})") from None

    # -- names and paths ----------------------------------------------------
    def ns(self, node: str) -> str:
        return self.prefix + node

    @property
    def json_path(self) -> Path:
        return self.lab_dir / "lab.json"

    def inventory(self, site: str) -> Path:
        """The site's inventory file (a file lab's truth)."""
        return self.lab_dir / f"{site}.yaml"

    def gateway_key(self, site: str, node: str | None = None) -> str:
        """The name of a gateway node's agent process and files: ``<site>-gw``
        for a site's only gateway, the node's name for one of two (the first
        node without ``node``)."""
        return self.topology.site(site).gateway_key(node)

    def agent_conf(self, site: str, node: str | None = None) -> Path:
        return self.lab_dir / f"{self.gateway_key(site, node)}.conf"

    def state_dir(self, site: str, node: str | None = None) -> Path:
        return self.lab_dir / self.gateway_key(site, node)

    def ovs_dir(self, site: str, node: str | None = None) -> Path:
        """The gateway's Open vSwitch (an OpenFlow lab): database, sockets, logs."""
        site_ = self.topology.site(site)
        return self.lab_dir / (f"{node or site_.gateways[0]}-ovs" if site_.ha
                               else f"{site}-ovs")

    def keepalived_dir(self, site: str, node: str) -> Path:
        """A gateway node's keepalived (two gateways per site): its
        configuration, state and pid files."""
        return self.lab_dir / f"{node}-vrrp"

    def namespaces(self) -> list[str]:
        nodes = [SWITCH]
        for site in self.topology.sites:
            nodes += [*site.gateways, *site.computes]
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
                "source": self.source, "neutron": self.neutron, "backend": self.backend}

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
        # A lab.json from before "source" was recorded: a Neutron record meant Neutron.
        source = data.get("source") or ("file" if data.get("neutron") is None else "neutron")
        return cls(data["prefix"], Path(data["lab_dir"]), topo_mod.parse(data["topology"]),
                   data.get("processes", {}), data.get("state", "?"), source,
                   data.get("neutron"), data.get("backend", "linux"))

    # -- description --------------------------------------------------------
    def nodes(self) -> list[dict]:
        """Every node: namespace, site, kind, network, IP, MAC (status output)."""
        present = set(netns.listnetns())
        rows = [{"node": SWITCH, "kind": "switch", "site": None, "network": None,
                 "ip": None, "mac": None}]
        for site in self.topology.sites:
            for node in site.gateways:
                # Two nodes: their own addresses, and (vip) the site's that
                # the active one holds.
                rows.append({"node": node, "kind": "gateway", "site": site.name,
                             "network": None, "ip": site.node_tunnel_ip(node),
                             "transit_ip": site.node_transit_ip(node), "mac": None,
                             **({"vip": site.tunnel_ip, "transit_vip": site.transit_ip}
                                if site.ha else {})})
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

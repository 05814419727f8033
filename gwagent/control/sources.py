"""Sources: what exists in each site, and the local registry of remote ports.

A *source* reads one site: its gateway, its stretched networks and its own
endpoints (never the remote ports another gateway registered there). A
*registry* is the local site's store of remote ports, of which a gateway
reads and changes only those it owns. Neither ever touches the dataplane.

The embedded implementation is :class:`FileInventory`: one YAML file per
site, written by people (or the lab), and beside it a JSON registry written
by the gateway. It offers exactly what a Neutron source offers, so the agent
does not know which one it talks to.
"""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Iterable, Protocol

import yaml

from gwagent.model import (AddressPair, Endpoint, Gateway, Network, Rejected, RemotePort, Site,
                           SiteSnapshot, ValidationError)


class SourceError(Exception):
    """A source could not be read (unreachable, unreadable, malformed)."""


class SiteSource(Protocol):
    def snapshot(self) -> SiteSnapshot:
        """The site as it is now; raises SourceError or ValidationError."""

    def version(self) -> object:
        """A cheap token that changes when the site may have changed
        (``None``: unknown, poll with ``snapshot``)."""


class Registry(Protocol):
    def remote_ports(self) -> list[RemotePort]:
        """The remote ports this gateway registered (and only those)."""

    def register(self, ports: list[RemotePort]) -> dict[tuple, str]:
        """Create or update ``ports``; returns {port.key: error} for failures."""

    def unregister(self, ports: list[RemotePort]) -> dict[tuple, str]:
        """Delete ``ports``; returns {port.key: error} for failures."""


class Throttled:
    """A source whose ``version()`` asks at most every ``interval`` seconds.

    The agent polls versions often (a file's is a stat); a Neutron's costs a
    request, so between two real asks the last answer stands. A source whose
    notifications are heard (``events_live()``) is asked every time: its
    version costs nothing. Whatever else the source offers (its registry,
    its status, ``close``) passes through.
    """

    def __init__(self, source: SiteSource, interval: float, clock=time.monotonic):
        self.source, self.interval, self.clock = source, interval, clock
        self._asked, self._version = None, None

    def snapshot(self) -> SiteSnapshot:
        return self.source.snapshot()

    def __getattr__(self, name):
        if name == "source":
            raise AttributeError(name)
        return getattr(self.source, name)

    def version(self) -> object:
        live = getattr(self.source, "events_live", None)
        if live is not None and live():
            return self.source.version()  # free: what its notifications said
        now = self.clock()
        if self._asked is None or now - self._asked >= self.interval:
            self._asked = now
            try:
                self._version = self.source.version()
            except (SourceError, OSError):
                self._version = None  # unknown: the agent re-reads and reports
        return self._version


def endpoint_to_dict(ep: Endpoint) -> dict:
    data = {"network": ep.network, "mac": ep.mac, "ips": list(ep.ips), "vtep": ep.vtep}
    if ep.port_id:
        data["port_id"] = ep.port_id
    if ep.allowed_address_pairs:
        data["allowed_address_pairs"] = [dataclasses.asdict(p) for p in ep.allowed_address_pairs]
    return data


def endpoint_from_dict(site: str, data: dict, where: str) -> Endpoint:
    if not isinstance(data, dict):
        raise ValidationError(where, data, "must be a mapping")
    known = {"network", "mac", "ips", "vtep", "port_id", "allowed_address_pairs"}
    extra = set(data) - known
    if extra:
        raise ValidationError(where, sorted(extra)[0], f"unknown key (known: {', '.join(sorted(known))})")
    for key in ("network", "mac", "vtep"):
        if key not in data:
            raise ValidationError(f"{where}.{key}", None, "missing")
    ips = data.get("ips") or []
    if not isinstance(ips, list):
        raise ValidationError(f"{where}.ips", ips, "must be a list")
    pairs = data.get("allowed_address_pairs") or []
    if not isinstance(pairs, list) or not all(isinstance(p, dict) for p in pairs):
        raise ValidationError(f"{where}.allowed_address_pairs", pairs,
                              "must be a list of {ip_address, mac_address}")
    return Endpoint(site=site, network=data["network"], mac=data["mac"], vtep=data["vtep"],
                    ips=tuple(ips), port_id=str(data.get("port_id", "")),
                    allowed_address_pairs=tuple(
                        AddressPair(p.get("ip_address"), p.get("mac_address", data["mac"]))
                        for p in pairs))


def parse_site(data: object, origin: str = "<site>") -> SiteSnapshot:
    """Build a validated snapshot from a site file's parsed content."""
    if not isinstance(data, dict):
        raise ValidationError(origin, type(data).__name__, "a site file must be a mapping")
    for key in ("site", "gateway", "networks"):
        if key not in data:
            raise ValidationError(key, None, f"missing in {origin}")
    gw = data["gateway"]
    if not isinstance(gw, dict):
        raise ValidationError("gateway", gw, "must be a mapping of host, tunnel_ip, transit_ip")
    for key in ("host", "tunnel_ip", "transit_ip"):
        if key not in gw:
            raise ValidationError(f"gateway.{key}", None, "missing")
    site = Site(data["site"], Gateway(gw["host"], gw["tunnel_ip"], gw["transit_ip"],
                                      gw.get("nodes") or ()))
    nets = data["networks"] or []
    if not isinstance(nets, list):
        raise ValidationError("networks", nets, "must be a list")
    networks = []
    for i, net in enumerate(nets):
        if not isinstance(net, dict):
            raise ValidationError(f"networks[{i}]", net, "must be a mapping")
        for key in ("name", "segmentation_id", "transit_vni"):
            if key not in net:
                raise ValidationError(f"networks[{i}].{key}", None, "missing")
        networks.append(Network(net["name"], net["segmentation_id"], net["transit_vni"]))
    eps = data.get("endpoints") or []
    if not isinstance(eps, list):
        raise ValidationError("endpoints", eps, "must be a list")
    # Tenant data is judged per endpoint: a malformed one is left out with
    # its reason, and the rest of the site stands.
    endpoints, rejected = [], []
    for i, ep in enumerate(eps):
        try:
            endpoints.append(endpoint_from_dict(site.name, ep, f"endpoints[{i}]"))
        except ValidationError as exc:
            raw = ep if isinstance(ep, dict) else {}
            rejected.append(Rejected(site.name, str(raw.get("network", "")),
                                     str(raw.get("port_id", f"endpoints[{i}]")),
                                     str(raw.get("mac", "")), str(exc)))
    vteps = data.get("vteps") or []
    if not isinstance(vteps, list):
        raise ValidationError("vteps", vteps, "must be a list of the site's compute VTEPs")
    return SiteSnapshot(site, tuple(networks), tuple(endpoints), tuple(rejected),
                        vteps=tuple(vteps))


def site_to_dict(snap: SiteSnapshot) -> dict:
    gw = snap.site.gateway
    return {
        "site": snap.site.name,
        "gateway": {"host": gw.host, "tunnel_ip": gw.tunnel_ip, "transit_ip": gw.transit_ip,
                    **({"nodes": list(gw.nodes)} if gw.nodes else {})},
        "networks": [dataclasses.asdict(n) for n in snap.networks],
        "endpoints": [endpoint_to_dict(ep) for ep in snap.endpoints],
        **({"vteps": list(snap.vteps)} if snap.vteps else {}),
    }


def load_text(path: Path, text: str):
    """YAML for files people write; JSON (same schema) for generated ones:
    libyaml needs seconds per 10k endpoints where json needs milliseconds."""
    if path.suffix == ".json":
        return json.loads(text)
    return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def atomic_write(path: Path, text: str) -> None:
    """Write ``text`` so that readers see the old or the new file, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _mtime(path: Path) -> tuple:
    try:
        st = path.stat()
    except FileNotFoundError:
        return (str(path), None)
    return (str(path), st.st_mtime_ns, st.st_size, st.st_ino)


class FileInventory:
    """One site's inventory file and, beside it, its remote-port registry.

    ``site.yaml`` holds the site; ``site.remote-ports.json`` holds the remote
    ports gateways registered there, each tagged with the registering
    gateway's host (its owner).
    """

    def __init__(self, path: str | os.PathLike, registry_path: str | os.PathLike | None = None,
                 owner: str | None = None):
        self.path = Path(path)
        self.registry_path = Path(registry_path) if registry_path else self.path.with_name(
            self.path.stem + ".remote-ports.json")
        self.owner = owner
        self._host: str | None = None  # gateway host of the last good snapshot

    # -- source -----------------------------------------------------------
    def version(self) -> object:
        return _mtime(self.path)

    def snapshot(self) -> SiteSnapshot:
        try:
            text = self.path.read_text()
        except OSError as exc:
            raise SourceError(f"cannot read site file {self.path}: {exc.strerror}") from exc
        try:
            data = load_text(self.path, text)
        except (yaml.YAMLError, ValueError) as exc:
            raise SourceError(f"{self.path}: not valid {self.path.suffix[1:].upper() or 'YAML'}: "
                              f"{exc}") from exc
        try:
            snap = parse_site(data, str(self.path))
        except ValidationError as exc:
            raise ValidationError(f"{self.path}: {exc.field}", exc.value, exc.reason) from None
        self._host = snap.site.gateway.host
        return snap

    # -- registry ---------------------------------------------------------
    def registry_version(self) -> object:
        return _mtime(self.registry_path)

    def all_remote_ports(self) -> list[RemotePort]:
        """Every remote port in the registry, whoever registered it."""
        try:
            data = json.loads(self.registry_path.read_text())
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as exc:
            raise SourceError(f"cannot read registry {self.registry_path}: {exc}") from exc
        ports = []
        for i, item in enumerate(data.get("remote_ports", [])):
            origin = endpoint_from_dict(item["origin_site"], item["origin"],
                                        f"{self.registry_path}: remote_ports[{i}]")
            ports.append(RemotePort(origin, item["vtep"], item.get("gateway_host", ""),
                                    tuple(item.get("mobile_macs", ()))))
        return ports

    def remote_ports(self) -> list[RemotePort]:
        """Those registered by this site's gateway (``owner``, by default the
        gateway host named in the last good read of the site file)."""
        owner = self.owner or self._host or self.snapshot().site.gateway.host
        return [p for p in self.all_remote_ports() if p.gateway_host == owner]

    @contextlib.contextmanager
    def _locked(self):
        self.registry_path.parent.mkdir(parents=True, exist_ok=True)
        lock = self.registry_path.with_name(self.registry_path.name + ".lock")
        with open(lock, "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield

    def _rewrite(self, change) -> None:
        with self._locked():
            ports = {p.key + (p.gateway_host,): p for p in self.all_remote_ports()}
            change(ports)
            body = {"remote_ports": [
                {"origin_site": p.origin.site, "origin": endpoint_to_dict(p.origin),
                 "vtep": p.vtep, "gateway_host": p.gateway_host,
                 **({"mobile_macs": list(p.mobile_macs)} if p.mobile_macs else {})}
                for _, p in sorted(ports.items())]}
            atomic_write(self.registry_path, json.dumps(body, indent=1) + "\n")

    def register(self, ports: Iterable[RemotePort]) -> dict[tuple, str]:
        ports = list(ports)

        def change(current):
            for port in ports:
                current[port.key + (port.gateway_host,)] = port
        self._rewrite(change)
        return {}

    def unregister(self, ports: Iterable[RemotePort]) -> dict[tuple, str]:
        ports = list(ports)

        def change(current):
            for port in ports:
                current.pop(port.key + (port.gateway_host,), None)
        self._rewrite(change)
        return {}

"""A site read from, and remote ports registered in, a Neutron API.

:class:`NeutronSite` mirrors :class:`gwagent.control.sources.FileInventory`:
it is a *source* (``snapshot()``, ``version()``) for any site, and for the
local site also the *registry* of the remote ports this gateway owns
(``remote_ports()``, ``register()``, ``unregister()``).

Clouds come from ``clouds.yaml`` through openstacksdk, so ``--cloud NAME``
means what it means to every OpenStack user. A noauth Neutron (tests, lab)
is a cloud entry with ``auth_type: none`` and ``auth: {endpoint: URL}``; for
such clouds the requests carry ``X-Roles: admin,service`` (setting
``binding:profile`` needs the service role under the default policy).

What is read
    Stretched networks are identified by their Neutron network ID, from the
    operator's configuration: something only the operator controls. A
    name or a tag would let any tenant who may create a network take a
    stretched network over (a network of another project named "red" once
    emptied a gateway's remote ports). Each site keeps its own segmentation
    ID (``provider:segmentation_id``); only VXLAN networks qualify. For every
    port on them: MAC, fixed IPs, allowed address pairs (with their MACs) and
    the VTEP of its host, the ``tunneling_ip`` of the L2 agent on
    ``binding:host_id``. Remote ports (``device_owner`` or profile of
    gwagent) are never endpoints. Unbound ports have no VTEP and are not
    endpoints; malformed data (no MAC, an IP outside every subnet, a host
    without an L2 agent) leaves that port out, with its reason logged and
    listed in the snapshot's ``rejected``, never the whole read. A MAC in
    the allowed address pairs of several ports is legal (a VRRP virtual
    MAC: mobile). Neutron unreachable or answering errors raises
    ``SourceError``.

What is written
    A remote port has the origin's MAC, IPs (``fixed_ips`` on the local
    network's subnets) and allowed address pairs; ``binding:host_id`` is the
    gateway host and ``binding:profile`` is ``{"gwagent": {"tunnel_ip",
    "gateway", "origin_site", "origin_port", "origin_vtep", "network"}}``,
    which the ``gwagent`` ML2 driver binds and publishes by L2 population.
    ``device_owner`` is ``network:gwagent_remote`` and ``device_id``
    ``gwagent:<host>`` marks the owner (both filterable server-side; tags are
    not used because Neutron drops them on bulk create). A port is found
    again by its origin (profile), so a restart never duplicates; only ports
    carrying all three owner marks (device_owner, device_id, the profile's
    ``gateway``) are ever changed or deleted.
    Creation is in bulk (``POST /v2.0/ports`` with ``{"ports": [...]}``); a
    failed bulk (atomic in Neutron) is retried port by port so that one
    conflict (a MAC or IP used by a local port) fails only its own port.
    ``register()`` and ``unregister()`` work from the owned-port listing the
    preceding ``remote_ports()`` made (once each, within ``REUSE_SECONDS``)
    instead of listing every owned port again; updates made from it carry
    ``If-Match: revision_number=N``, so a port changed meanwhile is read
    again rather than overwritten from a stale copy.

Changes by events, listings as audit
    With a notification feed (:mod:`gwagent.neutron.notifications`, the
    cloud's own ``port.*.end`` notifications), the source lists once and
    then reads only the ports it heard changed, by ID (``GET
    /ports?id=..&id=..``); ``version()`` costs no request. The registry
    keeps the owned ports it listed, changed by its own writes (their
    answers), and reads again, by ID, only an owned port someone else
    changed (a notification that is not the echo of a write of ours: a
    newer revision, or a delete of a port it still holds). Full listings
    stay as the audit: every ``audit_interval`` seconds, after the feed
    (re)connected (events may have been lost meanwhile), after a network or
    subnet changed, and after a write of ours failed (a bulk create that
    answered 500 once left its ports in Neutron, unbound and never
    notified: the cache would have retried them as new, 409 after 409). Without a feed, or while it is not connected, every
    read lists, as before: slower, never wrong.

Cost
    Neutron spends about 0.1 s of CPU per port created or updated (ML2 port
    create: ~170 SQL statements in ~25 transactions per port, IPAM, binding,
    the OVO loads of every port extension), the same in bulk as one by one;
    a listing costs about 1.5 ms per port. So the client keeps its requests
    few (bulk creates, one listing per purpose) and narrow where it can.
"""
from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import logging
import threading
import time
from typing import Iterable, Mapping

from gwagent.control.sources import SourceError
from gwagent.extras import require
from gwagent.model import (AddressPair, Endpoint, Network, Rejected, RemotePort, Site,
                           SiteSnapshot, ValidationError)

LOG = logging.getLogger(__name__)

DEVICE_OWNER = "network:gwagent_remote"
PROFILE_KEY = "gwagent"
BULK_SIZE = 250
#: A bulk create costs Neutron 0.1-0.15 s of CPU a port (measured, Neutron
#: 29), and a single API worker answers no one else meanwhile: a request of
#: BULK_SIZE ports outlasted the read deadline (it timed out, the ports were
#: made all the same, and the health probe failed behind it). So each
#: request carries what Neutron's own pace, measured on the last one, does
#: in BULK_SHARE of the read deadline, between 1 and ``bulk_size`` ports,
#: starting with FIRST_BULK.
BULK_SHARE = 0.3
FIRST_BULK = 10
#: How long the owned-port listing of remote_ports() may stand in for a new
#: one in the register()/unregister() that follow it (once each).
REUSE_SECONDS = 30.0
#: IDs per ``GET /ports?id=..`` (the URL stays well under 8 KiB)
BY_ID = 100
#: Seconds between full listings when notifications are heard
AUDIT_INTERVAL = 300.0
#: Seconds between the narrow reads of the networks that keep the API's
#: health known when notifications are heard ([neutron] poll_interval)
PROBE_INTERVAL = 0.5
PORT_FIELDS = ("id", "network_id", "mac_address", "fixed_ips", "allowed_address_pairs",
               "binding:host_id", "binding:profile", "binding:vif_type", "device_owner",
               "device_id", "status", "revision_number", "project_id")
#: A remote port in these states is bound by no one unless it is updated
UNBOUND = ("unbound", "binding_failed")


def owner_device_id(host: str) -> str:
    """The ``device_id`` of every remote port gateway ``host`` owns."""
    return f"gwagent:{host}"


class NeutronError(SourceError):
    """Neutron answered with an error; ``status`` is the HTTP status."""

    def __init__(self, status: int, message: str):
        self.status = status
        super().__init__(message)


class NeutronClient:
    """The one place that talks HTTP to a Neutron: JSON in and out, every
    failure turned into :class:`SourceError` with a message in words."""

    #: gwagent.metrics.Metrics of the agent process (every client counts
    #: its requests there), when [metrics] serves them
    metrics = None

    def __init__(self, cloud: str, clouds_file: str | None = None,
                 timeout: float | tuple[float, float] = (3.0, 10.0), connection=None):
        if connection is None:  # here, not at the first request: gwagent run stops at once
            require("neutron", "openstack", "keystoneauth1",
                    feature="the Neutron source (source = neutron)")
        self.cloud = cloud
        self.clouds_file = clouds_file
        # (connect, read) seconds, per request: a hung API fails the call
        # within them, like any other error, with the cloud named.
        self.timeout = timeout if isinstance(timeout, tuple) else (timeout, timeout)
        self._conn = connection

    @property
    def conn(self):
        if self._conn is None:
            self._conn = self._connect()
        return self._conn

    def _connect(self):
        import openstack
        from openstack import exceptions as os_exc
        try:
            if self.clouds_file:
                from openstack.config import loader
                region = loader.OpenStackConfig(config_files=[self.clouds_file]).get_one(
                    cloud=self.cloud)
                conn = openstack.connection.Connection(config=region)
            else:
                conn = openstack.connect(cloud=self.cloud)
        except os_exc.SDKException as exc:
            raise SourceError(f"cloud {self.cloud!r}: {exc}") from exc
        conn.session.timeout = self.timeout[1]  # for what the SDK sends itself
        if conn.config.config.get("auth_type") in ("none", "noauth"):
            conn.session.additional_headers = {"X-Roles": "admin,service"}
        return conn

    def request(self, method: str, path: str, body: dict | None = None,
                params: Mapping | None = None, headers: Mapping | None = None) -> dict:
        from keystoneauth1 import exceptions as ks_exc
        from openstack import exceptions as os_exc
        start, status = time.monotonic(), "error"
        try:
            resp = self.conn.network.request(path, method, json=body, params=params,
                                             headers=dict(headers) if headers else None,
                                             raise_exc=False, timeout=self.timeout)
            status = str(resp.status_code)
        except (ks_exc.ClientException, os_exc.SDKException) as exc:
            self._conn = None if isinstance(exc, ks_exc.DiscoveryFailure) else self._conn
            raise SourceError(f"Neutron of cloud {self.cloud!r} unreachable "
                              f"({method} {path}): {exc}") from exc
        finally:
            if self.metrics is not None:
                self.metrics.requested(self.cloud, method, status, time.monotonic() - start)
        if resp.status_code >= 400:
            try:
                err = resp.json().get("NeutronError", {})
                text = err.get("message") or resp.text
            except ValueError:
                text = resp.text
            raise NeutronError(resp.status_code,
                               f"Neutron of cloud {self.cloud!r} refused {method} {path}: "
                               f"{resp.status_code} {text.strip()[:500]}")
        if resp.status_code == 204 or not resp.content:
            return {}
        try:
            return resp.json()
        except ValueError as exc:
            raise SourceError(f"Neutron of cloud {self.cloud!r} answered {method} {path} "
                              f"with something that is not JSON") from exc

    def list(self, collection: str, **params) -> list[dict]:
        """GET a collection, following pagination links."""
        items: list[dict] = []
        path = f"/{collection}"
        while True:
            data = self.request("GET", path, params=params)
            items.extend(data.get(collection, []))
            nxt = [link for link in data.get(f"{collection}_links", ())
                   if link.get("rel") == "next"]
            if not nxt:
                return items
            marker = nxt[0]["href"].split("marker=")[-1].split("&")[0]
            params = dict(params, marker=marker)


@dataclasses.dataclass(frozen=True)
class _LocalNet:
    id: str
    name: str
    project_id: str
    segmentation_id: int
    cidrs: tuple


class NeutronSite:
    """One site in its Neutron: source of its endpoints and, when ``site``'s
    gateway is this gateway, registry of the remote ports it owns.

    ``networks`` maps each stretched network's name to its transit VNI;
    ``network_ids`` maps the same names to the Neutron network IDs that
    carry them in this site (module docstring: never a name).
    """

    def __init__(self, client: NeutronClient, site: Site, networks: Mapping[str, int],
                 network_ids: Mapping[str, str], bulk_size: int = BULK_SIZE,
                 feed=None, audit_interval: float = AUDIT_INTERVAL,
                 probe_interval: float = PROBE_INTERVAL, clock=time.monotonic):
        missing = sorted(set(networks) - set(network_ids))
        if missing:
            raise ValueError(f"site {site.name}: no Neutron network ID for stretched "
                             f"network(s) {', '.join(missing)}")
        self.client = client
        self.site = site
        self.networks = dict(networks)
        self.network_ids = {name: network_ids[name] for name in networks}
        self.bulk_size = bulk_size
        self._per_port: float | None = None  # Neutron's seconds a port in a bulk create
        self._listed: tuple | None = None   # (monotonic time, owned ports, uses)
        #: owned ports whose binding repair_bindings() has not looked at:
        #: those of the last listing, and the answers of our writes since
        self._unchecked: dict[str, dict] = {}
        #: gwagent.neutron.notifications.Feed of this cloud, or None
        self.feed, self.audit_interval, self.clock = feed, audit_interval, clock
        self.probe_interval = probe_interval
        self._probed: float | None = None
        self._lock = threading.Lock()
        # what the last full listing and the events since said (with a live feed)
        self._nets: dict[str, _LocalNet] | None = None
        self._vtep_of: dict[str, str] = {}
        self._ports: dict[str, tuple[dict, object]] | None = None  # id -> (port, endpoint)
        # the same ports' endpoints and those left out, for the snapshot
        self._eps: dict[str, Endpoint] = {}
        self._left_out: dict[str, Rejected] = {}
        # the last snapshot, and what each port changed since was then
        # (None: read whole since: compared, not said)
        self._snap: SiteSnapshot | None = None
        self._since: dict[str, object] | None = None
        self._pending: dict[str, tuple[bool, dict]] = {}
        self._full: str | None = "first read"
        self._next_audit = 0.0
        self._token = 0
        self._owned_cache: dict[str, dict] | None = None
        self._owned_pending: dict[str, tuple[bool, dict]] = {}
        self._owned_full: str | None = "first read"
        self._owned_next_audit = 0.0
        self._owned_token = 0
        #: counters for status
        self.reads = {"full": 0, "by_id": 0, "ports_by_id": 0, "owned_full": 0,
                      "owned_by_id": 0, "echoes": 0, "probes": 0}
        self.last_full_reason: str | None = None

    @property
    def owner(self) -> str:
        return self.site.gateway.host

    # -- networks ------------------------------------------------------------
    def _stretched(self) -> dict[str, _LocalNet]:
        """{stretched name: local network}, by the configured IDs; a network
        that is not VXLAN is skipped with a logged reason; a missing one
        fails the whole read (a snapshot without it would withdraw every
        remote port on it)."""
        fields = ["id", "name", "project_id", "provider:network_type",
                  "provider:segmentation_id", "subnets"]
        found = {n["id"]: n for n in self.client.list(
            "networks", id=sorted(self.network_ids.values()), fields=fields)}
        result = {}
        for name in sorted(self.networks):
            net = found.get(self.network_ids[name])
            if net is None:
                raise SourceError(f"site {self.site.name}: stretched network {name!r} (Neutron "
                                  f"network {self.network_ids[name]}) not found in Neutron")
            if net.get("provider:network_type") != "vxlan":
                LOG.error("site %s: network %r (%s) is of type %r; only vxlan networks can "
                          "be stretched", self.site.name, name, net["id"],
                          net.get("provider:network_type"))
                continue
            result[name] = _LocalNet(net["id"], name, net.get("project_id") or "",
                                     int(net["provider:segmentation_id"]), ())
        if result:
            subnets = self.client.list("subnets", network_id=[n.id for n in result.values()],
                                       fields=["network_id", "cidr"])
            for name, net in list(result.items()):
                cidrs = tuple(ipaddress.ip_network(s["cidr"], strict=False)
                              for s in subnets if s["network_id"] == net.id)
                result[name] = dataclasses.replace(net, cidrs=cidrs)
        return result

    # -- events --------------------------------------------------------------
    def events_live(self) -> bool:
        """Whether this cloud's notifications are heard now (then reads
        are by ID and ``version()`` is free)."""
        return self.feed is not None and self.feed.live()

    def _drain(self) -> None:
        """Sort what the feed heard: ports of the source, owned ports of
        the registry (echoes of our own writes dropped)."""
        if self.feed is None:
            return
        if self.feed.ident is None:
            self.feed.start()  # at the first read: nothing runs for a source never read
        heard = self.feed.take()
        if not heard:
            return
        with self._lock:
            if heard.full:
                self._full = self._owned_full = heard.full
                self._token += 1
                self._owned_token += 1
            ours = {n.id for n in self._nets.values()} if self._nets is not None else None
            for pid, (deleted, port) in heard.ports.items():
                if not is_remote(port):
                    if (ours is not None and port.get("network_id") not in ours
                            and pid not in (self._ports or {})):
                        continue  # a port of another network: not ours to read
                    self._pending[pid] = (deleted, port)
                    self._token += 1
                elif _owned_by(port, self.owner) or pid in (self._owned_cache or {}):
                    if self._echo(pid, deleted, port):
                        self.reads["echoes"] += 1
                        continue
                    self._owned_pending[pid] = (deleted, port)
                    self._owned_token += 1

    def _echo(self, pid: str, deleted: bool, port: dict) -> bool:
        """A notification of an owned port that tells nothing new: a write
        of ours whose answer is already in the cache."""
        cache = self._owned_cache
        if cache is None:
            return False
        if deleted:
            return pid not in cache
        have = cache.get(pid)
        rev = port.get("revision_number")
        return (have is not None and rev is not None
                and have.get("revision_number") is not None and rev <= have["revision_number"])

    def _probe(self) -> None:
        """One narrow read of the stretched networks while events are heard:
        a cloud whose API fails shows as failing within a poll, not at the
        next change or audit, and a network whose segmentation ID moved
        (its events are not kept) is read whole."""
        self.reads["probes"] += 1
        found = {n["id"]: n.get("provider:segmentation_id") for n in self.client.list(
            "networks", id=sorted(self.network_ids.values()),
            fields=["id", "provider:segmentation_id"])}
        with self._lock:
            known = {n.id: n.segmentation_id for n in (self._nets or {}).values()}
            if (set(self.network_ids.values()) - set(found)
                    or any(found.get(i) != seg for i, seg in known.items())):
                self._full = self._full or "a stretched network changed"

    def events_status(self) -> dict | None:
        """For status: the feed and what reads it spared."""
        if self.feed is None:
            return None
        return {**self.feed.status(), "reads": dict(self.reads),
                "last_full_reason": self.last_full_reason,
                "audit_interval": self.audit_interval}

    def close(self) -> None:
        if self.feed is not None:
            self.feed.stop()

    # -- source --------------------------------------------------------------
    def version(self) -> object:
        """With notifications heard: a token that moves with what was heard,
        and every ``probe_interval`` one narrow read of the stretched
        networks (the API's health; no port is listed). Else a token over every port's revision on the
        stretched networks (one narrow listing); agent changes are caught
        by the periodic resync."""
        if self.events_live():
            self._drain()
            now = self.clock()
            if self._probed is None or now - self._probed >= self.probe_interval:
                try:
                    self._probe()
                except BaseException:
                    with self._lock:  # the read after it is whole: it proves the API back
                        self._full = self._full or "a read of the API failed"
                    raise
                self._probed = now
            with self._lock:
                if self._full or self._pending or self.clock() >= self._next_audit:
                    return object()  # read now
                return ("events", self._token)
        nets = self._stretched()
        ports = self.client.list("ports", network_id=[n.id for n in nets.values()],
                                 fields=["id", "revision_number"]) if nets else []
        digest = hashlib.sha1()
        for item in sorted((n.id, n.segmentation_id) for n in nets.values()):
            digest.update(repr(item).encode())
        for item in sorted((p["id"], p.get("revision_number")) for p in ports):
            digest.update(repr(item).encode())
        return digest.hexdigest()

    def snapshot(self) -> SiteSnapshot:
        self._drain()
        live = self.events_live()
        with self._lock:
            pending, self._pending = self._pending, {}
            why = self._full or ("audit" if self.clock() >= self._next_audit else None)
            self._full = None
        try:
            if not live or self._ports is None or why:
                self._read_all(why if live else None)
            elif pending:
                self._read_by_id(pending)
        except BaseException:
            with self._lock:  # heard, not read: read again next time
                self._full = self._full or why
                self._pending = {**pending, **self._pending}
            raise
        return self._built()

    def _read_all(self, why: str | None) -> None:
        nets = self._stretched()
        vteps = self._vteps() if nets else {}
        ports = self.client.list("ports", network_id=[n.id for n in nets.values()],
                                 fields=list(PORT_FIELDS)) if nets else []
        by_id = {net.id: net for net in nets.values()}
        kept = {}
        for port in ports:
            if is_remote(port) or port.get("network_id") not in by_id:
                continue
            kept[port["id"]] = (port, self._endpoint(port, by_id[port["network_id"]], vteps))
        self._nets, self._vtep_of, self._ports = nets, vteps, kept
        self._eps = {pid: ep for pid, (_, ep) in kept.items() if isinstance(ep, Endpoint)}
        self._left_out = {pid: ep for pid, (_, ep) in kept.items() if isinstance(ep, Rejected)}
        self._since = None
        self._next_audit = self.clock() + self.audit_interval
        self.reads["full"] += 1
        if why:
            self.last_full_reason = why
            LOG.info("site %s: full listing of its ports (%s): %d ports", self.site.name,
                     why, len(kept))

    def _read_by_id(self, pending: Mapping[str, tuple[bool, dict]]) -> None:
        """Read the ports heard changed, by ID: one request per ``BY_ID``."""
        by_net = {net.id: net for net in self._nets.values()}
        ids = sorted(pid for pid, (deleted, port) in pending.items()
                     if not deleted and (port.get("network_id") in by_net
                                         or not port.get("network_id")
                                         or pid in self._ports))
        found = {p["id"]: p for p in self._by_id(ids)}
        if any((p.get("binding:host_id") or "") not in self._vtep_of
               and p.get("binding:host_id") for p in found.values()):
            self._vtep_of = self._vteps()  # a host never seen: its agent's VTEP
        for pid in pending:
            port = found.get(pid)
            if self._since is not None and pid not in self._since:
                self._since[pid] = self._eps.get(pid)
            ep = None
            if port is None or is_remote(port) or port.get("network_id") not in by_net:
                self._ports.pop(pid, None)
            else:
                ep = self._endpoint(port, by_net[port["network_id"]], self._vtep_of)
                self._ports[pid] = (port, ep)
            for kind, into in ((Endpoint, self._eps), (Rejected, self._left_out)):
                if isinstance(ep, kind):
                    into[pid] = ep
                else:
                    into.pop(pid, None)
        self.reads["by_id"] += 1
        self.reads["ports_by_id"] += len(ids)

    def _by_id(self, ids: list[str]) -> list[dict]:
        out: list[dict] = []
        for start in range(0, len(ids), BY_ID):
            out += self.client.list("ports", id=ids[start:start + BY_ID],
                                    fields=list(PORT_FIELDS))
        return out

    def _built(self) -> SiteSnapshot:
        nets = self._nets or {}
        networks = tuple(Network(name, net.segmentation_id, self.networks[name])
                         for name, net in sorted(nets.items()))
        endpoints, rejected = tuple(self._eps.values()), tuple(self._left_out.values())
        vteps = tuple(self._vtep_of.values())
        base, since = self._snap, self._since
        if base is not None and since is not None:
            # what the ports read by ID changed: the gateway need not look
            eps = self._eps
            gone = [was for pid, was in since.items() if was is not None and eps.get(pid) is not was]
            came = [eps[pid] for pid, was in since.items() if pid in eps and eps[pid] is not was]
            snap = SiteSnapshot.after(base, networks, endpoints, gone, came, rejected, vteps)
        else:
            snap = SiteSnapshot(self.site, networks, endpoints, rejected, vteps=vteps)
        self._snap, self._since = snap, {}
        return snap

    def _vteps(self) -> dict[str, str]:
        vteps: dict[str, str] = {}
        for agent in self.client.list("agents", fields=["host", "configurations", "alive"]):
            tip = (agent.get("configurations") or {}).get("tunneling_ip")
            if tip and (agent.get("alive", True) or agent["host"] not in vteps):
                vteps[agent["host"]] = tip
        return vteps

    def _endpoint(self, port: dict, net: _LocalNet, vteps: dict) -> Endpoint | Rejected | None:
        pid = port.get("id", "?")
        where = f"site {self.site.name}: port {pid} on {net.name}"
        mac = port.get("mac_address")

        def reject(reason: str) -> Rejected:
            LOG.warning("%s: left out: %s", where, reason)
            return Rejected(self.site.name, net.name, pid, str(mac or ""), reason)

        host = port.get("binding:host_id") or ""
        if not host:
            LOG.debug("%s: unbound, no VTEP; not an endpoint", where)
            return None
        vtep = vteps.get(host)
        if not vtep:
            return reject(f"host {host!r} has no L2 agent with a tunneling_ip")
        if not mac:
            return reject("no MAC address")
        ips = []
        for fixed in port.get("fixed_ips") or ():
            addr = fixed.get("ip_address")
            try:
                parsed = ipaddress.ip_address(addr)
            except (TypeError, ValueError):
                LOG.warning("%s: fixed IP %r is not an IP address; ignored", where, addr)
                continue
            if not any(parsed in cidr for cidr in net.cidrs):
                LOG.warning("%s: fixed IP %s is outside every subnet of the network; "
                            "ignored", where, addr)
                continue
            ips.append(str(parsed))
        pairs = [{"ip_address": pair.get("ip_address"),
                  "mac_address": (pair.get("mac_address") or mac).lower()}
                 for pair in port.get("allowed_address_pairs") or ()]
        try:
            return Endpoint(site=self.site.name, network=net.name, mac=mac, vtep=vtep,
                            ips=tuple(_sorted_ips(ips)),
                            allowed_address_pairs=tuple(_sorted_pairs(
                                AddressPair(p["ip_address"], p["mac_address"]) for p in pairs)),
                            port_id=pid)
        except ValidationError as exc:
            return reject(str(exc))

    # -- registry ------------------------------------------------------------
    def _owned(self) -> list[dict]:
        """Every port this gateway owns: all three owner marks present."""
        ports = self.client.list("ports", device_owner=DEVICE_OWNER,
                                 device_id=owner_device_id(self.owner),
                                 fields=list(PORT_FIELDS))
        return [p for p in ports if _owned_by(p, self.owner)]

    def _owned_ports(self) -> list[dict]:
        """The owned ports: with notifications heard, the cache (what the
        last listing found, changed by our writes and by the owned ports
        heard changed by someone else, read again by ID); a listing when
        there is no feed, the feed was down, or the audit is due."""
        self._drain()
        live = self.events_live()
        with self._lock:
            pending, self._owned_pending = self._owned_pending, {}
            why = self._owned_full or ("audit" if self.clock() >= self._owned_next_audit
                                       else None)
            self._owned_full = None
        try:
            if not live or self._owned_cache is None or why:
                owned = self._owned()
                with self._lock:
                    self._owned_cache = {p["id"]: p for p in owned}
                self._owned_next_audit = self.clock() + self.audit_interval
                self.reads["owned_full"] += 1
                if live:
                    LOG.info("site %s: full listing of its remote ports (%s): %d ports",
                             self.site.name, why, len(owned))
                return owned
            if pending:
                found = {p["id"]: p for p in self._by_id(sorted(
                    pid for pid, (deleted, _) in pending.items() if not deleted))}
                with self._lock:
                    for pid in pending:
                        port = found.get(pid)
                        if port is not None and _owned_by(port, self.owner):
                            self._owned_cache[pid] = port
                        else:
                            self._owned_cache.pop(pid, None)
                self.reads["owned_by_id"] += 1
                LOG.info("site %s: %d remote ports of ours changed by someone else; read "
                         "again", self.site.name, len(pending))
            with self._lock:
                return list(self._owned_cache.values())
        except BaseException:
            with self._lock:
                self._owned_full = self._owned_full or why
                self._owned_pending = {**pending, **self._owned_pending}
            raise

    def _cached(self, port: dict | None = None, gone: str | None = None) -> None:
        """Keep the owned-port cache in step with a write of ours."""
        with self._lock:
            if self._owned_cache is None:
                return
            if port is not None and port.get("id"):
                self._owned_cache[port["id"]] = port
                self._unchecked[port["id"]] = port
            if gone is not None:
                self._owned_cache.pop(gone, None)
                self._unchecked.pop(gone, None)

    def registry_version(self) -> object:
        """A token that moves when the owned ports may have changed behind
        our back: with notifications heard, what was heard (no request);
        else None (look every time)."""
        if not self.events_live():
            return None
        self._drain()
        with self._lock:
            if (self._owned_full or self._owned_pending or self._owned_cache is None
                    or self.clock() >= self._owned_next_audit):
                return object()
            return ("events", self._owned_token)

    def _owned_again(self, use: str) -> tuple[list[dict], bool]:
        """The owned ports for ``register``/``unregister``: the listing that
        :meth:`remote_ports` just made, once per use and for at most
        ``REUSE_SECONDS`` (the caller read it to decide what to change, so
        it is what the change is about), else a new listing. Returns
        (ports, reused); updates of reused ports are conditional on their
        revision (``If-Match``), so a port changed meanwhile is re-read."""
        if self.events_live() and self._owned_cache is not None:
            with self._lock:
                return list(self._owned_cache.values()), True
        listed = self._listed
        if (listed is not None and use not in listed[2]
                and time.monotonic() - listed[0] < REUSE_SECONDS):
            listed[2].add(use)
            return listed[1], True
        return self._owned(), False

    def remote_ports(self) -> list[RemotePort]:
        owned = self._owned_ports()
        self._listed = (time.monotonic(), owned, set())
        self._unchecked = {p["id"]: p for p in owned if p.get("id")}
        result = []
        for port in owned:
            prof = _profile(port)
            try:
                origin = Endpoint(
                    site=prof.get("origin_site"), network=prof.get("network"),
                    mac=port.get("mac_address"), vtep=prof.get("origin_vtep"),
                    ips=tuple(_sorted_ips(f["ip_address"] for f in port.get("fixed_ips") or ())),
                    allowed_address_pairs=tuple(_sorted_pairs(
                        AddressPair(p["ip_address"], p.get("mac_address") or port["mac_address"])
                        for p in port.get("allowed_address_pairs") or ())),
                    port_id=prof.get("origin_port") or "")
                result.append(RemotePort(origin, prof.get("tunnel_ip"), self.owner,
                                         tuple(prof.get("mobile_macs") or ())))
            except (ValidationError, KeyError, TypeError) as exc:
                LOG.warning("site %s: remote port %s has a malformed gwagent profile (%s); "
                            "it will be replaced", self.site.name, port.get("id"), exc)
        return result

    def repair_bindings(self) -> int:
        """Ask Neutron to bind again every owned port of the last listing
        that is not bound (``UNBOUND``): ML2 tries a binding at each update
        of a port and gives up when its commits conflict, and an agentless
        port is updated by no one else. A PUT of its own host makes ML2 try
        again. Returns how many were asked. Each port is looked at once: in
        the listing that found it, or in the answer of our write to it."""
        unchecked, self._unchecked, asked = self._unchecked, {}, 0
        for port in unchecked.values():
            if port.get("binding:vif_type") in UNBOUND and port.get("binding:host_id") == self.owner:
                try:
                    answer = self.client.request("PUT", f"/ports/{port['id']}",
                                                 {"port": {"binding:host_id": self.owner}})
                    self._cached(answer.get("port"))
                    asked += 1
                    LOG.info("site %s: remote port %s was %s; asked Neutron to bind it again",
                             self.site.name, port["id"], port["binding:vif_type"])
                except SourceError as exc:
                    LOG.warning("site %s: remote port %s is %s and could not be bound again: %s",
                                self.site.name, port["id"], port["binding:vif_type"], exc)
                    self._unsure([exc], "a binding repair of ours failed")
        return asked

    def _body(self, rp: RemotePort, net: _LocalNet) -> dict:
        o = rp.origin
        return {
            "network_id": net.id,
            "project_id": net.project_id,
            "name": f"gwagent-remote:{o.site}:{o.port_id or o.mac}"[:255],
            "description": f"remote port of site {o.site} behind gateway {self.owner}",
            "mac_address": o.mac,
            "fixed_ips": [{"ip_address": ip} for ip in o.ips],
            "allowed_address_pairs": [{"ip_address": p.ip_address, "mac_address": p.mac_address}
                                      for p in o.allowed_address_pairs],
            "device_owner": DEVICE_OWNER,
            "device_id": owner_device_id(self.owner),
            "binding:host_id": self.owner,
            "binding:profile": {PROFILE_KEY: {
                "tunnel_ip": rp.vtep, "gateway": self.owner, "origin_site": o.site,
                "origin_port": o.port_id, "origin_vtep": o.vtep, "network": o.network,
                **({"mobile_macs": list(rp.mobile_macs)} if rp.mobile_macs else {})}},
        }

    def register(self, ports: Iterable[RemotePort]) -> dict[tuple, str]:
        ports = list(ports)
        if not ports:
            return {}
        nets = self._nets if self.events_live() and self._nets is not None else self._stretched()
        owned, reused = self._owned_again("register")
        existing = {_raw_key(p): p for p in owned}
        errors: dict[tuple, str] = {}
        creates: list[tuple[RemotePort, dict]] = []
        for rp in ports:
            net = nets.get(rp.origin.network)
            if net is None:
                errors[rp.key] = (f"network {rp.origin.network!r} is not stretched in site "
                                  f"{self.site.name} (not found in its Neutron)")
                continue
            body = self._body(rp, net)
            cur = existing.get(rp.key)
            if cur is None:
                creates.append((rp, body))
                continue
            try:
                if self._update(cur, body, net, conditional=reused):
                    creates.append((rp, body))
            except SourceError as exc:
                errors[rp.key] = str(exc)
        start = 0
        while start < len(creates):
            chunk = creates[start:start + self.bulk_now()]
            start += len(chunk)
            began = self.clock()
            try:
                answer = self.client.request("POST", "/ports", {"ports": [b for _, b in chunk]})
                self._paced(self.clock() - began, len(chunk))
                for port in answer.get("ports") or ():
                    self._cached(port)
                continue
            except NeutronError as exc:
                if len(chunk) == 1:
                    errors[chunk[0][0].key] = str(exc)
                    continue
            except SourceError as exc:
                # unreachable or no answer in time: nothing more is sent to
                # it in this call (the retry is the registrar's, with its
                # backoff), and the next bulk is smaller
                self._paced(self.client.timeout[1] * 2, len(chunk))
                for rp, _ in creates[start - len(chunk):]:
                    errors[rp.key] = str(exc)
                break
            for rp, body in chunk:  # isolate the failing ones
                try:
                    self._cached(self.client.request("POST", "/ports", {"port": body}).get("port"))
                except SourceError as exc:
                    errors[rp.key] = str(exc)
        self._log_errors(errors, "registered")
        self._unsure(errors, "a write of ours failed")
        return errors

    def bulk_now(self) -> int:
        """How many ports the next bulk create carries (BULK_SHARE)."""
        if self._per_port is None:
            return min(FIRST_BULK, self.bulk_size)
        fits = int(BULK_SHARE * self.client.timeout[1] / self._per_port)
        return max(1, min(self.bulk_size, fits))

    def _paced(self, seconds: float, ports: int) -> None:
        per = seconds / ports
        self._per_port = per if self._per_port is None else (self._per_port + per) / 2

    def _log_errors(self, errors: dict[tuple, str], what: str) -> None:
        """One line a port, or one a reason shared by more than three (a
        bulk request that failed: not 250 lines of the same words)."""
        by_reason: dict[str, list[str]] = {}
        for key, msg in errors.items():
            by_reason.setdefault(msg, []).append("/".join(key))
        for msg, keys in by_reason.items():
            if len(keys) <= 3:
                for key in keys:
                    LOG.warning("site %s: remote port %s not %s: %s", self.site.name, key,
                                what, msg)
            else:
                LOG.warning("site %s: %d remote ports not %s (%s, ...): %s", self.site.name,
                            len(keys), what, ", ".join(keys[:3]), msg)

    def _unsure(self, errors, why: str) -> None:
        """After a failed write, what Neutron holds is not known: a bulk
        create that answers 500 may have made its ports all the same (its
        rollback failed), and no notification says so. The next read of
        the owned ports is a full listing, not the cache."""
        if errors:
            with self._lock:
                self._owned_full = self._owned_full or why

    def _update(self, cur: dict, body: dict, net: _LocalNet, conditional: bool) -> bool:
        """Bring port ``cur`` to ``body``; True if it must be (re)created.
        ``conditional``: ``cur`` may be stale, so the update carries its
        revision and a port changed meanwhile is read again."""
        change = _changes(cur, body)
        if not change:
            return False
        if "mac_address" in change or cur["network_id"] != net.id:
            # Neutron refuses a MAC change on an ACTIVE port: replace it.
            try:
                self.client.request("DELETE", f"/ports/{cur['id']}")
            except NeutronError as exc:
                if exc.status != 404:
                    raise
            self._cached(gone=cur["id"])
            return True
        revision = cur.get("revision_number")
        headers = ({"If-Match": f"revision_number={revision}"}
                   if conditional and revision is not None else None)
        try:
            answer = self.client.request("PUT", f"/ports/{cur['id']}", {"port": change},
                                         headers=headers)
            self._cached(answer.get("port"))
        except NeutronError as exc:
            if not headers or exc.status not in (404, 412):
                raise
            if exc.status == 404:  # gone meanwhile
                self._cached(gone=cur["id"])
                return True
            fresh = self.client.request("GET", f"/ports/{cur['id']}",
                                        params={"fields": list(PORT_FIELDS)})["port"]
            if not _owned_by(fresh, self.owner) or _raw_key(fresh) != _raw_key(cur):
                raise SourceError(f"remote port {cur['id']} changed owner or origin while "
                                  f"being updated; left alone") from exc
            return self._update(fresh, body, net, conditional=False)
        return False

    def unregister(self, ports: Iterable[RemotePort]) -> dict[tuple, str]:
        ports = list(ports)
        if not ports:
            return {}
        existing = {_raw_key(p): p for p in self._owned_again("unregister")[0]}
        errors = {}
        for rp in ports:
            cur = existing.get(rp.key)
            if cur is None:
                continue
            try:
                self.client.request("DELETE", f"/ports/{cur['id']}")
                self._cached(gone=cur["id"])
            except NeutronError as exc:
                if exc.status != 404:
                    errors[rp.key] = str(exc)
                else:
                    self._cached(gone=cur["id"])
            except SourceError as exc:
                errors[rp.key] = str(exc)
        self._unsure(errors, "a delete of ours failed")
        return errors


def is_remote(port: dict) -> bool:
    """A remote port registered by any gateway (never an endpoint)."""
    return port.get("device_owner") == DEVICE_OWNER or bool(_profile(port))


def _owned_by(port: dict, host: str) -> bool:
    """All three owner marks of gateway ``host`` present."""
    return (port.get("device_owner") == DEVICE_OWNER
            and port.get("device_id") == owner_device_id(host)
            and _profile(port).get("gateway") == host)


def _profile(port: dict) -> dict:
    prof = port.get("binding:profile") or {}
    info = prof.get(PROFILE_KEY) if isinstance(prof, dict) else None
    return info if isinstance(info, dict) else {}


def _raw_key(port: dict) -> tuple:
    prof = _profile(port)
    return (prof.get("origin_site"), prof.get("network"),
            prof.get("origin_port") or port.get("mac_address"))


def _sorted_ips(ips: Iterable[str]) -> list[str]:
    return sorted(ips, key=lambda a: (ipaddress.ip_address(a).version, ipaddress.ip_address(a)))


def _sorted_pairs(pairs: Iterable[AddressPair]) -> list[AddressPair]:
    return sorted(pairs, key=lambda p: (p.ip_address, p.mac_address))


def _changes(cur: dict, body: dict) -> dict:
    """The fields of ``body`` that differ from the port ``cur``."""
    change = {}
    if (cur.get("mac_address") or "").lower() != body["mac_address"]:
        change["mac_address"] = body["mac_address"]
    if (sorted(f["ip_address"] for f in cur.get("fixed_ips") or ())
            != sorted(f["ip_address"] for f in body["fixed_ips"])):
        change["fixed_ips"] = body["fixed_ips"]
    have = sorted((p["ip_address"], (p.get("mac_address") or "").lower())
                  for p in cur.get("allowed_address_pairs") or ())
    want = sorted((p["ip_address"], p["mac_address"]) for p in body["allowed_address_pairs"])
    if have != want:
        change["allowed_address_pairs"] = body["allowed_address_pairs"]
    if cur.get("binding:profile") != body["binding:profile"]:
        change["binding:profile"] = body["binding:profile"]
    if cur.get("binding:host_id") != body["binding:host_id"]:
        change["binding:host_id"] = body["binding:host_id"]
    return change

"""Desired state: frozen, validated values.

Every value that enters the pipeline is built here and validated once, at
construction. An invalid snapshot is rejected whole with a
:class:`ValidationError` that names the field and the value; the agent then
keeps the last good snapshot in force. Nothing in this module does I/O.

Vocabulary (see DESIGN.md):

* a *site* is one cloud with its own Neutron and its own gateway;
* a *network* is stretched across sites: each site keeps its own
  segmentation ID, all sites share one transit VNI between gateways;
* an *endpoint* is a port of a site: MAC, IPs, allowed address pairs, and
  the VTEP of the host it is bound to;
* a *remote port* is an endpoint of a peer site registered in the local
  site with the local gateway's tunnel IP as VTEP.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import operator
import re
import socket
import sys
import weakref
from typing import Iterable

VNI_MIN, VNI_MAX = 1, 16777215
_MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


class ValidationError(ValueError):
    """A value was rejected; ``field`` and ``value`` say which."""

    def __init__(self, field: str, value: object, reason: str):
        self.field, self.value, self.reason = field, value, reason
        super().__init__(f"{field}: {value!r}: {reason}")


def mac(value: object, field: str = "mac") -> str:
    """Return ``value`` as a lower-case colon MAC, or raise."""
    text = str(value).strip().lower().replace("-", ":")
    if not _MAC_RE.match(text):
        raise ValidationError(field, value, "not a MAC address (expected aa:bb:cc:dd:ee:ff)")
    if int(text[:2], 16) & 1:
        raise ValidationError(field, value, "multicast MAC cannot be an endpoint")
    if text == "00:00:00:00:00:00":
        raise ValidationError(field, value, "the all-zero MAC is reserved for flooding")
    return sys.intern(text)  # see ip()


def ip(value: object, field: str = "ip", version: int | None = None) -> str:
    """Return ``value`` as a canonical IP address string, or raise."""
    if version != 6 and isinstance(value, str):
        # Fast path for canonical IPv4 (validation runs per endpoint, 100k+).
        try:
            if socket.inet_ntop(socket.AF_INET, socket.inet_pton(socket.AF_INET, value)) == value:
                # Interned, as the backend interns what it reads from the
                # kernel: equal entries then compare by identity.
                return sys.intern(value)
        except OSError:
            pass
    try:
        addr = ipaddress.ip_address(str(value).strip())
    except ValueError:
        raise ValidationError(field, value, "not an IP address") from None
    if version and addr.version != version:
        raise ValidationError(field, value, f"must be an IPv{version} address")
    return str(addr)


def ip_or_cidr(value: object, field: str) -> str:
    """An allowed-address-pair IP may be an address or a prefix."""
    text = str(value).strip()
    if "/" not in text:
        return ip(text, field)
    try:
        return str(ipaddress.ip_network(text, strict=False))
    except ValueError:
        raise ValidationError(field, value, "not an IP address or prefix") from None


def vni(value: object, field: str = "vni") -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValidationError(field, value, f"must be an integer {VNI_MIN}..{VNI_MAX}")
    try:
        number = int(value)
    except ValueError:
        raise ValidationError(field, value, f"must be an integer {VNI_MIN}..{VNI_MAX}") from None
    if not VNI_MIN <= number <= VNI_MAX:
        raise ValidationError(field, value, f"out of range {VNI_MIN}..{VNI_MAX}")
    return number


def name(value: object, field: str) -> str:
    text = str(value) if value is not None else ""
    if not _NAME_RE.match(text):
        raise ValidationError(field, value, "must be 1-63 letters, digits, '-', '_' or '.'")
    return text


@dataclasses.dataclass(frozen=True)
class Gateway:
    """A site's gateway: ``tunnel_ip`` faces its computes, ``transit_ip`` its peers.

    ``nodes``: the gateway nodes that may hold those addresses, when there
    are two (active/standby, VRRP between them); empty for a site's only
    gateway. ``host`` is the gateway as its cloud knows it either way (the
    owner of its remote ports), so a takeover changes nothing there.
    """

    host: str
    tunnel_ip: str
    transit_ip: str
    nodes: tuple[str, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "host", name(self.host, "gateway.host"))
        object.__setattr__(self, "tunnel_ip", ip(self.tunnel_ip, "gateway.tunnel_ip", 4))
        object.__setattr__(self, "transit_ip", ip(self.transit_ip, "gateway.transit_ip", 4))
        if isinstance(self.nodes, str) or not isinstance(self.nodes, (list, tuple)):
            raise ValidationError("gateway.nodes", self.nodes, "must be a list of node names")
        nodes = tuple(name(n, "gateway.nodes") for n in self.nodes)
        if len(nodes) not in (0, 2) or len(set(nodes)) != len(nodes):
            raise ValidationError("gateway.nodes", list(self.nodes),
                                  "two distinct node names (active/standby), or none")
        object.__setattr__(self, "nodes", nodes)


@dataclasses.dataclass(frozen=True)
class Site:
    name: str
    gateway: Gateway

    def __post_init__(self):
        object.__setattr__(self, "name", name(self.name, "site.name"))


@dataclasses.dataclass(frozen=True)
class Network:
    """A stretched network as one site sees it."""

    name: str
    segmentation_id: int
    transit_vni: int

    def __post_init__(self):
        object.__setattr__(self, "name", name(self.name, "network.name"))
        object.__setattr__(self, "segmentation_id",
                           vni(self.segmentation_id, f"network[{self.name}].segmentation_id"))
        object.__setattr__(self, "transit_vni",
                           vni(self.transit_vni, f"network[{self.name}].transit_vni"))


@dataclasses.dataclass(frozen=True)
class AddressPair:
    """An allowed address pair: an IP (or prefix) and the MAC it may use."""

    ip_address: str
    mac_address: str

    def __post_init__(self):
        object.__setattr__(self, "ip_address",
                           ip_or_cidr(self.ip_address, "allowed_address_pairs.ip_address"))
        object.__setattr__(self, "mac_address",
                           mac(self.mac_address, "allowed_address_pairs.mac_address"))


@dataclasses.dataclass(frozen=True)
class Endpoint:
    """A port of ``site`` on ``network``, reachable at ``vtep``.

    ``port_id`` is the identity in the site's inventory (a Neutron port ID);
    it is what a remote port records as its origin.
    """

    site: str
    network: str
    mac: str
    vtep: str
    ips: tuple[str, ...] = ()
    allowed_address_pairs: tuple[AddressPair, ...] = ()
    port_id: str = ""

    def __post_init__(self):
        where = f"endpoint[{self.port_id or self.mac}]"
        object.__setattr__(self, "site", name(self.site, f"{where}.site"))
        object.__setattr__(self, "network", name(self.network, f"{where}.network"))
        object.__setattr__(self, "mac", mac(self.mac, f"{where}.mac"))
        object.__setattr__(self, "vtep", ip(self.vtep, f"{where}.vtep", 4))
        object.__setattr__(self, "ips", tuple(ip(a, f"{where}.ips") for a in self.ips))
        pairs = tuple(p if isinstance(p, AddressPair) else AddressPair(**p)
                      for p in self.allowed_address_pairs)
        object.__setattr__(self, "allowed_address_pairs", pairs)
        object.__setattr__(self, "port_id", str(self.port_id or ""))

    @property
    def macs(self) -> tuple[str, ...]:
        """Every MAC this endpoint may send from: its own and its pairs'."""
        seen = [self.mac]
        for pair in self.allowed_address_pairs:
            if pair.mac_address not in seen:
                seen.append(pair.mac_address)
        return tuple(seen)


@dataclasses.dataclass(frozen=True)
class RemotePort:
    """A remote endpoint registered in the local site.

    ``origin`` is the endpoint as its own site has it; ``vtep`` is the local
    gateway's tunnel IP. Equality covers everything a registrar must keep in
    step, so a changed origin means an update in place.
    """

    origin: Endpoint
    vtep: str
    gateway_host: str = ""
    #: The origin's MACs that are mobile as the local site sees them: its L2
    #: population must leave them to learning, not pin them at ``vtep``.
    mobile_macs: tuple[str, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "vtep", ip(self.vtep, "remote_port.vtep", 4))
        object.__setattr__(self, "mobile_macs", tuple(sorted(
            mac(m, "remote_port.mobile_macs") for m in self.mobile_macs)))

    @property
    def key(self) -> tuple[str, str, str]:
        """Identity of a remote port: origin site, network and port (or MAC)."""
        return (self.origin.site, self.origin.network, self.origin.port_id or self.origin.mac)


@dataclasses.dataclass(frozen=True)
class Rejected:
    """A tenant endpoint left out of the desired state, and why.

    Tenant data is judged per endpoint (DESIGN.md, "Failover and
    mobility"): a malformed or conflicting port is left out and shown here,
    never the whole snapshot, so no tenant can freeze or empty a gateway.
    """

    site: str
    network: str
    port_id: str
    mac: str
    reason: str

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class SiteSnapshot:
    """Everything one site's source said at one moment.

    Operator configuration (the site, its gateway, its stretched networks)
    is validated whole: a mistake there raises :class:`ValidationError`.
    Tenant endpoints are judged one by one: one on an unknown network, or
    whose own MAC another endpoint of the site already uses on that
    network, moves to ``rejected`` with its reason.
    """

    site: Site
    networks: tuple[Network, ...]
    endpoints: tuple[Endpoint, ...]
    rejected: tuple[Rejected, ...] = ()
    #: the site's VTEPs its source knows besides its endpoints' (Neutron's
    #: L2 agents' tunnel addresses; an inventory's ``vteps``): who may send
    #: VXLAN to the gateway's tunnel address (state.admission)
    vteps: tuple[str, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "vteps", _vteps(self.site, self.vteps))
        validate_site(self)

    @classmethod
    def after(cls, base: "SiteSnapshot", networks: tuple[Network, ...],
              endpoints: Iterable[Endpoint], gone: Iterable[Endpoint],
              came: Iterable[Endpoint], rejected: tuple[Rejected, ...] = (),
              vteps: tuple[str, ...] = ()) -> "SiteSnapshot":
        """The snapshot of ``base``'s site that follows it, from a source
        that knows what changed: ``endpoints`` are ``base``'s without
        ``gone`` and with ``came`` (objects: those of ``base``, and the new
        ones). Only the change is validated, with the index of own MACs
        that passes from ``base`` to the new snapshot (``base`` can give
        it once), and the new snapshot says what changed
        (:meth:`change_since`), so the gateway need not find it. Anything
        the change cannot answer for (other networks, an endpoint left out
        now or in ``base``) validates the whole snapshot instead."""
        endpoints, gone, came = tuple(endpoints), tuple(gone), tuple(came)
        owners = base.__dict__.get("_owners")
        object.__setattr__(base, "_owners", None)
        ok = (owners is not None and networks == base.networks
              and len(endpoints) == len(base.endpoints) - len(gone) + len(came))
        if ok:
            site, nets = base.site.name, {net.name for net in networks}
            owners.difference_update(map(_OWN, gone))
            for ep in came:
                key = (ep.network, ep.mac)
                if ep.site != site or ep.network not in nets or key in owners:
                    ok = False
                    break
                owners.add(key)
        if not ok:
            return cls(base.site, networks, endpoints, rejected, vteps)
        snap = cls.__new__(cls)
        for field, value in (("site", base.site), ("networks", networks),
                             ("endpoints", endpoints), ("rejected", tuple(rejected)),
                             ("vteps", _vteps(base.site, vteps)), ("_owners", owners),
                             ("_changed_from", (weakref.ref(base), gone, came))):
            object.__setattr__(snap, field, value)
        return snap

    def change_since(self, base: "SiteSnapshot") -> tuple[tuple, tuple] | None:
        """(gone, came) since ``base`` if this snapshot was made from it
        by :meth:`after`; else None (not known: compare them)."""
        made = self.__dict__.get("_changed_from")
        if made is None or made[0]() is not base:
            return None
        return made[1], made[2]


def _vteps(site: Site, vteps: Iterable[str]) -> tuple[str, ...]:
    return tuple(sorted({ip(v, f"site[{site.name}].vteps", version=4) for v in vteps}))


@dataclasses.dataclass(frozen=True)
class MobileMac:
    """A MAC that several endpoints of one network may send from (a VRRP
    virtual MAC in the allowed address pairs of both peers, or a port's own
    MAC that another port may take over).

    ``claimants`` are the endpoints that claim it, as (site, port_id, vtep);
    ``home`` is the endpoint whose own MAC it is, if any: where it is until
    a frame from it says otherwise.
    """

    network: str
    mac: str
    claimants: tuple[tuple[str, str, str], ...]
    home: tuple[str, str, str] | None = None


@dataclasses.dataclass(frozen=True)
class Desired:
    """The validated whole a gateway reconciles toward.

    ``local`` is this gateway's site; ``peers`` the other sites. Local
    endpoints sit behind their own VTEPs; a peer's endpoints sit behind that
    peer's gateway transit IP.

    Operator configuration across sites (names, transit IPs and VNIs) is
    validated whole. An endpoint whose own MAC an endpoint of another site
    also uses on the same network is a conflict: the one that held the MAC
    in ``previous`` (the last good state) keeps it, else the first by (site,
    port), and the other moves to ``rejected``. A MAC claimed by several
    endpoints through allowed address pairs is *mobile* (``mobile``).
    """

    local: SiteSnapshot
    peers: tuple[SiteSnapshot, ...]
    previous: "Desired | None" = dataclasses.field(default=None, compare=False, repr=False)
    rejected: tuple[Rejected, ...] = dataclasses.field(default=(), compare=False)
    mobile: dict = dataclasses.field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self):
        validate_desired(self)
        resolve_conflicts(self)
        object.__setattr__(self, "previous", None)  # never a chain of old states

    @classmethod
    def resolved(cls, local: SiteSnapshot, peers: tuple[SiteSnapshot, ...],
                 rejected: tuple[Rejected, ...] = (), mobile: dict | None = None) -> "Desired":
        """A desired state whose conflicts and mobile MACs are already
        resolved (gwagent.control.world keeps them by changes); only the
        operator's configuration across sites is validated here."""
        desired = cls.__new__(cls)
        for field, value in (("local", local), ("peers", tuple(peers)), ("previous", None),
                             ("rejected", rejected), ("mobile", mobile or {})):
            object.__setattr__(desired, field, value)
        validate_desired(desired)
        return desired

    @property
    def networks(self) -> tuple[Network, ...]:
        return self.local.networks

    @property
    def sites(self) -> tuple[SiteSnapshot, ...]:
        return (self.local, *self.peers)

    def all_rejected(self) -> tuple[Rejected, ...]:
        """Every endpoint left out: per site, then across sites."""
        return tuple(r for snap in self.sites for r in snap.rejected) + self.rejected

    def remote_endpoints(self) -> Iterable[tuple[SiteSnapshot, Endpoint]]:
        stretched = {n.name for n in self.local.networks}
        for peer in self.peers:
            for ep in peer.endpoints:
                if ep.network in stretched:
                    yield peer, ep

    def remote_ports(self) -> tuple[RemotePort, ...]:
        """The remote ports the local site must hold, one per remote endpoint.

        ``mobile_macs`` lists the endpoint's MACs that are mobile *as the
        local site sees them* (claimed by endpoints behind more than one
        VTEP of the site: a local compute, or the gateway for remote ones):
        the site's L2 population must not pin those at the gateway."""
        gw = self.local.site.gateway
        site_mobile = self.site_mobile_macs()
        return tuple(RemotePort(origin=ep, vtep=gw.tunnel_ip, gateway_host=gw.host,
                                mobile_macs=tuple(m for m in ep.macs
                                                  if (ep.network, m) in site_mobile))
                     for _, ep in self.remote_endpoints())

    def site_mobile_macs(self) -> frozenset[tuple[str, str]]:
        """(network, MAC) of mobile MACs whose claimants are behind more than
        one VTEP as the local site's computes see them (remote endpoints all
        behind the local gateway's tunnel IP)."""
        local = self.local.site.name
        tunnel = self.local.site.gateway.tunnel_ip
        out = set()
        for key, mob in self.mobile.items():
            vteps = {vtep if site == local else tunnel for site, _, vtep in mob.claimants}
            if len(vteps) > 1:
                out.add(key)
        return frozenset(out)


_OWN, _SITE, _NETWORK = (operator.attrgetter("network", "mac"), operator.attrgetter("site"),
                         operator.attrgetter("network"))


def validate_site(snap: SiteSnapshot) -> None:
    """Operator errors raise; endpoint errors move endpoints to ``rejected``."""
    site = snap.site.name
    nets: dict[str, Network] = {}
    vnis: dict[int, str] = {}
    for net in snap.networks:
        if net.name in nets:
            raise ValidationError(f"site[{site}].networks", net.name, "network listed twice")
        nets[net.name] = net
        for field, number in (("segmentation_id", net.segmentation_id),
                              ("transit_vni", net.transit_vni)):
            owner = vnis.get(number)
            if owner is not None:
                raise ValidationError(
                    f"site[{site}].network[{net.name}].{field}", number,
                    f"VNI already used by {owner} (one gateway cannot carry a VNI twice)")
            vnis[number] = f"{net.name}.{field}"
    eps = snap.endpoints
    # The common case, checked in C: one site, known networks, no own MAC
    # twice on a network; its index of own MACs is kept for the snapshot
    # that follows (SiteSnapshot.after).
    keys = list(map(_OWN, eps))
    owned = set(keys)
    if (len(owned) == len(keys) and set(map(_SITE, eps)) <= {site}
            and set(map(_NETWORK, eps)) <= nets.keys()):
        object.__setattr__(snap, "_owners", owned)
        return
    owners: dict[tuple[str, str], Endpoint] = {}
    accepted = []
    rejected = list(snap.rejected)
    for ep in eps:
        if ep.site != site:
            reason = f"listed in site {site!r} but belongs to site {ep.site!r}"
        elif ep.network not in nets:
            reason = f"network {ep.network!r} is not a stretched network of site {site!r}"
        else:
            other = owners.get((ep.network, ep.mac))
            if other is not None:
                reason = (f"MAC {ep.mac} is already the own MAC of port "
                          f"{other.port_id or other.mac} on network {ep.network!r}")
            else:
                owners[(ep.network, ep.mac)] = ep
                accepted.append(ep)
                continue
        rejected.append(Rejected(site, ep.network, ep.port_id, ep.mac, reason))
    if len(accepted) != len(snap.endpoints):
        object.__setattr__(snap, "endpoints", tuple(accepted))
        object.__setattr__(snap, "rejected", tuple(rejected))


def validate_desired(desired: Desired) -> None:
    """Operator configuration across sites, validated whole."""
    local = desired.local
    names = {local.site.name}
    ips = {local.site.gateway.transit_ip: local.site.name}
    for peer in desired.peers:
        pname = peer.site.name
        if pname in names:
            raise ValidationError("peers.site.name", pname, "site listed twice")
        names.add(pname)
        tip = peer.site.gateway.transit_ip
        if tip in ips:
            raise ValidationError(f"site[{pname}].gateway.transit_ip", tip,
                                  f"same transit IP as site {ips[tip]!r}")
        ips[tip] = pname
        peer_nets = {n.name: n for n in peer.networks}
        for net in local.networks:
            other = peer_nets.get(net.name)
            if other is None:
                raise ValidationError(f"site[{pname}].networks", net.name,
                                      f"network unknown to peer site {pname!r}")
            if other.transit_vni != net.transit_vni:
                raise ValidationError(
                    f"site[{pname}].network[{net.name}].transit_vni", other.transit_vni,
                    f"differs from site {local.site.name!r} ({net.transit_vni})")


def resolve_conflicts(desired: Desired) -> None:
    """Leave out endpoints whose own MAC another site's endpoint holds, and
    find the mobile MACs (see :class:`Desired`). Per site, own MACs are
    already unique (:func:`validate_site`)."""
    stretched = {n.name for n in desired.local.networks}
    incumbent: dict[tuple[str, str], tuple[str, str]] = {}
    if desired.previous is not None:
        for snap in desired.previous.sites:
            for ep in snap.endpoints:
                incumbent[(ep.network, ep.mac)] = (ep.site, ep.port_id)
    claims: dict[tuple[str, str], list[Endpoint]] = {}
    for snap in desired.sites:
        for ep in snap.endpoints:
            if ep.network in stretched:
                claims.setdefault((ep.network, ep.mac), []).append(ep)
    losers: set[int] = set()
    rejected = []
    for key, eps in claims.items():
        if len(eps) < 2:
            continue
        held = incumbent.get(key)
        eps = sorted(eps, key=lambda e: ((e.site, e.port_id) != held, e.site, e.port_id))
        winner = eps[0]
        for ep in eps[1:]:
            losers.add(id(ep))
            rejected.append(Rejected(
                ep.site, ep.network, ep.port_id, ep.mac,
                f"MAC {ep.mac} is already the own MAC of port {winner.port_id or winner.mac} "
                f"of site {winner.site!r} on network {ep.network!r}"))
    if losers:
        local = _without(desired.local, losers)
        peers = tuple(_without(p, losers) for p in desired.peers)
        object.__setattr__(desired, "local", local)
        object.__setattr__(desired, "peers", peers)
        object.__setattr__(desired, "rejected", tuple(rejected))
    object.__setattr__(desired, "mobile", find_mobile(desired))


def _without(snap: SiteSnapshot, losers: set[int]) -> SiteSnapshot:
    keep = tuple(ep for ep in snap.endpoints if id(ep) not in losers)
    if len(keep) == len(snap.endpoints):
        return snap
    return dataclasses.replace(snap, endpoints=keep)


def find_mobile(desired: Desired) -> dict[tuple[str, str], MobileMac]:
    """(network, MAC) -> MobileMac for every MAC more than one endpoint claims."""
    stretched = {n.name for n in desired.local.networks}
    claims: dict[tuple[str, str], list[Endpoint]] = {}
    for snap in desired.sites:
        for ep in snap.endpoints:
            if ep.network not in stretched or not ep.allowed_address_pairs:
                continue
            for m in ep.macs[1:]:
                claims.setdefault((ep.network, m), []).append(ep)
    if not claims:
        return {}
    owners = {}
    for snap in desired.sites:
        for ep in snap.endpoints:
            if (ep.network, ep.mac) in claims:
                owners[(ep.network, ep.mac)] = ep
    out = {}
    for key, eps in claims.items():
        home = owners.get(key)
        everyone = ([home] if home is not None else []) + [e for e in eps if e is not home]
        if len(everyone) < 2:
            continue
        out[key] = MobileMac(key[0], key[1],
                             tuple(sorted((e.site, e.port_id, e.vtep) for e in everyone)),
                             (home.site, home.port_id, home.vtep) if home is not None else None)
    return out

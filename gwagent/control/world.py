"""The desired state kept by changes: from the sources' new snapshots to the
entries, guards and mobile MACs they change, in work proportional to what
changed.

Why it looks like this
    The whole functions (:class:`gwagent.model.Desired`,
    :func:`gwagent.state.gateway_mobile`, :func:`~gwagent.state.static_dataplane`,
    :func:`~gwagent.state.guards`) say what a gateway must hold for a set of
    snapshots; they are the specification. Run whole on every change they
    cost a change work proportional to the world (at 100k endpoints, a third
    of a second to move one entry). A :class:`World` keeps indexes by
    (network, MAC) and, for a new snapshot, applies only the endpoints that
    differ from the site's last one, recomputing the keys they touch: who
    holds a MAC (a conflict between sites), whether it is mobile, its entry
    and its guards. The first snapshot, and any change of the operator's
    configuration (sites, networks, transit addresses), goes the same way
    with every endpoint new. tests/unit/test_world.py checks that after any
    sequence of changes a World says what the whole functions say.

The whole values, made only when asked
    The static dataplane's MACs and the guards hold an element per MAC of
    the world; a frozenset made again per change copied them whole (at
    1M endpoints, a quarter of a second of a change's 0.4 s pass). They
    are kept as :class:`~gwagent.hotpath.ChangedSet`: each update's value
    is the last one's changed by what the keys' recomputation took out and
    put in, and made whole only where the whole is needed (the full plan
    after an audit or a configuration change, status while a peer is
    unknown, an audit's comparison).

What is still proportional to the world
    Finding the endpoints that differ, when the source does not say it
    (:meth:`~gwagent.model.SiteSnapshot.after`: the Neutron source does): a
    snapshot is a tuple, compared with the last by identity first (a source
    keeps the objects of the ports that did not change), then by value for
    what differs. And while endpoints are left out (a MAC that two sites
    claim as their own), the desired state holds each changed site's
    snapshot without them: a filter of that site's tuple per change of it
    (a site that did not change keeps its filtered snapshot).
"""
from __future__ import annotations

import collections
import dataclasses
from typing import Iterable, NamedTuple

from gwagent.hotpath import ChangedSet
from gwagent.model import Desired, Endpoint, MobileMac, Rejected, RemotePort, SiteSnapshot
from gwagent.state import (SIDES, SITE, TRANSIT, FloodEntry, GatewayState, Guard, Location,
                           MacEntry, MobileSpec, NetworkSpec, Segment)

Key = tuple[str, str]


@dataclasses.dataclass(frozen=True, eq=False)
class Static:
    """The static dataplane of one update (:attr:`World.static`): its
    networks and floods (few), and its MACs as a change of the last
    update's (a ChangedSet: module docstring). A value: a new one per
    update that changed it, so its identity is its version."""

    networks: tuple[NetworkSpec, ...]
    macs: ChangedSet
    floods: frozenset[FloodEntry]

    network = GatewayState.network

    def state(self) -> GatewayState:
        """The whole state (its MACs made whole: work proportional to the
        world, once)."""
        return GatewayState(self.networks, self.macs.whole(), self.floods)


class Change(NamedTuple):
    """What one update changed: ``full`` (everything: the first state, or
    the operator's configuration changed), else the (network, MAC) keys
    whose entry, mobility or guards may differ and the floods that came or
    went."""

    full: bool
    macs: frozenset[Key] = frozenset()
    floods: frozenset[FloodEntry] = frozenset()


def endpoint_changes(old: Iterable[Endpoint], new: Iterable[Endpoint]
                     ) -> tuple[list[Endpoint], list[Endpoint], list[tuple[Endpoint, Endpoint]]]:
    """(gone, came, same) between two snapshots' endpoints: by identity
    first (sets of ids, made in C), then the few that differ by value;
    ``same``: (old, new) pairs equal but not the same object (an endpoint
    read again)."""
    old, new = tuple(old), tuple(new)
    if old is new:
        return [], [], []
    if not old:
        return [], list(new), []
    old_of, new_of = dict(zip(map(id, old), old)), dict(zip(map(id, new), new))
    gone = [old_of[i] for i in old_of.keys() - new_of.keys()]
    came = [new_of[i] for i in new_of.keys() - old_of.keys()]
    same = []
    if gone and came:
        olds = {ep: ep for ep in gone}
        same = [(olds[ep], ep) for ep in came if ep in olds]
        if same:
            kept = {id(ep) for pair in same for ep in pair}
            gone = [ep for ep in gone if id(ep) not in kept]
            came = [ep for ep in came if id(ep) not in kept]
    return gone, came, same


def _config(local: SiteSnapshot, peers: tuple[SiteSnapshot, ...]) -> tuple:
    """What, changed, changes everything: the operator's configuration."""
    return (local.site, local.networks, tuple((p.site, p.networks) for p in peers))


class World:
    """The desired state of one gateway, kept by changes (module docstring).

    ``update(local, peers)`` takes the sources' snapshots and returns the
    :class:`Change`; then :attr:`desired`, :attr:`mobile` (the gateway's
    mobile MACs), :attr:`static` (its dataplane but the mobile MACs'
    places: a :class:`Static`), :attr:`entries` (its MACs by key) and
    :attr:`guards` (when ``guard``; a ChangedSet) are those of the new
    snapshots. A :class:`~gwagent.model.ValidationError` of the operator's
    configuration leaves the World as it was."""

    def __init__(self, guard: bool = False, by_source: bool = True):
        self.guard, self.by_source = guard, by_source
        self.desired: Desired | None = None
        self.mobile: dict[Key, MobileSpec] = {}
        #: the endpoint whose own MAC each key is: who keeps it (its site
        #: and port) against a newcomer of another site, across a change of
        #: configuration too
        self._held: dict[Key, Endpoint] = {}
        self._reset()

    def _reset(self) -> None:
        self._config: tuple | None = None
        self._raw: dict[str, SiteSnapshot] = {}
        self._holders: dict[Key, tuple[Endpoint, ...]] = {}   # every endpoint whose MACs hold the key
        self._losers: dict[int, tuple[Endpoint, Rejected]] = {}   # by id(endpoint)
        self._model_mobile: dict[Key, MobileMac] = {}
        #: the static entry of each key (one: the endpoints that hold a MAC
        #: not mobile here are all at one place; none for a mobile MAC: it
        #: is where the evidence says, gwagent.control.mobility)
        self.entries: dict[Key, MacEntry] = {}
        self._mobile: dict[Key, MobileSpec] = {}
        self._guards: dict[Key, tuple[Guard, ...]] = {}   # of mobile MACs (others': their entry's)
        self._site_floods: collections.Counter = collections.Counter()
        #: the local endpoints' VTEPs, and how many endpoints each
        self.local_vteps: collections.Counter = collections.Counter()
        #: remote endpoints that came, went or changed since the last
        #: take_ports(), by their remote port's key (the endpoint, or None);
        #: None: everything (a full change)
        self._ports: dict[tuple, Endpoint | None] | None = None
        self._where: dict[str, str] = {}                 # peer site -> its transit IP
        self.mobile = {}
        self.static: Static | None = None
        self.guards: ChangedSet = ChangedSet()
        #: (the guards before the last update, those gone, those come): for
        #: the backends (hotpath.follow); None after a full update
        self.guard_change: tuple | None = None
        #: per site: (its snapshot, the ids left out of it, the snapshot
        #: without them): a site that did not change is not filtered again
        self._kept: dict[str, tuple[SiteSnapshot, frozenset[int], SiteSnapshot]] = {}
        #: per network: endpoints of the local site ("local"), remote
        #: endpoints ("remote"), and the static entries and floods of each
        #: side ("site", "transit"): status counts them without a walk of
        #: the world
        self.counts: dict[str, collections.Counter] = {}

    # -- the update ----------------------------------------------------------
    def update(self, local: SiteSnapshot, peers: tuple[SiteSnapshot, ...]) -> Change:
        config = _config(local, peers)
        # the operator's configuration, validated whole before anything changes
        shell = Desired.resolved(local, peers)
        full = config != self._config
        if full:
            self._reset()
            self._config = config
            self._start(shell)
        keys: set[Key] = set()
        floods: set[FloodEntry] = set()
        for snap in (local, *peers):
            old = self._raw.get(snap.site.name)
            told = snap.change_since(old) if old is not None else None
            if told is not None:  # the source said what changed
                (gone, came), same = told, ()
            else:
                gone, came, same = endpoint_changes(old.endpoints if old else (), snap.endpoints)
            self._raw[snap.site.name] = snap
            for was, now in same:
                self._repoint(was, now)
            for ep in gone:
                self._leave(ep, keys, floods)
            for ep in came:
                self._join(ep, keys, floods)
        self._recompute(keys, floods)
        if full:  # who holds what is of the new world only
            self._held = {key: self._held[key] for key in keys if key in self._held}
        self._make(local, peers, floods)
        if full:
            self.guard_change = None  # from no backend's guards
            return Change(True)
        return Change(False, frozenset(keys), frozenset(floods))

    def _start(self, shell: Desired) -> None:
        self._local_name = shell.local.site.name
        self._where = {p.site.name: p.site.gateway.transit_ip for p in shell.peers}
        self._stretched = {net.name for net in shell.local.networks}
        gw = shell.local.site.gateway
        self._gateway = gw
        self._networks = tuple(sorted(
            NetworkSpec(net.transit_vni, net.name, Segment(net.segmentation_id, gw.tunnel_ip),
                        Segment(net.transit_vni, gw.transit_ip))
            for net in shell.local.networks))
        self._transit_floods = frozenset(
            FloodEntry(net.name, TRANSIT, ip) for net in shell.local.networks
            for ip in self._where.values())
        self.counts = {net.name: collections.Counter({TRANSIT: len(self._where)})
                       for net in shell.local.networks}

    def _where_of(self, site: str, vtep: str) -> Location:
        return Location(SITE, vtep) if site == self._local_name else Location(
            TRANSIT, self._where[site])

    def _join(self, ep: Endpoint, keys: set, floods: set) -> None:
        if ep.network not in self._stretched:
            return  # a peer's network this site does not stretch
        holders = self._holders
        for mac in ep.macs if ep.allowed_address_pairs else (ep.mac,):
            key = (ep.network, mac)
            eps = holders.get(key)
            holders[key] = (ep,) if eps is None else eps + (ep,)
            keys.add(key)
        self._count(ep, 1, floods)

    def _leave(self, ep: Endpoint, keys: set, floods: set) -> None:
        if ep.network not in self._stretched:
            return
        for mac in ep.macs:
            key = (ep.network, mac)
            holders = tuple(e for e in self._holders[key] if e is not ep)
            if holders:
                self._holders[key] = holders
            else:
                del self._holders[key]
            keys.add(key)
        if self._losers.pop(id(ep), None) is None:
            self._count(ep, -1, floods)

    def _repoint(self, was: Endpoint, now: Endpoint) -> None:
        """An endpoint read again, equal: the indexes hold the new object."""
        if was.network not in self._stretched:
            return
        for mac in was.macs:
            key = (was.network, mac)
            self._holders[key] = tuple(now if e is was else e for e in self._holders[key])
        lost = self._losers.pop(id(was), None)
        if lost is not None:
            self._losers[id(now)] = (now, lost[1])

    def _count(self, ep: Endpoint, n: int, floods: set) -> None:
        """An endpoint in or out of the desired state: its flood (local
        ones) and the per-network counts."""
        local = ep.site == self._local_name
        self.counts[ep.network]["local" if local else "remote"] += n
        if not local and self._ports is not None:
            key = (ep.site, ep.network, ep.port_id or ep.mac)
            if n > 0:
                self._ports[key] = ep
            elif self._ports.get(key, ep) is ep:  # (not the endpoint that replaces it)
                self._ports[key] = None
        if local:
            self.local_vteps[ep.vtep] += n
            if not self.local_vteps[ep.vtep]:
                del self.local_vteps[ep.vtep]
            flood = FloodEntry(ep.network, SITE, ep.vtep)
            self._site_floods[flood] += n
            if self._site_floods[flood] == 0:
                del self._site_floods[flood]
                floods.add(flood)
                self.counts[ep.network][SITE] -= 1
            elif self._site_floods[flood] == n == 1:
                floods.add(flood)
                self.counts[ep.network][SITE] += 1

    def _recompute(self, keys: set, floods: set) -> None:
        self._changed = ([], [], [], [])  # entries out, in; guards out, in
        self._mobile_changed = False
        # Conflicts first: an endpoint that loses (or wins back) its own MAC
        # leaves (or rejoins) the desired state whole, all its MACs with it.
        holders, held, losers = self._holders, self._held, self._losers
        for key in list(keys):
            eps = holders.get(key)
            if eps and len(eps) == 1 and eps[0].mac == key[1]:  # the common case
                held[key] = eps[0]
                if losers and id(eps[0]) in losers:
                    self._lost(eps[0], False, keys, floods)
                continue
            own = [e for e in eps or () if e.mac == key[1]]
            if not own:
                held.pop(key, None)
                continue
            if len(own) > 1:
                was = held.get(key)
                was = (was.site, was.port_id) if was is not None else None
                own.sort(key=lambda e: ((e.site, e.port_id) != was, e.site, e.port_id))
            winner = own[0]
            held[key] = winner
            self._lost(winner, False, keys, floods)
            for ep in own[1:]:
                self._lost(ep, Rejected(
                    ep.site, ep.network, ep.port_id, ep.mac,
                    f"MAC {ep.mac} is already the own MAC of port "
                    f"{winner.port_id or winner.mac} of site {winner.site!r} on network "
                    f"{ep.network!r}"), keys, floods)
        self._keys(keys)

    def _keys(self, keys: set) -> None:
        """Each key's entry, mobility and guards (:meth:`_key`), the common
        case inline: a MAC one endpoint holds as its own, nothing mobile or
        left out about it (a cold start of 100k endpoints: 0.5 -> 0.3 s)."""
        if self._losers or self._mobile or self._model_mobile:
            for key in keys:
                self._key(key)
            return
        out_entries, in_entries, out_guards, in_guards = self._changed
        holders, entries, counts, guard = self._holders, self.entries, self.counts, self.guard
        local, where = self._local_name, self._where
        for key in keys:
            eps = holders.get(key)
            if eps is None or len(eps) != 1 or eps[0].mac != key[1]:
                self._key(key)
                continue
            ep = eps[0]
            net, mac = key
            entry = (MacEntry(net, mac, SITE, ep.vtep) if ep.site == local
                     else MacEntry(net, mac, TRANSIT, where[ep.site]))
            old = entries.get(key)
            if old == entry:
                continue
            entries[key] = entry
            count = counts[net]
            if old is not None:
                out_entries.append(old)
                count[old.side] -= 1
            count[entry.side] += 1
            in_entries.append(entry)
            if guard:
                if old is not None:
                    out_guards.append(Guard(net, mac, TRANSIT if old.side == SITE else SITE))
                in_guards.append(Guard(net, mac, TRANSIT if entry.side == SITE else SITE))

    def _lost(self, ep: Endpoint, rejected: Rejected | bool, keys: set, floods: set) -> None:
        was = self._losers.get(id(ep))
        if rejected:
            self._losers[id(ep)] = (ep, rejected)
            if was is None:
                self._count(ep, -1, floods)
        elif was is not None:
            del self._losers[id(ep)]
            self._count(ep, 1, floods)
        else:
            return
        if (was is None) != (not rejected):
            keys.update((ep.network, mac) for mac in ep.macs)

    def _key(self, key: Key) -> None:
        """One (network, MAC): whether it is mobile, its entry, its guards."""
        net, mac = key
        eps = self._holders.get(key, ())
        if self._losers:
            eps = [e for e in eps if id(e) not in self._losers]
        out_entries, in_entries, out_guards, in_guards = self._changed
        counts = self.counts[net]
        old = self.entries.pop(key, None)
        if old is not None:
            out_entries.append(old)
            counts[old.side] -= 1
        was_site_mobile = self.site_mobile(key)
        if self._model_mobile:
            self._model_mobile.pop(key, None)
        if self._mobile and self._mobile.pop(key, None) is not None:
            self._mobile_changed = True
        spec = None
        if len(eps) > 1 or (eps and eps[0].mac != mac):
            spec = self._mobility(key, eps)
        if self._ports is not None and self.site_mobile(key) != was_site_mobile:
            for ep in eps:  # their remote ports say it
                if ep.site != self._local_name:
                    self._ports[(ep.site, ep.network, ep.port_id or ep.mac)] = ep
        entry = None
        if spec is None and eps:  # all at one place (else it is mobile)
            entry = MacEntry(net, mac, *self._where_of(eps[0].site, eps[0].vtep))
            self.entries[key] = entry
            counts[entry.side] += 1
            in_entries.append(entry)
        if self.guard:
            # a MAC placed on one side never comes from the other; a mobile
            # one only from where its candidates are (state.guards)
            if old is not None:
                out_guards.append(Guard(net, mac, TRANSIT if old.side == SITE else SITE))
            out_guards += self._guards.pop(key, ())
            if entry is not None:
                in_guards.append(Guard(net, mac, TRANSIT if entry.side == SITE else SITE))
            if spec is not None:
                guards = []
                for side in SIDES:
                    sources = tuple(sorted({c.vtep for c in spec.candidates if c.side == side}))
                    if not sources:
                        guards.append(Guard(net, mac, side))
                    elif self.by_source:
                        guards.append(Guard(net, mac, side, sources))
                self._guards[key] = tuple(guards)
                in_guards += guards

    def _without(self, snap: SiteSnapshot, losers: dict[str, set[int]]) -> SiteSnapshot:
        """The site's snapshot without its endpoints left out (conflicts):
        filtered again only when the snapshot or what is left out of it
        changed (a walk of that site while any of its endpoints is out)."""
        out = frozenset(losers.get(snap.site.name, ()))
        if not out:
            self._kept.pop(snap.site.name, None)
            return snap
        kept = self._kept.get(snap.site.name)
        if kept is not None and kept[0] is snap and kept[1] == out:
            return kept[2]
        filtered = dataclasses.replace(snap, endpoints=tuple(
            ep for ep in snap.endpoints if id(ep) not in out))
        self._kept[snap.site.name] = (snap, out, filtered)
        return filtered

    def site_mobile(self, key: Key) -> bool:
        """Whether the local site's computes see the MAC's claimants behind
        more than one VTEP (Desired.site_mobile_macs)."""
        mob = self._model_mobile.get(key)
        if mob is None:
            return False
        local, tunnel = self._local_name, self._gateway.tunnel_ip
        return len({vtep if site == local else tunnel for site, _, vtep in mob.claimants}) > 1

    def remote_port(self, ep: Endpoint) -> RemotePort:
        """The remote port of a remote endpoint (Desired.remote_ports)."""
        gw = self._gateway
        return RemotePort(origin=ep, vtep=gw.tunnel_ip, gateway_host=gw.host,
                          mobile_macs=tuple(m for m in ep.macs
                                            if self.site_mobile((ep.network, m))))

    def take_ports(self) -> dict[tuple, RemotePort | None] | None:
        """The remote ports that changed since the last call, by key: the
        port the desired state holds now, or None (gone); None: every one
        may have (a full change: Desired.remote_ports() says them all)."""
        ports, self._ports = self._ports, {}
        if ports is None:
            return None
        return {key: self.remote_port(ep) if ep is not None else None
                for key, ep in ports.items()}

    def _mobility(self, key: Key, eps: list[Endpoint]) -> MobileSpec | None:
        """A MAC that endpoints claim by their pairs: mobile in the model if
        more than one endpoint claims it, here if they are at more than
        one place from this gateway; its spec then."""
        net, mac = key
        claims = [e for e in eps if e.mac != mac]
        home = next((e for e in eps if e.mac == mac), None)
        everyone = ([home] if home is not None else []) + claims
        if len(everyone) < 2:
            return None
        self._model_mobile[key] = MobileMac(
            net, mac, tuple(sorted((e.site, e.port_id, e.vtep) for e in everyone)),
            (home.site, home.port_id, home.vtep) if home is not None else None)
        candidates = frozenset(self._where_of(e.site, e.vtep) for e in everyone)
        if len(candidates) < 2:
            return None
        spec = MobileSpec(net, mac, candidates,
                          self._where_of(home.site, home.vtep) if home is not None else None)
        self._mobile[key] = spec
        self._mobile_changed = True
        return spec

    def _make(self, local: SiteSnapshot, peers: tuple[SiteSnapshot, ...],
              floods: set[FloodEntry]) -> None:
        """The new desired state; the dataplane and guards changed by what
        the keys' recomputation took out and put in (ChangedSet: work
        proportional to what changed)."""
        losers: dict[str, set[int]] = {}
        for ep, _ in self._losers.values():
            losers.setdefault(ep.site, set()).add(id(ep))
        local, peers = self._without(local, losers), tuple(self._without(p, losers) for p in peers)
        rejected = tuple(sorted((r for _, r in self._losers.values()),
                                key=lambda r: (r.site, r.network, r.port_id, r.mac)))
        self.desired = Desired.resolved(local, peers, rejected, dict(self._model_mobile))
        if self._mobile_changed:  # a new dict: other threads read the last one
            self.mobile = dict(self._mobile)
        out_entries, in_entries, out_guards, in_guards = self._changed
        static = self.static or Static(self._networks, ChangedSet(), self._transit_floods)
        if out_entries or in_entries or floods or self.static is None:
            # each key's old entry was in the last state, and its new one
            # replaces it: exactly what ChangedSet.changed asks
            flood_set = static.floods
            if floods:
                came = {f for f in floods if f in self._site_floods}
                flood_set = _changed(static.floods, floods - came, came)
            self.static = Static(self._networks, static.macs.changed(out_entries, in_entries),
                                 flood_set)
        self.guard_change = None
        # A key's guards were all in the last guards (a guard names its key)
        # and are all replaced by its new ones: what went and came exactly.
        out, came = frozenset(out_guards), frozenset(in_guards)
        gone, came = out - came, came - out
        if gone or came:
            old = self.guards
            self.guards = old.changed(gone, came)
            self.guard_change = (old, gone, came)


def _changed(old: frozenset, out: Iterable, came: Iterable) -> frozenset:
    """``old`` without ``out``, with ``came`` (what is in both stays in)."""
    came = frozenset(came)
    return (old - frozenset(out)) | came if out else old | came

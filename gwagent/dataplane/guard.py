"""The Linux backend's MAC guard: no MAC hijack across clouds, in nftables.

A frame that a network's VXLAN port brings into the gateway's bridge with an
inner source MAC that lives on the other side (an endpoint of this site,
from the transit side; a remote endpoint, from the site side) is dropped
before the bridge forwards it, and counted (:func:`gwagent.state.guards`).
A table of the gateway's own in the ``bridge`` family, written through
libnftables' JSON interface on the ingress filter's thread
(gwagent.dataplane.ingress)::

    table bridge gwagent {                   # ours alone
      set guard { type iface_index . ether_addr; }   # (VXLAN port, MAC) that may not come in
      set hijackers { type iface_index . ether_addr; size 4096; counter; }
      set drops { type ifname; size 4096; counter; }  # per VXLAN port
      chain hijack {
        add @hijackers { iif . ether saddr }
        add @drops { iifname }
        iifname "gwa-vl-*" counter drop      # from the site side
        counter drop                         # from the transit side
      }
      chain prerouting {
        type filter hook prerouting priority -300; policy accept;
        iif . ether saddr @guard jump hijack  # every bridged frame: one lookup
      }
    }

A port is keyed by its index, not its name (a 4-byte key, not 16); nft
takes and shows it by name. A port made again gets a new index, so the
backend reads the set again after making a network (its members are
written anew).

The bridge family sees the inner frame only: which peer gateway or compute
sent it (the outer source) is gone by then, so a mobile MAC with a
candidate on a side may come from anyone on that side
(``by_source = False``; the OpenFlow backend enforces the candidates
themselves). The ``guard`` set holds a member per MAC of the world, so it
is read in full only by an audit (gwagent.dataplane.AuditedSet). A pass
reads the two small sets for the counters (per port, per hijacker), never a
chain: libnftables fetches every set's elements to list a chain or a
counter (1.1-1.2 s with 100k guards, measured), but only the named set's
to list a set (5 ms). The chains are checked on the audit's timer.

Members are written ``CHUNK`` to a transaction: libnftables parses a
transaction whole into its own objects, and a million members in one
raised the agent's peak by about 2 GiB (a change of a pass is one
transaction; a table made again is whole with its first chunk, and the
rest follow within the same pass).
"""
from __future__ import annotations

import logging
from typing import Callable, Iterator, Mapping

from gwagent.hotpath import difference, follow, whole
from gwagent.state import GuardCounters

LOG = logging.getLogger(__name__)

FAMILY, TABLE = "bridge", "gwagent"
HIJACKERS_MAX = 4096
CHUNK = 20_000  # guard members in one libnftables transaction (_transactions)
_T = {"family": FAMILY, "table": TABLE}
_KEY = {"concat": [{"meta": {"key": "iif"}},
                   {"payload": {"protocol": "ether", "field": "saddr"}}]}
RULES = [("hijack", "drops"), ("hijack", "hijackers"), ("hijack", "site drop"), ("hijack", "transit drop"),
         ("prerouting", "guard")]


def ruleset(site_prefix: str) -> list[dict]:
    """Pure: the commands that create the table (empty sets); frames from
    a port named ``site_prefix*`` count as the site side's."""
    iif = {"meta": {"key": "iifname"}}
    return [
        {"add": {"table": {"family": FAMILY, "name": TABLE}}},
        {"add": {"set": {**_T, "name": "guard", "type": ["iface_index", "ether_addr"]}}},
        {"add": {"set": {**_T, "name": "hijackers", "type": ["iface_index", "ether_addr"],
                         "size": HIJACKERS_MAX, "stmt": [{"counter": None}]}}},
        {"add": {"set": {**_T, "name": "drops", "type": "ifname",
                         "size": HIJACKERS_MAX, "stmt": [{"counter": None}]}}},
        {"add": {"chain": {**_T, "name": "hijack"}}},
        {"add": {"rule": {**_T, "chain": "hijack", "comment": "drops", "expr": [
            {"set": {"op": "add", "set": "@drops", "elem": {"meta": {"key": "iifname"}}}}]}}},
        {"add": {"rule": {**_T, "chain": "hijack", "comment": "hijackers", "expr": [
            {"set": {"op": "add", "set": "@hijackers", "elem": _KEY}}]}}},
        {"add": {"rule": {**_T, "chain": "hijack", "comment": "site drop", "expr": [
            {"match": {"op": "==", "left": iif, "right": f"{site_prefix}*"}},
            {"counter": None}, {"drop": None}]}}},
        {"add": {"rule": {**_T, "chain": "hijack", "comment": "transit drop", "expr": [
            {"counter": None}, {"drop": None}]}}},
        {"add": {"chain": {**_T, "name": "prerouting", "type": "filter",
                           "hook": "prerouting", "prio": -300, "policy": "accept"}}},
        {"add": {"rule": {**_T, "chain": "prerouting", "comment": "guard", "expr": [
            {"match": {"op": "==", "left": _KEY, "right": "@guard"}},
            {"jump": {"target": "hijack"}}]}}},
    ]


def elements(guards, devices: Mapping[tuple[str, str], str]) -> frozenset[tuple[str, str]]:
    """Pure: the ``guard`` set's members for ``guards``, as (port, MAC);
    ``devices``: (network, side) -> its VXLAN port. A guard that names
    sources (the bridge cannot tell them) or a network without its port
    has none."""
    out = set()
    for g in guards:
        port = devices.get((g.network, g.side))
        if port is not None and not g.sources:
            out.add((port, g.mac))
    return frozenset(out)


def _elem(value) -> tuple[str, str] | None:
    if isinstance(value, dict) and "concat" in value:
        port, mac = value["concat"]
        return port, mac
    return None


def read_small(listing: list[dict], ports: Mapping[str, tuple[str, str]]
               ) -> tuple[list[tuple[str, str]], GuardCounters]:
    """Pure: from the listing of the small sets (and of the two chains,
    when listed), (the rules there, as (chain, comment), sorted; the
    counters). ``ports``: VXLAN port -> (network, side)."""
    rules, counters = [], GuardCounters()
    for item in listing:
        if "rule" in item:
            r = item["rule"]
            rules.append((r["chain"], r.get("comment")))
        elif "set" in item and item["set"]["name"] == "drops":
            for e in item["set"].get("elem") or ():
                if isinstance(e, dict) and "elem" in e and e["elem"].get("val") in ports:
                    side = ports[e["elem"]["val"]][1]
                    counters.dropped[side] = (counters.dropped.get(side, 0)
                                              + e["elem"].get("counter", {}).get("packets", 0))
        elif "set" in item and item["set"]["name"] == "hijackers":
            for e in item["set"].get("elem") or ():
                if not isinstance(e, dict) or "elem" not in e:
                    continue
                key = _elem(e["elem"].get("val"))
                where = ports.get(key[0]) if key else None
                if where is not None:
                    network, side = where
                    counters.macs.setdefault(side, {})[(network, key[1])] = (
                        e["elem"].get("counter", {}).get("packets", 0))
    return sorted(rules), counters


class NftGuard:
    """The table in the gateway's namespace, through ``run`` (the ingress
    filter's: gwagent.dataplane.ingress.NftIngress.run)."""

    def __init__(self, run: Callable[[list[dict]], list[dict]], audit):
        self.run, self.audit = run, audit
        self._want: tuple = (None, None, frozenset())  # (guards, devices, members): per change
        self._step: tuple | None = None  # how the members last changed (hotpath.follow)
        self._chains_next = 0.0   # when the chains are checked again (the audit's timer)

    def _small(self, chains: bool = True) -> list[dict] | None:
        """The small sets, and the chains if ``chains`` (slow: module
        docstring); None: no table."""
        what = [("set", "hijackers"), ("set", "drops")]
        if chains:
            what += [("chain", "hijack"), ("chain", "prerouting")]
        try:  # one list command a call: libnftables refuses two in one
            return [item for kind, name in what
                    for item in self.run([{"list": {kind: {**_T, "name": name}}}])]
        except Exception as exc:  # noqa: BLE001 - IngressError: no table (or not ours)
            if "No such file" in str(exc) or "does not exist" in str(exc):
                return None
            raise

    def _members(self) -> list[tuple[str, str]]:
        listing = self.run([{"list": {"set": {**_T, "name": "guard"}}}])
        out = []
        for item in listing:
            if "set" in item:
                out.extend(k for k in map(_elem, item["set"].get("elem") or ()) if k)
        return out

    def sync(self, guards, devices: Mapping[tuple[str, str], int] | None,
             site_prefix: str, changed: tuple | None = None) -> GuardCounters:
        """Make the table hold ``guards`` (None: no table); the counters.
        ``devices``: (network, side) -> VXLAN port; ports named
        ``site_prefix*`` are the site side's. ``changed``: (guards, those
        gone since, those come), when the caller knows (hotpath.follow)."""
        now = self.audit.clock()
        chains = now >= self._chains_next
        small = self._small(chains)
        if guards is None:
            if small is not None:
                self.run([{"delete": {"table": {"family": FAMILY, "name": TABLE}}}])
            self.audit.forget()
            return GuardCounters()
        devices = devices or {}
        if self._want[0] is not guards or self._want[1] != devices:
            made, self._step = follow(self._want[::2], guards,
                                      lambda gs: elements(gs, devices),
                                      same=self._want[1] == devices, changed=changed)
            self._want = (guards, dict(devices), made)
        want = self._want[2]
        ports = {port: key for key, port in devices.items()}
        rules, counters = read_small(small, ports) if small is not None else ([], None)
        if chains and rules == sorted(RULES):
            self._chains_next = now + self.audit.interval
        if small is None or (chains and rules != sorted(RULES)):
            if small is not None:
                LOG.warning("MAC guard: table %s %s is not as the agent made it; made again",
                            FAMILY, TABLE)
            self.audit.forget()
            # add-then-delete: whatever is left of a table goes, in the
            # same transaction that makes it whole (with its first CHUNK
            # members; any more follow, CHUNK a transaction)
            for commands in _transactions(("add", whole(want)), head=[
                    {"add": {"table": {"family": FAMILY, "name": TABLE}}},
                    {"delete": {"table": {"family": FAMILY, "name": TABLE}}},
                    *ruleset(site_prefix)]):
                self.run(commands)
            self.audit.wrote(want)
            self._chains_next = now + self.audit.interval
            return counters or GuardCounters()
        have = self.audit.have(self._members)
        if have is want:  # as written, no audit since: nothing to compare
            return counters
        gone, add = difference(have, want, self._step)
        if add or gone:
            try:
                for commands in _transactions(("delete", gone), ("add", add)):
                    self.run(commands)
            except Exception:
                self.audit.forget()  # some chunks may have landed: read again
                raise
        self.audit.wrote(want)  # (equal as read: the same object from now on)
        return counters

    def remove(self) -> bool:
        self.audit.forget()
        if self._small() is None:
            return False
        self.run([{"delete": {"table": {"family": FAMILY, "name": TABLE}}}])
        return True


def _transactions(*changes: tuple[str, object], head=()) -> Iterator[list[dict]]:
    """Pure: the transactions that make each (verb, members) change of the
    ``guard`` set, in order (verb: add or delete), after the commands
    ``head``, ``CHUNK`` members at most in each; a change of fewer (any
    pass but a cold start's) is one transaction. libnftables parses a
    transaction whole into objects of its own first: a million members in
    one cost the agent about 2 GiB at its peak."""
    commands, size = list(head), 0
    for verb, members in changes:
        batch: list = []
        for port, mac in members:
            batch.append({"concat": [port, mac]})
            if size + len(batch) == CHUNK:
                yield commands + [{verb: {"element": {**_T, "name": "guard", "elem": batch}}}]
                commands, size, batch = [], 0, []
        if batch:
            commands.append({verb: {"element": {**_T, "name": "guard", "elem": batch}}})
            size += len(batch)
    if commands:
        yield commands

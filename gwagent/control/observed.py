"""The observed dataplane between audits: kept by events, audited by dumps.

A full observe() reads everything the gateway owns (at 100k endpoints,
200k FDB entries or 100k flows: seconds). Between two such reads the
:class:`Mirror` holds what the last one found, changed by what the agent
wrote (:meth:`Mirror.applied`) and by what the backend reports that
someone else changed (:class:`Changes`: an entry deleted or added behind
our back). A pass then plans only the keys that changed since the last
one, so a pass with nothing to change does no work proportional to the
world.

The full read stays, as an audit: on a slow timer (``[agent]
audit_interval``), and at once whenever the mirror cannot be trusted:
events were lost (the kernel's socket overflowed, the switch
reconnected), an owned device changed, a write failed. An audit that finds
other than the mirror counts the difference as drift, logs it, and the
planner repairs it in the same pass.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Iterable

from gwagent.dataplane import Changes
from gwagent.state import SITE, FloodEntry, FloodOp, GatewayState, MacEntry, MacOp, NetworkOp

LOG = logging.getLogger(__name__)


class Mirror:
    def __init__(self, audit_interval: float = 60.0, clock=time.monotonic):
        self.audit_interval, self.clock = audit_interval, clock
        self.lock = threading.Lock()
        self.networks: tuple = ()
        self._macs: dict[str, dict[str, tuple[MacEntry, ...]]] | None = None
        self._floods: set[FloodEntry] = set()
        self._loaded: GatewayState | None = None   # as read, while nothing changed since
        self.dirty: set[tuple[str, str]] = set()
        self.dirty_floods: set[FloodEntry] = set()
        self._why: str | None = "first pass"
        self._next_audit = 0.0
        #: counters for status and metrics
        self.audits = self.drift = self.foreign = self.lost = 0
        self.last_audit: float | None = None
        self.last_dump_reason: str | None = None

    # -- when to read everything ------------------------------------------------
    def dump_due(self) -> str | None:
        """Why the next pass must read the whole dataplane, or None."""
        with self.lock:
            if self._why:
                return self._why
        if self.clock() >= self._next_audit:
            return "audit"
        return None

    def invalidate(self, why: str) -> None:
        """The mirror may be wrong (``why``): read everything next pass.
        Only what the timer's audit finds counts as drift."""
        with self.lock:
            if not self._why:
                self._why = why

    def load(self, observed: GatewayState, why: str) -> int:
        """Take a full read; returns the drift found (0 when the mirror was
        not to be trusted)."""
        drift = 0
        with self.lock:
            if self._macs is not None and why == "audit":
                drift = _difference(self._snapshot(), observed, self.dirty, self.dirty_floods)
            index: dict[str, dict[str, tuple[MacEntry, ...]]] = {}
            for m in observed.macs:
                per = index.setdefault(m.network, {})
                per[m.mac] = per.get(m.mac, ()) + (m,)
            self.networks, self._macs, self._floods = observed.networks, index, set(observed.floods)
            self._loaded = observed
            self.dirty.clear()
            self.dirty_floods.clear()
            self._why = None
            self._next_audit = self.clock() + self.audit_interval
            self.audits += 1
            self.drift += drift
            self.last_audit, self.last_dump_reason = time.time(), why
        if drift:
            LOG.warning("dataplane audit (%s): %d entries differed from what the agent "
                        "knew (changed behind its back, no event seen); repairing", why, drift)
        return drift

    def snapshot(self) -> GatewayState:
        with self.lock:
            return self._snapshot()

    def _snapshot(self) -> GatewayState:
        if self._loaded is None:
            macs = frozenset(m for per in self._macs.values() for ms in per.values() for m in ms)
            self._loaded = GatewayState(self.networks, macs, frozenset(self._floods))
        return self._loaded

    # -- what changed ------------------------------------------------------------
    def take_dirty(self) -> tuple[set[tuple[str, str]], set[FloodEntry]]:
        with self.lock:
            keys, floods = self.dirty, self.dirty_floods
            self.dirty, self.dirty_floods = set(), set()
            return keys, floods

    def again(self, ops) -> None:
        """Plan these (deferred) operations' keys again next pass."""
        with self.lock:
            for op in ops:
                if isinstance(op, MacOp):
                    self.dirty.add((op.entry.network, op.entry.mac))
                elif isinstance(op, FloodOp):
                    self.dirty_floods.add(op.entry)

    def observed(self, keys: Iterable[tuple[str, str]], floods: Iterable[FloodEntry]
                 ) -> GatewayState:
        """The part of the mirror about ``keys`` and ``floods``."""
        with self.lock:
            macs = [m for net, mac in keys for m in self._macs.get(net, {}).get(mac, ())]
            return GatewayState(self.networks, frozenset(macs),
                                frozenset(f for f in floods if f in self._floods))

    def changed(self, changes: Changes) -> None:
        """What a backend saw change that the agent did not write."""
        if changes.full:
            self.lost += 1
            self.invalidate(changes.full)
            return  # everything is read again
        with self.lock:
            self.foreign += len(changes.macs) + len(changes.floods)
            if self._macs is None:
                return
            for net, mac in changes.macs:
                per = self._macs.setdefault(net, {})
                was = per.get(mac, ())
                # unknown now: broken, so the planner sets (or deletes) it again
                per[mac] = (MacEntry(net, mac, was[0].side if was else SITE, None),)
                self.dirty.add((net, mac))
            for flood, present in changes.floods.items():
                (self._floods.add if present else self._floods.discard)(flood)
                self.dirty_floods.add(flood)
            self._loaded = None

    def applied(self, ops, failures) -> None:
        """What the agent wrote: every op but the failed ones (whose result
        is unknown: read again)."""
        failed = {id(f.op) for f in failures}
        with self.lock:
            if self._macs is None:
                return
            for op in ops:
                if id(op) in failed:
                    continue
                if isinstance(op, MacOp):
                    per = self._macs.setdefault(op.entry.network, {})
                    if op.action == "set":
                        per[op.entry.mac] = (op.entry,)
                    else:
                        per.pop(op.entry.mac, None)
                elif isinstance(op, FloodOp):
                    (self._floods.add if op.action == "add" else self._floods.discard)(op.entry)
                else:
                    self._network(op)
            if ops:
                self._loaded = None
        if failed:
            self.invalidate("a write failed")

    def _network(self, op: NetworkOp) -> None:
        vni = op.network.transit_vni
        gone = [n for n in self.networks if n.transit_vni == vni]
        self.networks = tuple(sorted([n for n in self.networks if n.transit_vni != vni]
                                     + ([op.network] if op.action == "ensure" else [])))
        # a (re)made network's entries were not trusted: the planner set
        # every one of them in the same pass, after this op
        for name in {n.name for n in gone} | {op.network.name}:
            self._macs.pop(name, None)
            self._floods = {f for f in self._floods if f.network != name}

    def status(self) -> dict:
        return {"audit_interval": self.audit_interval, "audits": self.audits,
                "last_audit": self.last_audit, "last_dump_reason": self.last_dump_reason,
                "drift": self.drift, "foreign_changes": self.foreign,
                "events_lost": self.lost}


def _difference(a: GatewayState, b: GatewayState, keys, floods) -> int:
    """How many entries differ, but for those about ``keys`` and
    ``floods`` (reported changed: not drift)."""
    macs = a.macs ^ b.macs
    if keys:
        macs = {m for m in macs if (m.network, m.mac) not in keys}
    return (len(macs) + len((a.floods ^ b.floods) - set(floods))
            + len(set(a.networks) ^ set(b.networks)))


def desired_part(entry_of: Callable[[tuple[str, str]], MacEntry | None],
                 desired: GatewayState, keys: Iterable[tuple[str, str]],
                 floods: Iterable[FloodEntry]) -> GatewayState:
    """The part of the desired state about ``keys`` and ``floods``
    (``entry_of``: the desired entry of a (network, MAC), or None)."""
    return GatewayState(desired.networks,
                        frozenset(e for key in keys if (e := entry_of(key)) is not None),
                        frozenset(f for f in floods if f in desired.floods))

"""Mobility: where each mobile MAC is, decided from frames seen on the gateway.

Why it looks like this
    A VRRP virtual MAC (or any MAC that several ports claim in their allowed
    address pairs) moves when a VNF fails over, and the whole point of the
    gateway is that the move crosses clouds in milliseconds. Neutron cannot
    say where such a MAC is, only who may hold it; the frames can. So the
    gateway watches for frames *from* a mobile MAC arriving from one of its
    candidate VTEPs (the backend's tap reports them, with the outer source
    IP), and moves the MAC there at once, without waiting for a pass or any
    source. The table here is the pure part of that: it decides; the agent's
    mobility worker applies.

Rules (DESIGN.md, "Failover and mobility", after RFC 7432 section 15, FRR's
zebra_evpn_mac.c and OVN's ``virtual`` ports)
    * A MAC may only move among its *candidates*: the locations of the
      endpoints that claim it. A frame claiming it from anywhere else moves
      nothing; it is counted per source and shown in status.
    * Every move raises the MAC's sequence number by one. The sequence is
      what makes the latest move win whatever order work arrives in: a plan
      made from an older sequence is not applied over a newer move (the
      agent checks it under its mobility lock), and a full reconcile takes
      the table's locations as input, so it never undoes a move. The number
      is the one an EVPN MAC route's MAC mobility community would carry.
    * Duplicate detection as FRR's ``dup-addr-detection``: ``max_moves``
      moves within ``window`` seconds freeze the MAC where it is for
      ``hold`` seconds (an alarm in status); then it recovers with a clean
      history. While frozen its frames are not even delivered to userspace
      (the tap's filter leaves it out), so a storm costs no CPU.
    * Until there is evidence, a mobile MAC is at its *home* (the endpoint
      whose own MAC it is), or nowhere for a MAC that only address pairs
      claim (a VRRP virtual MAC): no entry, so frames to it flood like those
      to any unknown MAC until the holder's first frame (a VRRP master sends
      one every advert interval). The kernel cannot flood to the candidates
      only: a VXLAN FDB entry of a unicast MAC takes one destination.
    * When the candidates change (a source changed) and the current location
      is no longer among them, the MAC goes back to its home, with a new
      sequence number.

Time is injected (``now`` arguments); nothing here does I/O.
"""
from __future__ import annotations

import collections
import dataclasses
from typing import Mapping

from gwagent.state import Location, MobileSpec

Key = tuple  # (network, mac)

#: Refused claims from one source within a second before its frames are
#: left out by the tap's filter for ``SUPPRESS_SECONDS`` (CPU stays bounded
#: under a flood of rogue frames).
SUPPRESS_AFTER = 20
SUPPRESS_SECONDS = 5.0


@dataclasses.dataclass
class MacState:
    spec: MobileSpec
    location: Location | None
    seq: int = 0
    moved_at: float | None = None
    moves: collections.deque = dataclasses.field(default_factory=collections.deque)
    frozen_until: float | None = None
    refused: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    refused_recent: dict = dataclasses.field(default_factory=dict)  # src -> (second, count)
    suppressed: dict = dataclasses.field(default_factory=dict)      # src -> until
    frozen_claims: int = 0


@dataclasses.dataclass(frozen=True)
class Decision:
    """What one frame of evidence did: ``moved``, ``same``, ``refused`` (not a
    candidate), ``frozen`` (flapping, held), or ``unknown`` (not mobile)."""

    outcome: str
    key: Key
    location: Location | None = None
    previous: Location | None = None
    seq: int = 0
    alarm: bool = False   # this move froze the MAC


class MobilityTable:
    def __init__(self, max_moves: int = 5, window: float = 180.0, hold: float = 180.0):
        self.max_moves, self.window, self.hold = max_moves, window, hold
        self.macs: dict[Key, MacState] = {}
        self.version = 0  # bumps whenever what the tap should watch changes

    # -- from the sources ------------------------------------------------
    def update(self, specs: Mapping[Key, MobileSpec], now: float) -> list[Key]:
        """Take the mobile MACs of a new desired state. Returns the keys
        whose location changed because of it (reset to home)."""
        changed = []
        for key in list(self.macs):
            if key not in specs:
                del self.macs[key]
                self.version += 1
        for key, spec in specs.items():
            state = self.macs.get(key)
            if state is None:
                self.macs[key] = MacState(spec, spec.home)
                self.version += 1
                continue
            if state.spec == spec:
                continue
            state.spec = spec
            self.version += 1
            if state.location is not None and state.location not in spec.candidates:
                state.location = spec.home
                state.seq += 1
                state.moved_at = now
                changed.append(key)
        return changed

    # -- from the dataplane ------------------------------------------------
    def claim(self, key: Key, where: Location, now: float) -> Decision:
        """A frame from ``key``'s MAC arrived from ``where``."""
        state = self.macs.get(key)
        if state is None:
            return Decision("unknown", key, where)
        self._thaw(state, now)
        if where == state.location:
            return Decision("same", key, where, where, state.seq)
        if where not in state.spec.candidates:
            state.refused[where.vtep] += 1
            second, count = state.refused_recent.get(where.vtep, (int(now), 0))
            count = count + 1 if second == int(now) else 1
            state.refused_recent[where.vtep] = (int(now), count)
            if count >= SUPPRESS_AFTER:
                state.suppressed[where.vtep] = now + SUPPRESS_SECONDS
                self.version += 1
            return Decision("refused", key, where, state.location, state.seq)
        if state.frozen_until is not None:
            state.frozen_claims += 1
            return Decision("frozen", key, where, state.location, state.seq)
        previous = state.location
        state.location = where
        state.seq += 1
        state.moved_at = now
        if previous is not None:  # a first sighting is no move for detection
            state.moves.append(now)
        while state.moves and state.moves[0] < now - self.window:
            state.moves.popleft()
        alarm = len(state.moves) >= self.max_moves
        if alarm:
            state.frozen_until = now + self.hold
        self.version += 1
        return Decision("moved", key, where, previous, state.seq, alarm)

    def _thaw(self, state: MacState, now: float) -> None:
        if state.frozen_until is not None and now >= state.frozen_until:
            state.frozen_until = None
            state.moves.clear()
            self.version += 1
        for src, until in list(state.suppressed.items()):
            if now >= until:
                del state.suppressed[src]
                self.version += 1

    def tick(self, now: float) -> None:
        """Let hold times and suppressions run out (the worker calls it)."""
        for state in self.macs.values():
            self._thaw(state, now)

    def next_expiry(self) -> float | None:
        times = [s.frozen_until for s in self.macs.values() if s.frozen_until is not None]
        times += [t for s in self.macs.values() for t in s.suppressed.values()]
        return min(times, default=None)

    # -- to the planner, the tap and status -------------------------------
    def locations(self) -> dict[Key, Location | None]:
        return {key: s.location for key, s in self.macs.items()}

    def seq(self, key: Key) -> int:
        state = self.macs.get(key)
        return state.seq if state is not None else 0

    def watches(self) -> list[tuple[Key, tuple[str, ...]]]:
        """(key, outer sources that are no evidence) for every MAC whose
        frames the tap should report: all but the frozen ones; the current
        location and suppressed sources are excluded."""
        out = []
        for key, state in sorted(self.macs.items()):
            if state.frozen_until is not None:
                continue
            exclude = set(state.suppressed)
            if state.location is not None:
                exclude.add(state.location.vtep)
            out.append((key, tuple(sorted(exclude))))
        return out

    def status(self, now: float, wall_offset: float = 0.0) -> list[dict]:
        out = []
        for (network, mac), s in sorted(self.macs.items()):
            out.append({
                "network": network, "mac": mac,
                "location": dict(s.location._asdict()) if s.location else None,
                "home": dict(s.spec.home._asdict()) if s.spec.home else None,
                "candidates": [dict(c._asdict()) for c in sorted(s.spec.candidates)],
                "seq": s.seq,
                "moved_at": s.moved_at + wall_offset if s.moved_at is not None else None,
                "moves_in_window": sum(1 for t in s.moves if t >= now - self.window),
                "frozen": s.frozen_until is not None,
                "frozen_for": round(s.frozen_until - now, 1) if s.frozen_until else None,
                "claims_while_frozen": s.frozen_claims,
                "refused": dict(s.refused),
            })
        return out

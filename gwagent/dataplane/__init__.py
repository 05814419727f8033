"""Backends: observe what the gateway owns, apply typed operations.

A backend never decides anything. ``observe()`` returns the owned part of
the dataplane in words of the domain (gwagent.state), normalised;
``apply(ops)`` compiles the planner's operations into the backend's own
objects, performs them in order and returns one OpError per failed
operation, carrying on with the rest. Two backends implement the protocol:
``linux`` (this package: a bridge and VXLAN devices per network, FDB entries
through netlink, with a bulk path of its own) and ``openflow``
(gwagent.openflow: an Open vSwitch bridge programmed by an embedded os-ken
application).
"""
from __future__ import annotations

import logging
import time
from typing import Callable, Collection, Protocol, Sequence

from gwagent.hotpath import ChangedSet, whole
from gwagent.state import FloodEntry, GatewayState, MacOp, Op, OpError

LOG = logging.getLogger(__name__)


class Backend(Protocol):
    def observe(self) -> GatewayState: ...

    def apply(self, ops: Sequence[Op]) -> list[OpError]: ...

    def move(self, ops: Sequence[MacOp]) -> list[OpError]:
        """The mobility fast path: a mobile MAC's operations, at once, from
        the mobility worker's thread."""

    def tap(self, local_ips: Sequence[str]):
        """The mobility tap: ``watch([(vni, mac, exclude)])``, ``read()`` ->
        evidence, ``fileno()`` readable when evidence waits, ``close()``."""

    def remove_all(self) -> int:
        """Delete everything the gateway owns; returns how many objects."""

    def fileno(self) -> int:
        """A descriptor readable when the dataplane reports a change."""

    def drain_events(self) -> bool:
        """Read pending change reports; True if any concerned owned objects."""

    def take_changes(self) -> "Changes":
        """What the change reports said since the last call."""

    def close(self) -> None: ...


class Changes:
    """What a backend saw change behind the agent's back since it was last
    asked: ``full`` (state unknown: dump), MACs whose entries changed (their
    state is unknown: they are set again), flood destinations found added
    (True) or deleted (False)."""

    __slots__ = ("full", "macs", "floods")

    def __init__(self, full: str | None = None):
        self.full: str | None = full
        self.macs: set[tuple[str, str]] = set()
        self.floods: dict[FloodEntry, bool] = {}

    def __bool__(self) -> bool:
        return bool(self.full or self.macs or self.floods)

    def lose(self, why: str) -> None:
        self.full = self.full or why


class AuditedSet:
    """A large set of objects a backend owns and writes itself (the MAC
    guards: one per MAC of the world), read in full only by an audit, every
    ``interval`` seconds: in between it holds what was last written, so a
    pass with nothing to change costs a set difference, not a dump. An
    audit that finds other than what was written logs the drift and counts
    it (:attr:`drift`); the caller's next write repairs it. What was
    written is kept as given when it is a
    :class:`~gwagent.hotpath.ChangedSet` (no copy of a million members
    per change; made whole by an audit only)."""

    def __init__(self, what: str, interval: float = 60.0, clock=time.monotonic):
        self.what, self.interval, self.clock = what, interval, clock
        self._have: frozenset | ChangedSet | None = None
        self._next = 0.0
        self.drift = 0

    def have(self, read: Callable[[], Collection]) -> frozenset | ChangedSet:
        """What is there: as written, or read (``read()``) if the audit is due."""
        now = self.clock()
        if self._have is None or now >= self._next:
            there = frozenset(read())
            had = whole(self._have) if self._have is not None else None
            if had is not None and there != had:
                missing, foreign = len(had - there), len(there - had)
                self.drift += missing + foreign
                LOG.warning("%s changed behind the agent's back: %d missing, %d not ours "
                            "to have; repairing", self.what, missing, foreign)
            self._have, self._next = there, now + self.interval
        return self._have

    def wrote(self, value: Collection) -> None:
        """What is there now, as written. Written whole (nothing known
        before: the container made again) is as good as a read, so the
        audit's timer starts here: a million members read at once after
        the cold start cost minutes."""
        if self._have is None:
            self._next = self.clock() + self.interval
        self._have = value if isinstance(value, ChangedSet) else frozenset(value)

    def forget(self) -> None:
        """Unknown (a write failed, the container was made again): read next."""
        self._have = None

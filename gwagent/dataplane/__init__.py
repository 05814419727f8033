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

from typing import Protocol, Sequence

from gwagent.state import GatewayState, MacOp, Op, OpError


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

    def close(self) -> None: ...

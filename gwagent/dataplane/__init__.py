"""Backends: observe what the gateway owns, apply typed operations.

A backend never decides anything. ``observe()`` returns the owned part of
the dataplane, normalised (see gwagent.state); ``apply(ops)`` performs the
planner's operations in order and returns one OpError per failed operation,
carrying on with the rest. The Linux backend (``linux``) uses netlink
through pyroute2 and a bulk FDB path of its own (``netlink``).
"""
from __future__ import annotations

from typing import Protocol

from gwagent.state import DataplaneState, Op, OpError


class Backend(Protocol):
    def observe(self) -> DataplaneState: ...

    def apply(self, ops: list[Op]) -> list[OpError]: ...

    def remove_all(self) -> int:
        """Delete everything the gateway owns; returns how many devices."""

    def fileno(self) -> int:
        """A descriptor readable when the kernel reports a change."""

    def drain_events(self) -> bool:
        """Read pending change reports; True if any concerned owned objects."""

    def close(self) -> None: ...

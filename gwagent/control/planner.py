"""The planner: a pure function from (desired, observed) to operations.

No I/O, no clock, no backend: the same inputs always give the same operations,
in phases a backend performs in order (within a phase, order is free):

1. ``ensure`` networks that are missing or differ (a differing device is
   recreated by the backend, so its observed FDB entries are not trusted);
2. unicast ``replace`` and flood ``append`` of every missing entry;
3. ``delete`` of every owned entry no longer desired, except where a
   replace of the same key already moved it (no flood window on a move);
4. ``remove`` of networks no longer desired (their entries go with them).
"""
from __future__ import annotations

from gwagent.state import FLOOD_MAC, DataplaneState, FdbEntry, FdbOp, NetworkOp, Op


def plan(desired: DataplaneState, observed: DataplaneState) -> list[Op]:
    seen = {net.bridge: net for net in observed.networks}
    wanted = {net.bridge for net in desired.networks}
    ensure = [net for net in desired.networks if seen.get(net.bridge) != net]
    remove = [net for net in observed.networks if net.bridge not in wanted]

    untrusted = {name for net in ensure for name in net.names}
    gone = {name for net in remove for name in net.names}
    present = observed.fdb if not untrusted else frozenset(
        e for e in observed.fdb if e.dev not in untrusted)

    bridge_of = {}
    for net in desired.networks:
        for name in net.names[1:]:
            bridge_of[name] = net.bridge

    ops: list[Op] = [NetworkOp("ensure", net) for net in ensure]
    adds = desired.fdb - present
    ops.extend(FdbOp("append" if e.mac == FLOOD_MAC else "replace", e) for e in adds)
    stale = [e for e in present - desired.fdb if e.dev not in gone]
    if stale:
        moved = {_slot(e, bridge_of) for e in adds if e.mac != FLOOD_MAC}
        ops.extend(FdbOp("delete", e) for e in stale
                   if e.mac == FLOOD_MAC or _slot(e, bridge_of) not in moved)
    ops.extend(NetworkOp("remove", net) for net in remove)
    return ops


def _slot(entry: FdbEntry, bridge_of: dict[str, str]) -> tuple:
    """The kernel holds one unicast entry per slot: per bridge and MAC for
    bridge entries, per device and MAC for VXLAN entries."""
    if entry.dst is None:
        return ("bridge", bridge_of.get(entry.dev, entry.dev), entry.mac)
    return ("vxlan", entry.dev, entry.mac)

"""The planner: a pure function from (desired, observed) to operations.

No I/O, no clock, no backend: the same inputs always give the same
operations, in words of the domain (gwagent.state), in phases a backend
performs in order (within a phase, order is free):

1. ``ensure`` networks that are missing or differ (a differing network may
   be recreated by the backend, so its observed entries are not trusted);
2. ``set`` of every MAC not where it should be (a move carries where the
   MAC was, so the backend replaces it in one step: no flood window), and
   ``add`` of every missing flood destination;
3. ``delete`` of every owned MAC and flood destination no longer desired;
4. ``remove`` of networks no longer desired (their entries go with them).

History: until the OpenFlow issue the planner diffed kernel FDB entries and
knew the kernel's slots; those rules now live in the Linux backend's
compiler, and the planner knows only where MACs live.
"""
from __future__ import annotations

from gwagent.hotpath import without_gc
from gwagent.state import FloodOp, GatewayState, MacOp, NetworkOp, Op


@without_gc
def plan(desired: GatewayState, observed: GatewayState) -> list[Op]:
    seen = {net.transit_vni: net for net in observed.networks}
    wanted = {net.transit_vni for net in desired.networks}
    ensure = [net for net in desired.networks if seen.get(net.transit_vni) != net]
    remove = [net for net in observed.networks if net.transit_vni not in wanted]

    # Entries of a network being removed go with it; those of a network
    # being (re)created are not trusted, and are set again.
    # (by the network's identity, the transit VNI: an observed network may
    # carry another name until it is ensured).
    touched = {net.transit_vni for net in ensure} | {net.transit_vni for net in remove}
    untrusted = ({net.name for net in ensure}
                 | {net.name for net in observed.networks if net.transit_vni in touched})
    macs, floods = observed.macs, observed.floods
    if untrusted:
        macs = frozenset(m for m in macs if m.network not in untrusted)
        floods = frozenset(f for f in floods if f.network not in untrusted)

    ops: list[Op] = [NetworkOp("ensure", net) for net in ensure]
    adds = desired.macs - macs
    stale = macs - desired.macs
    previous = {}
    if stale:
        previous = {(m.network, m.mac): m for m in stale}
    ops.extend(MacOp("set", m, previous.pop((m.network, m.mac), None)) for m in adds)
    ops.extend(FloodOp("add", f) for f in desired.floods - floods)
    ops.extend(MacOp("delete", m) for m in previous.values())
    ops.extend(FloodOp("delete", f) for f in floods - desired.floods)
    ops.extend(NetworkOp("remove", net) for net in remove)
    return ops

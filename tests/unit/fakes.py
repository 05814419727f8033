"""A model of the gateway's kernel dataplane, for pure-logic tests.

It behaves as the Linux bridge and VXLAN FDB do, not as a call recorder:
one unicast entry per bridge and MAC (a replace moves it), one per VXLAN
device and MAC, any number of flood destinations per VXLAN device, deleting
a missing entry is harmless, an entry on a missing device fails, and
recreating a device drops its entries. ``forward`` answers where a frame
goes, so tests can assert reachability rather than calls.
"""
from __future__ import annotations

from gwagent.state import (FLOOD_MAC, DataplaneState, FdbEntry, FdbOp, NetworkDevices,
                           NetworkOp, OpError)


class FakeDataplane:
    def __init__(self):
        self.networks: dict[str, NetworkDevices] = {}
        self.bridge_fdb: dict[tuple[str, str], str] = {}   # (bridge, mac) -> port
        self.vxlan_fdb: dict[tuple[str, str], str] = {}    # (vxlan, mac) -> dst
        self.flood: set[tuple[str, str]] = set()           # (vxlan, dst)
        self.fail_devices: set[str] = set()
        self.foreign = {("eth0", "02:00:00:00:00:99")}       # never to be touched

    def _bridge_of(self, dev: str) -> str | None:
        for net in self.networks.values():
            if dev in net.names[1:]:
                return net.bridge
        return None

    def _devices(self) -> set[str]:
        return {n for net in self.networks.values() for n in net.names}

    def observe(self) -> DataplaneState:
        fdb = {FdbEntry(port, mac) for (_, mac), port in self.bridge_fdb.items()}
        fdb |= {FdbEntry(dev, mac, dst) for (dev, mac), dst in self.vxlan_fdb.items()}
        fdb |= {FdbEntry(dev, FLOOD_MAC, dst) for dev, dst in self.flood}
        return DataplaneState(tuple(sorted(self.networks.values())), frozenset(fdb))

    def _drop_entries(self, names) -> None:
        names = set(names)
        self.bridge_fdb = {k: v for k, v in self.bridge_fdb.items()
                           if k[0] not in names and v not in names}
        self.vxlan_fdb = {k: v for k, v in self.vxlan_fdb.items() if k[0] not in names}
        self.flood = {k for k in self.flood if k[0] not in names}

    def apply(self, ops) -> list[OpError]:
        errors = []
        for op in ops:
            try:
                self._apply(op)
            except OSError as exc:
                errors.append(OpError(op, str(exc)))
        return errors

    def _apply(self, op) -> None:
        if isinstance(op, NetworkOp):
            devs = op.devices
            if op.action == "ensure":
                if devs.bridge in self.fail_devices:
                    raise OSError(f"cannot create {devs.bridge}")
                old = self.networks.get(devs.bridge)
                if old != devs:
                    self._drop_entries(old.names if old else devs.names)
                self.networks[devs.bridge] = devs
            else:
                self._drop_entries(devs.names)
                self.networks.pop(devs.bridge, None)
            return
        entry: FdbEntry = op.entry
        if entry.dev not in self._devices():
            raise OSError(f"no device {entry.dev}")
        if entry.is_bridge:
            slot = (self._bridge_of(entry.dev), entry.mac)
            if op.action == "delete":
                if self.bridge_fdb.get(slot) == entry.dev:
                    del self.bridge_fdb[slot]
            else:
                self.bridge_fdb[slot] = entry.dev
        elif entry.is_flood:
            if op.action == "delete":
                self.flood.discard((entry.dev, entry.dst))
            else:
                self.flood.add((entry.dev, entry.dst))
        else:
            slot = (entry.dev, entry.mac)
            if op.action == "delete":
                if self.vxlan_fdb.get(slot) == entry.dst:
                    del self.vxlan_fdb[slot]
            else:
                self.vxlan_fdb[slot] = entry.dst

    def forward(self, ingress: str, mac: str) -> set[str]:
        """Underlay destinations of a frame for ``mac`` entering on ``ingress``."""
        bridge = self._bridge_of(ingress)
        net = self.networks[bridge]
        port = self.bridge_fdb.get((bridge, mac))
        ports = [port] if port else [p for p in net.names[1:] if p != ingress]
        out = set()
        for p in ports:
            if p == ingress:
                continue
            dst = self.vxlan_fdb.get((p, mac))
            out |= {dst} if dst else {d for dev, d in self.flood if dev == p}
        return out

    def move(self, ops) -> list[OpError]:
        """The mobility fast path: the same operations, at once."""
        return self.apply(ops)

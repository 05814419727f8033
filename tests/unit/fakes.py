"""A model of the Linux kernel's bridge and VXLAN FDB, under the real
Linux backend, for pure-logic tests.

:class:`FakeKernel` stands in for the netlink adapter and behaves as the
kernel does, not as a call recorder: links with indexes, a bridge alias, one
bridge entry per bridge and MAC (a replace moves it), a VXLAN entry per
device and MAC with one or more destinations (replace changes the first,
append adds one), deleting a missing entry is harmless, an entry on a
missing device fails, and deleting a device drops its entries. The backend
on top is the product's own (device ensure, compiler, normaliser), so these
tests check the whole path from a plan to the kernel's tables. ``forward``
answers where a frame goes, so tests assert reachability rather than calls.
"""
from __future__ import annotations

import dataclasses
import errno

from gwagent.dataplane.linux import FLOOD_MAC, LinuxBackend
from gwagent.dataplane.netlink import (NTF_EXT_LEARNED, NTF_MASTER, NTF_SELF, FdbRecord, Link,
                                       NetlinkError)


class FakeKernel:
    def __init__(self):
        self.table: dict[int, Link] = {}
        self._next = 10
        self.bridge_fdb: dict[tuple[str, str], str] = {}   # (bridge, mac) -> port
        self.vxlan_fdb: dict[tuple[str, str], list] = {}   # (vxlan, mac) -> dsts
        self.fail_devices: set[str] = set()
        self.foreign = {("eth0", "02:00:00:00:00:99")}       # never to be touched
        self.add_link(Link(1, "eth0", None, True, None, mtu=1500))
        self.addresses: dict[str, str] = {}  # local address -> the link holding it

    # what the backend calls ---------------------------------------------
    def add_link(self, link: Link) -> None:
        self.table[link.index] = link

    def by_name(self, name: str) -> Link | None:
        return next((link for link in self.table.values() if link.name == name), None)

    def link(self, name):
        return self.by_name(name)

    def links(self):
        return list(self.table.values())

    def address_mtus(self, links=None):
        return {ip: self.by_name(dev).mtu for ip, dev in self.addresses.items()
                if self.by_name(dev) is not None and self.by_name(dev).mtu}

    def link_add(self, name, kind, vxlan_id=None, vxlan_local=None, vxlan_port=None,
                 vxlan_learning=None, master=None, mtu=None):
        if any(name.startswith(d) for d in self.fail_devices):
            raise NetlinkError(errno.EPERM, f"cannot create {name}")
        self._next += 1
        self.table[self._next] = Link(self._next, name, kind, False, master, None, vxlan_id,
                                      vxlan_local, vxlan_port, bool(vxlan_learning),
                                      True if kind == "vxlan" else None,
                                      mtu or 1500)

    def link_set(self, index, ifalias=None, state=None, master=None, mtu=None):
        link = self.table[index]
        if mtu is not None:
            link = dataclasses.replace(link, mtu=mtu)
        if ifalias is not None:
            link = dataclasses.replace(link, alias=ifalias)
        if state is not None:
            link = dataclasses.replace(link, up=state == "up")
        if master is not None:
            link = dataclasses.replace(link, master=master)
        self.table[index] = link

    def brport_set(self, index, learning):
        self.table[index] = dataclasses.replace(self.table[index], port_learning=bool(learning))

    def link_del(self, index):
        link = self.table.pop(index, None)
        if link is None:
            return
        name = link.name
        self.bridge_fdb = {k: v for k, v in self.bridge_fdb.items()
                           if k[0] != name and v != name}
        self.vxlan_fdb = {k: v for k, v in self.vxlan_fdb.items() if k[0] != name}
        for other in list(self.table.values()):  # ports of a deleted bridge are freed
            if other.master == index:
                self.table[other.index] = dataclasses.replace(other, master=None)

    def fdb_bulk(self, reqs):
        errors = {}
        for i, req in enumerate(reqs):
            link = self.table.get(req.ifindex)
            if link is None:
                errors[i] = NetlinkError(errno.ENODEV, f"no device {req.ifindex}")
                continue
            if req.dst is None:
                bridge = self.table[link.master].name
                if req.action == "delete":
                    if self.bridge_fdb.get((bridge, req.mac)) == link.name:
                        del self.bridge_fdb[(bridge, req.mac)]
                else:
                    self.bridge_fdb[(bridge, req.mac)] = link.name
                continue
            dsts = self.vxlan_fdb.setdefault((link.name, req.mac), [])
            if req.action == "replace":
                dsts[:1] = [req.dst]
            elif req.action == "append":
                if req.dst not in dsts:
                    dsts.append(req.dst)
            elif req.dst in dsts:
                dsts.remove(req.dst)
            if not dsts:
                del self.vxlan_fdb[(link.name, req.mac)]
        return errors

    def fdb_dump(self, ifindexes=None, require_flags=0):
        index = {link.name: link.index for link in self.table.values()}
        out = []
        for (bridge, mac), port in self.bridge_fdb.items():
            out.append(FdbRecord(index[port], 0x40, NTF_MASTER | NTF_EXT_LEARNED, mac, None, 0,
                                 index[bridge], None, None))
        for (dev, mac), dsts in self.vxlan_fdb.items():
            for dst in dsts:
                out.append(FdbRecord(index[dev], 0x40, NTF_SELF | NTF_EXT_LEARNED, mac, dst, 0,
                                     0, None, None))
        return [r for r in out if ifindexes is None or r.ifindex in ifindexes]

    def close(self):
        pass

    # the model's answers ---------------------------------------------------
    @property
    def flood(self) -> set[tuple[str, str]]:
        return {(dev, dst) for (dev, mac), dsts in self.vxlan_fdb.items() if mac == FLOOD_MAC
                for dst in dsts}

    def ports(self, bridge: str) -> list[str]:
        b = self.by_name(bridge)
        return sorted(link.name for link in self.table.values() if b and link.master == b.index)

    def forward(self, ingress: str, mac: str) -> set[str]:
        """Underlay destinations of a frame for ``mac`` entering on ``ingress``."""
        bridge = self.table[self.by_name(ingress).master].name
        port = self.bridge_fdb.get((bridge, mac))
        ports = [port] if port else self.ports(bridge)
        out = set()
        for p in ports:
            if p == ingress:
                continue
            dsts = self.vxlan_fdb.get((p, mac))
            out |= set(dsts) if dsts else {d for dev, d in self.flood if dev == p}
        return out


class _QuietMonitor:
    def fileno(self):
        return -1

    def drain(self):
        return [], False

    def close(self):
        pass


class FakeDataplane(LinuxBackend):
    """The product's Linux backend on the kernel model: ``kernel`` holds the
    tables, ``forward`` asks them where a frame goes."""

    def __init__(self, clock=None):
        self.kernel = FakeKernel()
        kwargs = {"clock": clock} if clock is not None else {}
        super().__init__(None, nl=self.kernel, monitor=_QuietMonitor(), **kwargs)

    def forward(self, ingress: str, mac: str) -> set[str]:
        return self.kernel.forward(ingress, mac)

    def tap(self, local_ips):
        raise NotImplementedError("no frames in the kernel model")

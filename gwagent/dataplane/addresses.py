"""Which of the gateway's addresses this node holds, read from its kernel.

Two gateway nodes per site (active/standby, ``[gateway] high_availability
= vrrp``) share the site's tunnel and transit addresses; VRRP (keepalived
on the underlay) puts them on the active node. The agent never moves them:
it reads, on every turn of its loop and before every write to its
registry, whether its own namespace holds them now. That kernel state is
what the computes' and the peers' traffic follows, so it is also the one
fact that says which node may speak for the site in Neutron.

One netlink socket per holder, kept open (the loop asks ten times a
second); a lock because the registrar thread asks too.
"""
from __future__ import annotations

import socket
import threading

from pyroute2 import IPRoute


class AddressHolder:
    """The IPv4 addresses configured in ``netns`` (None: the agent's own)."""

    def __init__(self, netns: str | None):
        self.netns = netns
        self._lock = threading.Lock()
        self._ipr = None

    def held(self) -> set[str]:
        with self._lock:
            if self._ipr is None:
                self._ipr = IPRoute(netns=self.netns, flags=0, groups=0)
            try:
                return {a.get_attr("IFA_ADDRESS")
                        for a in self._ipr.get_addr(family=socket.AF_INET)}
            except Exception:
                self._close()  # a broken socket: a fresh one next time
                raise

    def holds(self, addresses) -> bool:
        return set(addresses) <= self.held()

    def _close(self) -> None:
        if self._ipr is not None:
            self._ipr.close()
            self._ipr = None

    def close(self) -> None:
        with self._lock:
            self._close()

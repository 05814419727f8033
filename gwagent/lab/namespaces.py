"""Netlink in a lab's namespaces: sockets, sysctls, new namespaces, veths.

Nothing here touches the root namespace: a socket is opened *inside* a
namespace (never creating it), and a veth is created in one lab namespace
with its peer placed straight into another.
"""
from __future__ import annotations

import os

from pyroute2 import IPRoute, netns

from gwagent.lab.names import LabError


def ipr(ns: str) -> IPRoute:
    """A netlink socket inside ``ns``; never creates the namespace."""
    return IPRoute(netns=ns, flags=0)


def index(sock: IPRoute, ifname: str) -> int:
    found = sock.link_lookup(ifname=ifname)
    if not found:
        raise LabError(f"no interface {ifname!r} in namespace {sock.status.get('netns')}")
    return found[0]


def sysctls_in(ns: str, values: dict[str, str]) -> None:
    """Write /proc/sys keys as seen from inside ``ns`` (a forked child joins it)."""
    pid = os.fork()
    if pid == 0:  # child: join the namespace, write, leave without cleanup
        code = 0
        try:
            netns.setns(ns, flags=0)
            for key, value in values.items():
                with open("/proc/sys/" + key.replace(".", "/"), "w") as handle:
                    handle.write(value)
        except BaseException:
            code = 1
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise LabError(f"could not set sysctls {sorted(values)} in {ns}")


def new_namespace(ns: str) -> None:
    netns.create(ns)
    # No IPv6: link-local chatter (RS, MLD, DAD) would flood the overlay and
    # show up as unknown MACs in every capture.
    sysctls_in(ns, {"net.ipv6.conf.all.disable_ipv6": "1",
                    "net.ipv6.conf.default.disable_ipv6": "1"})
    with ipr(ns) as sock:
        sock.link("set", index=index(sock, "lo"), state="up")


def uplink(sw: IPRoute, sw_port: str, bridge: str, ns: str, ifname: str,
           address: str, mtu: int = 1500) -> None:
    """A veth from the switch's ``bridge`` to ``ifname`` in ``ns`` with
    ``address``/24, both ends at ``mtu``."""
    sw.link("add", ifname=sw_port, kind="veth", peer={"ifname": ifname, "net_ns_fd": ns})
    sw.link("set", index=index(sw, sw_port), master=index(sw, bridge), mtu=mtu, state="up")
    with ipr(ns) as sock:
        idx = index(sock, ifname)
        sock.addr("add", index=idx, address=address, prefixlen=24)
        sock.link("set", index=idx, mtu=mtu, state="up")

"""The one thin netlink adapter of the Linux backend.

Everything the backend says to the kernel goes through :class:`Netlink`, one
per network namespace, holding long-lived sockets for the life of the agent:

* links (few: three per network) go through pyroute2's ``IPRoute``, which
  knows every link attribute;
* FDB entries (many: two per remote MAC) go through a raw ``NETLINK_ROUTE``
  socket with messages encoded and decoded here by hand.

Why the hand-encoded FDB path exists, in numbers measured on this machine
kind: per-call pyroute2 ``fdb('add')`` ran at about 4k entries/s and
pyroute2's own batch helpers were no faster; ``bridge -batch`` at
70k-100k/s; ``ndmsg`` packed with ``struct`` and sent many per ``send()`` at
40k-270k/s. Dumping 10k entries took 0.6-0.8 s through pyroute2's decoder and
0.05 s with ``bridge fdb show``; an idle reconcile of 100k endpoints (200k+
kernel entries) must take under a second, so :meth:`Netlink.fdb_dump`
decodes only the fields the backend needs, in one tight loop.

The bulk path sends up to ``WINDOW`` requests per ``send()``, each with its
own sequence number. rtnetlink handles a send synchronously and in order,
and answers every *failed* request with an error message carrying its
sequence number whether or not it asked for an ack; so only the last request
of a window carries ``NLM_F_ACK``. When that ack is read, every failure of
the window has been read before it and matched by sequence number: a failure
is reported *per entry* while the rest of the window lands. Acking every
request (one socket buffer and one ``recv()`` each) measured 3x slower:
about 100k entries/s against 300k/s for the kernel work alone. The window is
bounded so that a window's error messages always fit the receive buffer (an
overflow drops them; the window is then reported as unknown, per entry) and
because the kernel slows down on very large bursts.

Errors: a kernel errno becomes a :class:`NetlinkError` subclass in exactly
one place, :func:`error_from`; an ``EEXIST`` on an add and an ``ENOENT`` on a
delete are success (the state asked for already holds).
"""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import gc
import os
import socket
import sys
import struct
from typing import Iterator, NamedTuple, Sequence

from pyroute2 import IPRoute
from pyroute2 import netns as pyroute2_netns
from pyroute2.netlink.exceptions import NetlinkError as Pyroute2Error

# linux/netlink.h, linux/rtnetlink.h, linux/neighbour.h
NLMSG_NOOP, NLMSG_ERROR, NLMSG_DONE = 1, 2, 3
NLM_F_REQUEST, NLM_F_MULTI, NLM_F_ACK = 0x1, 0x2, 0x4
NLM_F_REPLACE, NLM_F_CREATE, NLM_F_APPEND = 0x100, 0x400, 0x800
NLM_F_DUMP = 0x300
NLM_F_ACK_TLVS = 0x200
NLMSGERR_ATTR_MSG = 1
SOL_NETLINK, NETLINK_CAP_ACK, NETLINK_EXT_ACK = 270, 10, 11
SO_SNDBUFFORCE, SO_RCVBUFFORCE = 32, 33
RTM_NEWLINK, RTM_DELLINK = 16, 17
RTM_NEWNEIGH, RTM_DELNEIGH, RTM_GETNEIGH = 28, 29, 30
RTMGRP_LINK, RTMGRP_NEIGH = 0x1, 0x4
IFLA_IFNAME = 3
NDA_DST, NDA_LLADDR, NDA_VLAN, NDA_PORT, NDA_VNI, NDA_MASTER = 1, 2, 5, 6, 7, 9
NTF_SELF, NTF_MASTER, NTF_EXT_LEARNED = 0x02, 0x04, 0x10
NUD_NOARP, NUD_PERMANENT = 0x40, 0x80
AF_BRIDGE = socket.AF_BRIDGE

WINDOW = 2048          # requests per send(): bounded, see the module docstring
BULK_SNDBUF = 4 << 20
BULK_RCVBUF = 16 << 20  # room for a window of acks (each ack is ~1 KiB truesize)
EVENT_RCVBUF = 4 << 20
CALLS_PER_COLLECTION = 128  # see Netlink._pyroute2

_HDR = struct.Struct("=IHHII")            # nlmsghdr
_NDMSG = struct.Struct("=BxxxiHBB")       # ndmsg
_ATTR = struct.Struct("=HH")              # nlattr
_ERR = struct.Struct("=i")                # nlmsgerr.error
_U16 = struct.Struct("=H")
_U32 = struct.Struct("=I")
# One whole request: header, ndmsg, NDA_LLADDR (6 bytes + 2 pad) and, for a
# VXLAN entry, NDA_DST (IPv4: 4 bytes, IPv6: 16 bytes).
# A dumped record's lead: header, ndmsg, NDA_LLADDR, the next attribute's header.
_LEAD = struct.Struct("=IH10x BxxxiHBx HH6sxx HH")
_FDB_BRIDGE = struct.Struct("=IHHII BxxxiHBB HH6sxx")
_FDB_DST4 = struct.Struct("=IHHII BxxxiHBB HH6sxx HH4s")
_FDB_DST6 = struct.Struct("=IHHII BxxxiHBB HH6sxx HH16s")


# --- errors: the one place where an errno becomes an exception -------------

class NetlinkError(Exception):
    """The kernel refused a request; ``errno`` and the kernel's own words."""

    def __init__(self, code: int, detail: str = ""):
        self.errno = code
        self.detail = detail
        text = os.strerror(code)
        super().__init__(f"{text} ({detail})" if detail else text)


class NotFound(NetlinkError):
    pass


class Exists(NetlinkError):
    pass


class Busy(NetlinkError):
    pass


class Invalid(NetlinkError):
    pass


class NotSupported(NetlinkError):
    pass


_BY_ERRNO = {errno.ENOENT: NotFound, errno.ENODEV: NotFound, errno.ESRCH: NotFound,
             errno.EEXIST: Exists, errno.EBUSY: Busy, errno.EADDRINUSE: Busy,
             errno.EINVAL: Invalid, errno.ERANGE: Invalid,
             errno.EOPNOTSUPP: NotSupported}


def error_from(code: int, detail: str = "") -> NetlinkError:
    """The typed exception for a (positive) errno."""
    return _BY_ERRNO.get(code, NetlinkError)(code, detail)


def is_success(action: str, exc: NetlinkError) -> bool:
    """An add finding the object there, a delete not finding it: done."""
    if action in ("add", "replace", "append"):
        return isinstance(exc, Exists)
    if action in ("del", "delete"):
        return isinstance(exc, NotFound)
    return False


@contextlib.contextmanager
def _translated() -> Iterator[None]:
    try:
        yield
    except Pyroute2Error as exc:
        raise error_from(abs(exc.code), _extack_of(exc)) from None


def _extack_of(exc: Pyroute2Error) -> str:
    args = exc.args[1:] if len(exc.args) > 1 else ()
    text = str(args[0]) if args else ""
    return "" if text == os.strerror(abs(exc.code)) else text


# --- records -----------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Link:
    """What the backend needs to know of one link."""

    index: int
    name: str
    kind: str | None
    up: bool
    master: int | None
    alias: str | None = None
    vni: int | None = None
    local: str | None = None
    port: int | None = None
    vxlan_learning: bool | None = None
    port_learning: bool | None = None
    mtu: int | None = None


class FdbRecord(NamedTuple):
    """One FDB entry as dumped (``AF_BRIDGE``): the fields we decode.

    ``master`` is the bridge's ifindex for a bridge entry (``NDA_MASTER``),
    else 0; ``vni``/``port`` are None when the kernel omitted them, which it
    does when they equal the device's own."""

    ifindex: int
    state: int
    flags: int
    mac: str
    dst: str | None
    vlan: int
    master: int
    vni: int | None
    port: int | None


class FdbRequest(NamedTuple):
    """One bulk FDB change. ``action`` is ``replace``, ``append`` or
    ``delete``; with ``dst`` it is a VXLAN ``self`` entry, without it a
    bridge (``master``) entry on port ``ifindex``. Every entry we add is
    marked ``NTF_EXT_LEARNED``: that is how observe() knows it is ours."""

    action: str
    ifindex: int
    mac: str
    dst: str | None = None


def encode_fdb(req: FdbRequest, seq: int, ack: bool = True) -> bytes:
    """One complete RTM_NEWNEIGH/RTM_DELNEIGH message for ``req``; without
    ``ack`` the kernel answers only if it fails."""
    if req.action == "replace":
        mtype, flags = RTM_NEWNEIGH, NLM_F_REQUEST | NLM_F_CREATE | NLM_F_REPLACE
    elif req.action == "append":
        mtype, flags = RTM_NEWNEIGH, NLM_F_REQUEST | NLM_F_CREATE | NLM_F_APPEND
    elif req.action == "delete":
        mtype, flags = RTM_DELNEIGH, NLM_F_REQUEST
    else:
        raise ValueError(f"unknown FDB action {req.action!r}")
    if ack:
        flags |= NLM_F_ACK
    mac = bytes.fromhex(req.mac.replace(":", ""))
    if req.dst is None:
        ndm_flags, state = NTF_MASTER | NTF_EXT_LEARNED, NUD_NOARP
        return _FDB_BRIDGE.pack(_FDB_BRIDGE.size, mtype, flags, seq, 0,
                                AF_BRIDGE, req.ifindex, state, ndm_flags, 0,
                                10, NDA_LLADDR, mac)
    ndm_flags, state = NTF_SELF | NTF_EXT_LEARNED, NUD_PERMANENT | NUD_NOARP
    if ":" in req.dst:
        fmt, dst = _FDB_DST6, socket.inet_pton(socket.AF_INET6, req.dst)
    else:
        fmt, dst = _FDB_DST4, socket.inet_aton(req.dst)
    return fmt.pack(fmt.size, mtype, flags, seq, 0, AF_BRIDGE, req.ifindex, state,
                    ndm_flags, 0, 10, NDA_LLADDR, mac, 4 + len(dst), NDA_DST, dst)


def decode_fdb_dump(buf: bytes, out: list[FdbRecord],
                    ifindexes: frozenset[int] | set[int] | None = None,
                    require_flags: int = 0) -> bool:
    """Append the RTM_NEWNEIGH records in ``buf`` to ``out``; True at
    NLMSG_DONE. Records on other ifindexes than ``ifindexes`` (when given),
    or lacking any of ``require_flags``, are skipped unread.

    This is the hot loop of an idle reconcile (200k+ records): one unpack
    reads the headers, the MAC and the next attribute's header, which is
    the whole of a record as the bridge and vxlan drivers lay it out but
    for its tail (cache info, VLAN, VNI); anything laid out otherwise takes
    the general attribute walk."""
    # Strings are interned, as the model's are, so that comparing observed
    # with desired entries is an identity check, not a memcmp (the planner's
    # set differences over 200k entries).
    intern = sys.intern
    lead, u16, u32, attr = _LEAD.unpack_from, _U16.unpack_from, _U32.unpack_from, _ATTR.unpack_from
    new = tuple.__new__
    dsts: dict[bytes, str] = {}
    end, off = len(buf), 0
    while off + 16 <= end:
        if off + 44 <= end:
            (length, mtype, _fam, ifindex, state, ndm_flags,
             lalen, latype, mac6, alen, atype) = lead(buf, off)
        else:
            length, mtype = _HDR.unpack_from(buf, off)[:2]
            ifindex = latype = 0
        if length < 16:
            break
        if mtype != RTM_NEWNEIGH:
            if mtype == NLMSG_DONE:
                return True
            if mtype == NLMSG_ERROR:
                code = -_ERR.unpack_from(buf, off + 16)[0]
                if code:
                    raise error_from(code, "FDB dump")
            off += (length + 3) & ~3
            continue
        mend = off + length
        if ((ifindexes is not None and ifindex not in ifindexes)
                or ndm_flags & require_flags != require_flags):
            off += (length + 3) & ~3
            continue
        mac = dst = vni = port = None
        vlan = master = 0
        if latype == NDA_LLADDR and lalen == 10 and alen == 8:
            mac = intern(mac6.hex(":"))
            if atype == NDA_DST:
                raw = buf[off + 44:off + 48]
                dst = dsts.get(raw)
                if dst is None:
                    dst = dsts[raw] = intern(socket.inet_ntop(socket.AF_INET, raw))
                a = off + 48
            elif atype == NDA_MASTER:
                master = u32(buf, off + 44)[0]
                a = off + 48
            else:
                a = off + 40
        else:
            a = off + 28
        while a + 4 <= mend:
            alen, atype = attr(buf, a)
            if alen < 4:
                break
            atype &= 0x3FFF
            if atype == NDA_LLADDR:
                mac = intern(buf[a + 4:a + 10].hex(":"))
            elif atype == NDA_DST:
                raw = buf[a + 4:a + alen]
                dst = dsts.get(raw)
                if dst is None:
                    family = socket.AF_INET if len(raw) == 4 else socket.AF_INET6
                    dst = dsts[raw] = intern(socket.inet_ntop(family, raw))
            elif atype == NDA_MASTER:
                master = u32(buf, a + 4)[0]
            elif atype == NDA_VLAN:
                vlan = u16(buf, a + 4)[0]
            elif atype == NDA_VNI:
                vni = u32(buf, a + 4)[0]
            elif atype == NDA_PORT:
                port = socket.ntohs(u16(buf, a + 4)[0])
            a += (alen + 3) & ~3
        if mac is not None:
            out.append(new(FdbRecord, (ifindex, state, ndm_flags, mac, dst, vlan, master,
                                       vni, port)))
        off += (length + 3) & ~3
    return False


# --- sockets -------------------------------------------------------------------

def open_route_socket(netns: str | None, groups: int = 0) -> socket.socket:
    """A raw NETLINK_ROUTE socket inside ``netns`` (None: this namespace).
    A missing namespace is an error, never silently created."""
    try:
        sock = pyroute2_netns.create_socket(netns, socket.AF_NETLINK, socket.SOCK_RAW,
                                            socket.NETLINK_ROUTE, flags=0)
    except OSError as exc:
        raise error_from(exc.errno or errno.ENOENT, f"netns {netns!r}") from None
    sock.bind((0, groups))
    return sock


def _size_buffers(sock: socket.socket, sndbuf: int, rcvbuf: int) -> None:
    for force, plain, size in ((SO_SNDBUFFORCE, socket.SO_SNDBUF, sndbuf),
                               (SO_RCVBUFFORCE, socket.SO_RCVBUF, rcvbuf)):
        if not size:
            continue
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, size)
        except PermissionError:
            sock.setsockopt(socket.SOL_SOCKET, plain, size)


class Netlink:
    """Long-lived netlink sockets in one namespace; see the module docstring."""

    def __init__(self, netns: str | None = None):
        self.netns = netns
        self._sock = open_route_socket(netns)
        _size_buffers(self._sock, BULK_SNDBUF, BULK_RCVBUF)
        self._sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
        self._sock.setsockopt(SOL_NETLINK, NETLINK_EXT_ACK, 1)
        self._buf = bytearray(1 << 16)
        self._seq = 0
        self._pyroute2_calls = 0
        with _translated():
            self.ipr = IPRoute(netns=netns, flags=0, groups=0, ext_ack=True)

    def close(self) -> None:
        self._sock.close()
        self.ipr.close()

    # links ------------------------------------------------------------------

    def links(self) -> list[Link]:
        """Every link of the namespace, decoded by :func:`decode_link`."""
        return self._get_links(NLM_F_REQUEST | NLM_F_DUMP, b"")

    def link(self, name: str) -> Link | None:
        """The link named ``name``, or None."""
        raw = name.encode() + b"\0"
        attr = _ATTR.pack(4 + len(raw), IFLA_IFNAME) + raw + b"\0" * (-len(raw) % 4)
        try:
            found = self._get_links(NLM_F_REQUEST, attr)
        except NetlinkError as exc:
            if exc.errno in (errno.ENODEV, errno.ENOENT):
                return None
            raise
        return found[0] if found else None

    def _get_links(self, flags: int, attrs: bytes) -> list[Link]:
        """RTM_GETLINK (a dump, or one link by the attributes), without
        statistics, on the bulk socket; its answers decoded."""
        self._seq += 1
        seq = self._seq
        body = _IFINFO.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + _ATTR.pack(8, IFLA_EXT_MASK) \
            + _U32.pack(RTEXT_FILTER_SKIP_STATS) + attrs
        self._sock.send(_HDR.pack(16 + len(body), RTM_GETLINK, flags, seq, 0) + body)
        out: list[Link] = []
        self._sock.settimeout(10.0)
        try:
            while True:
                buf = self._sock.recv(1 << 16)
                off = 0
                while off + 16 <= len(buf):
                    length, mtype, mflags, mseq, _ = _HDR.unpack_from(buf, off)
                    if length < 16:
                        break
                    if mseq == seq:
                        if mtype == NLMSG_DONE:
                            return out
                        if mtype == NLMSG_ERROR:
                            code = -_ERR.unpack_from(buf, off + 16)[0]
                            if code:
                                raise error_from(code, _extack_text(buf, off, length, mflags))
                            return out
                        if mtype == RTM_NEWLINK:
                            out.append(decode_link(buf, off, length))
                            if not flags & NLM_F_DUMP:
                                return out
                    off += (length + 3) & ~3
        finally:
            self._sock.settimeout(None)

    def address_mtus(self, links: Sequence[Link] | None = None) -> dict[str, int]:
        """Each local address of the namespace and the MTU of the link
        that holds it (``links``: as just dumped, else dumped here)."""
        mtus = {link.index: link.mtu for link in (self.links() if links is None else links)}
        with self._pyroute2():
            return {msg.get("local") or msg.get("address"): mtus.get(msg["index"])
                    for msg in self.ipr.addr("dump")
                    if mtus.get(msg["index"]) and (msg.get("local") or msg.get("address"))}

    @contextlib.contextmanager
    def _pyroute2(self) -> Iterator[None]:
        """A call through pyroute2, its errors translated. Each call leaves
        ~40 KiB of reference cycles (its asyncio requests), which wait for
        the collector a pass holds (gwagent/hotpath.py): 1000 networks made
        in one pass had left the agent at 500 MiB. Every
        CALLS_PER_COLLECTION calls the young generation is collected."""
        with _translated():
            yield
        self._pyroute2_calls += 1
        if self._pyroute2_calls % CALLS_PER_COLLECTION == 0:
            gc.collect(0)

    def link_add(self, name: str, kind: str, **attrs) -> None:
        with self._pyroute2():
            self.ipr.link("add", ifname=name, kind=kind, **attrs)

    def link_set(self, index: int, **attrs) -> None:
        with self._pyroute2():
            self.ipr.link("set", index=index, **attrs)

    def brport_set(self, index: int, **attrs) -> None:
        with self._pyroute2():
            self.ipr.brport("set", index=index, **attrs)

    def link_del(self, index: int) -> None:
        """Delete a link; one already gone counts as deleted."""
        try:
            with self._pyroute2():
                self.ipr.link("del", index=index)
        except NotFound:
            pass

    # FDB ----------------------------------------------------------------------

    def fdb_bulk(self, reqs: Sequence[FdbRequest]) -> dict[int, NetlinkError]:
        """Perform ``reqs`` in order; return {position: error} of those
        that failed (an empty dict: all landed)."""
        errors: dict[int, NetlinkError] = {}
        for start in range(0, len(reqs), WINDOW):
            self._fdb_window(reqs, start, min(start + WINDOW, len(reqs)), errors)
        return errors

    def _fdb_window(self, reqs: Sequence[FdbRequest], start: int, stop: int,
                    errors: dict[int, NetlinkError]) -> None:
        """Send reqs[start:stop] in one send(), only the last one acked, and
        read the answers up to that ack (see the module docstring)."""
        parts, seqs = [], {}
        last = stop - 1
        for i in range(start, stop):
            self._seq += 1
            try:
                parts.append(encode_fdb(reqs[i], self._seq, ack=i == last))
            except (ValueError, OSError) as exc:
                errors[i] = Invalid(errno.EINVAL, f"cannot encode: {exc}")
                continue
            seqs[self._seq] = i
        if not parts:
            return
        if last in errors:  # the acked request could not be encoded
            self._seq += 1
            parts.append(_HDR.pack(16, NLMSG_NOOP, NLM_F_REQUEST | NLM_F_ACK, self._seq, 0))
        final = self._seq
        self._sock.send(b"".join(parts))
        self._read_answers(seqs, final, reqs, errors)

    def _read_answers(self, seqs: dict[int, int], final: int, reqs: Sequence[FdbRequest],
                      errors: dict[int, NetlinkError]) -> None:
        buf, sock = self._buf, self._sock
        sock.settimeout(10.0)
        try:
            while True:
                try:
                    n = sock.recv_into(buf)
                except OSError as exc:
                    if exc.errno != errno.ENOBUFS:
                        raise
                    # The receive buffer overflowed and answers were dropped:
                    # whatever has not failed visibly is unknown; say so.
                    for i in seqs.values():
                        errors.setdefault(i, NetlinkError(
                            errno.ENOBUFS, "answer lost, state unknown"))
                    self._discard_pending()
                    return
                off = 0
                while off + 20 <= n:
                    length, mtype, flags, seq, _pid = _HDR.unpack_from(buf, off)
                    if length < 16:
                        break
                    if mtype == NLMSG_ERROR:
                        code = -_ERR.unpack_from(buf, off + 16)[0]
                        i = seqs.get(seq)
                        if code and i is not None:
                            exc = error_from(code, _extack_text(buf, off, length, flags))
                            if not is_success(reqs[i].action, exc):
                                errors[i] = exc
                        if seq == final:
                            return
                    off += (length + 3) & ~3
        finally:
            sock.settimeout(None)

    def _discard_pending(self) -> None:
        while True:
            try:
                self._sock.recv_into(self._buf, 0, socket.MSG_DONTWAIT)
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    return

    def fdb_dump(self, ifindexes: frozenset[int] | set[int] | None = None,
                 require_flags: int = 0) -> Iterator[FdbRecord]:
        """Every AF_BRIDGE FDB entry of the namespace (filtered as
        :func:`decode_fdb_dump` says), decoded by :func:`decode_fdb_dump`,
        a kernel message at a time: the caller keeps what it needs of
        them (two million records at once were ~480 MB of the agent's
        peak). Left before its end, the rest of the dump is read and
        dropped, so the socket serves the next request."""
        self._seq += 1
        msg = _HDR.pack(28, RTM_GETNEIGH, NLM_F_REQUEST | NLM_F_DUMP, self._seq, 0) \
            + _NDMSG.pack(AF_BRIDGE, 0, 0, 0, 0)
        self._sock.send(msg)
        self._sock.settimeout(10.0)
        done = False
        try:
            # A dump message is at most 32 KiB (the kernel's cap); 64 KiB
            # buffers stay below malloc's mmap threshold.
            while not done:
                out: list[FdbRecord] = []
                done = decode_fdb_dump(self._sock.recv(1 << 16), out, ifindexes, require_flags)
                yield from out
        except GeneratorExit:
            while not done:
                done = decode_fdb_dump(self._sock.recv(1 << 16), [], frozenset(), 0)
            raise
        finally:
            self._sock.settimeout(None)


def _extack_text(buf, off: int, length: int, flags: int) -> str:
    """The kernel's message (NLMSGERR_ATTR_MSG) from an error ack, if any."""
    if not flags & NLM_F_ACK_TLVS:
        return ""
    # nlmsghdr + error + the request's header (capped: no payload echoed)
    return _string_attr(buf, off + 16 + 4 + 16, off + length, NLMSGERR_ATTR_MSG) or ""


# ifinfomsg and the link attributes a Link needs (linux/if_link.h)
_IFINFO = struct.Struct("=BxHiII")
RTM_GETLINK = 18
IFLA_MTU, IFLA_MASTER, IFLA_LINKINFO, IFLA_IFALIAS, IFLA_EXT_MASK = 4, 10, 18, 20, 29
IFLA_INFO_KIND, IFLA_INFO_DATA, IFLA_INFO_SLAVE_KIND, IFLA_INFO_SLAVE_DATA = 1, 2, 4, 5
IFLA_VXLAN_ID, IFLA_VXLAN_LOCAL, IFLA_VXLAN_LEARNING, IFLA_VXLAN_PORT = 1, 4, 7, 15
IFLA_VXLAN_LOCAL6 = 17
IFLA_BRPORT_LEARNING = 8
RTEXT_FILTER_SKIP_STATS = 1 << 3
NLA_TYPE_MASK = 0x3FFF


def _attrs(buf, a: int, end: int) -> dict[int, tuple[int, int]]:
    """The attributes in buf[a:end]: type -> (start, end) of the payload."""
    out = {}
    while a + 4 <= end:
        alen, atype = _ATTR.unpack_from(buf, a)
        if alen < 4:
            break
        out[atype & NLA_TYPE_MASK] = (a + 4, a + alen)
        a += (alen + 3) & ~3
    return out


def _text(buf, span) -> str:
    return bytes(buf[span[0]:span[1]]).split(b"\0", 1)[0].decode(errors="replace")


def decode_link(buf, off: int, length: int) -> Link:
    """One RTM_NEWLINK message at ``off`` as a Link (what pyroute2 decoded
    before: 2,000 links took it 3.5 s and ~100 MB at once, an audit's
    first step on a gateway of 1000 networks)."""
    _, _, index, flags, _ = _IFINFO.unpack_from(buf, off + 16)
    top = _attrs(buf, off + 32, off + length)
    u32 = _U32.unpack_from
    name = sys.intern(_text(buf, top[IFLA_IFNAME])) if IFLA_IFNAME in top else None
    kind = slave_kind = None
    vxlan: dict = {}
    port_learning = None
    if IFLA_LINKINFO in top:
        info = _attrs(buf, *top[IFLA_LINKINFO])
        if IFLA_INFO_KIND in info:
            kind = _text(buf, info[IFLA_INFO_KIND])
        if kind == "vxlan" and IFLA_INFO_DATA in info:
            data = _attrs(buf, *info[IFLA_INFO_DATA])
            local = None
            if IFLA_VXLAN_LOCAL in data:
                local = socket.inet_ntop(socket.AF_INET, bytes(buf[slice(*data[IFLA_VXLAN_LOCAL])]))
            elif IFLA_VXLAN_LOCAL6 in data:
                local = socket.inet_ntop(socket.AF_INET6,
                                         bytes(buf[slice(*data[IFLA_VXLAN_LOCAL6])]))
            vxlan = dict(
                vni=u32(buf, data[IFLA_VXLAN_ID][0])[0] if IFLA_VXLAN_ID in data else None,
                local=local,
                port=(socket.ntohs(_U16.unpack_from(buf, data[IFLA_VXLAN_PORT][0])[0])
                      if IFLA_VXLAN_PORT in data else None),
                vxlan_learning=bool(buf[data[IFLA_VXLAN_LEARNING][0]])
                if IFLA_VXLAN_LEARNING in data else False)
        if IFLA_INFO_SLAVE_KIND in info:
            slave_kind = _text(buf, info[IFLA_INFO_SLAVE_KIND])
        if slave_kind == "bridge" and IFLA_INFO_SLAVE_DATA in info:
            slave = _attrs(buf, *info[IFLA_INFO_SLAVE_DATA])
            port_learning = (bool(buf[slave[IFLA_BRPORT_LEARNING][0]])
                             if IFLA_BRPORT_LEARNING in slave else False)
    alias = _text(buf, top[IFLA_IFALIAS]) if IFLA_IFALIAS in top else None
    return Link(index=index, name=name, kind=kind, up=bool(flags & 1),
                master=(u32(buf, top[IFLA_MASTER][0])[0] or None) if IFLA_MASTER in top else None,
                alias=alias or None, port_learning=port_learning,
                mtu=u32(buf, top[IFLA_MTU][0])[0] if IFLA_MTU in top else None, **vxlan)


class Monitor:
    """A socket subscribed to link and neighbour (FDB) changes in the
    namespace: what the kernel reports, decoded as dumps are."""

    def __init__(self, netns: str | None = None, rcvbuf: int = EVENT_RCVBUF):
        self._sock = open_route_socket(netns, RTMGRP_LINK | RTMGRP_NEIGH)
        _size_buffers(self._sock, 0, rcvbuf)
        self._sock.setblocking(False)
        self._buf = bytearray(1 << 16)

    def fileno(self) -> int:
        return self._sock.fileno()

    def close(self) -> None:
        self._sock.close()

    def drain(self) -> tuple[list[tuple[int, int, object]], bool]:
        """Read every pending message without blocking. Returns the events
        as (message type, ifindex, the link's name for a link event, the
        entry (FdbRecord) for an FDB event, or None) and whether the kernel
        dropped some (ENOBUFS: the socket overflowed)."""
        events: list[tuple[int, int, object]] = []
        overflow = False
        while True:
            try:
                n = self._sock.recv_into(self._buf)
            except BlockingIOError:
                return events, overflow
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    overflow = True
                    continue
                raise
            _decode_events(self._buf, n, events)


def _decode_events(buf, n: int, events: list) -> None:
    off = 0
    while off + 16 <= n:
        length, mtype, _flags, _seq, _pid = _HDR.unpack_from(buf, off)
        if length < 16:
            break
        if mtype in (RTM_NEWLINK, RTM_DELLINK) and length >= 32:
            # ifinfomsg: family, pad, type, index, flags, change
            index = struct.unpack_from("=i", buf, off + 20)[0]
            events.append((mtype, index, _ifname(buf, off + 32, off + length)))
        elif mtype in (RTM_NEWNEIGH, RTM_DELNEIGH) and length >= 28:
            index = _NDMSG.unpack_from(buf, off + 16)[1]
            msg = bytearray(buf[off:off + length])
            msg[4:6] = _U16.pack(RTM_NEWNEIGH)  # a deleted entry is laid out as a new one
            records: list[FdbRecord] = []
            decode_fdb_dump(bytes(msg), records)
            events.append((mtype, index, records[0] if records else None))
        off += (length + 3) & ~3


def _ifname(buf, a: int, end: int) -> str | None:
    return _string_attr(buf, a, end, IFLA_IFNAME)


def _string_attr(buf, a: int, end: int, wanted: int) -> str | None:
    """The NUL-terminated string attribute ``wanted`` among buf[a:end]."""
    while a + 4 <= end:
        alen, atype = _ATTR.unpack_from(buf, a)
        if alen < 4:
            break
        if atype == wanted:
            return bytes(buf[a + 4:a + alen]).split(b"\0", 1)[0].decode(errors="replace")
        a += (alen + 3) & ~3
    return None

"""The Linux backend's mobility tap: VXLAN frames that say a watched MAC moved.

A mobile MAC (a VIP holder's, a migrating VM's) that starts sending from a
new VTEP must be noticed within a millisecond, well before any control
plane says so. The gateway already receives that evidence: the VXLAN frame
arriving at one of its underlay addresses whose *inner* source MAC is the
mobile MAC and whose *outer* source IP is not where the MAC is believed to
be. :class:`MobilityTap` reports exactly those frames as :class:`Evidence`;
what to do about them is the caller's business (logic returns operations,
drivers perform them).

Design, and why:

* One ``AF_PACKET``/``SOCK_RAW``/``ETH_P_ALL`` socket per namespace, made
  inside it (``pyroute2.netns.create_socket``) and bound to no interface, so
  it sees the underlay on whatever device carries it, before the VXLAN
  driver decapsulates. Learning in the kernel's VXLAN driver cannot do this
  job: it is off on our devices, and a static entry pins a MAC (see
  DESIGN.md, "Linux VXLAN learning").
* Everything that is not evidence is dropped in the kernel by a classic BPF
  filter, :func:`compile_filter`, so Python never sees ordinary traffic (a
  gateway forwards all of its tenants' VXLAN). The filter is a pure function
  of the watch list, replaced whole by ``SO_ATTACH_FILTER`` (the kernel
  swaps it atomically) whenever the watches change: reconcile from full
  snapshots, no deltas. It keeps only the first 104 bytes of a frame (the
  longest outer IPv4 header plus UDP, VXLAN and the inner Ethernet header).
* The filter's structure: fixed checks (Ethernet device, no VLAN tag,
  IPv4 with a sane header, UDP, not a fragment, destination one of our
  addresses, UDP port, VXLAN I flag), the outer source, inner source MAC
  and VNI put in scratch memory, then one block per distinct VNI (skipped
  with one ``ja`` when the VNI differs) holding one entry per watch:
  ``6 + len(exclude)`` instructions a watch, 3 a VNI, 30 fixed, so
  580 watches with one excluded address each (in one VNI) fit in the
  kernel's 4096.
  A frame that matches no VNI costs 3 instructions per VNI block.
* An outer VLAN tag is tested with the ``SKF_AD_VLAN_TAG_PRESENT``
  ancillary load, not by the ethertype at offset 12: drivers that strip the
  tag on receive (hardware or veth offload) leave 0x0800 there. The same
  frame seen untagged on a VLAN subdevice is accepted there, which is right
  when the underlay address lives on that subdevice.
* A packet socket receives from the moment it exists, before any filter; so
  the socket gets an accept-nothing filter first and is drained, and only
  then does any watch apply. Frames already queued when the watches change
  were accepted by the old filter: :meth:`MobilityTap.read` checks every
  decoded frame again against the *current* watches (and everything else the
  filter checked), so evidence always matches the watches in force.
* Outgoing frames (``PACKET_OUTGOING``) are not evidence: the kernel is asked
  not to loop them to the socket at all (``PACKET_IGNORE_OUTGOING``) and
  read() skips any that still arrive.
* The receive time is the kernel's (``SO_TIMESTAMPNS``), on the
  ``time.time()`` scale, so queueing in the socket does not blur it.

Limits, known and accepted: a frame crossing several devices of the
namespace (a bridge port and its bridge, a bond slave and the bond) is
reported once per device; the filter sees frames before the IP stack
checks them, so a frame the stack later drops (bad checksum) can still be
evidence; an outer IPv6 underlay is not watched.
"""
from __future__ import annotations

import ctypes
import ipaddress
import socket
import struct
import time
from typing import NamedTuple, Sequence

from pyroute2 import netns as pyroute2_netns

# linux/if_ether.h, linux/if_packet.h, linux/if_arp.h, asm-generic/socket.h
ETH_P_ALL, ETH_P_IP, ETH_P_ARP = 0x0003, 0x0800, 0x0806
ARPHRD_ETHER = 1
SOL_PACKET, PACKET_IGNORE_OUTGOING = 263, 23
PACKET_OUTGOING = 4
SO_ATTACH_FILTER, SO_RCVBUFFORCE = 26, 33
SO_TIMESTAMPNS = SCM_TIMESTAMPNS = 35   # the "_OLD" values: struct timespec of two longs
IPPROTO_UDP = 17

# linux/filter.h (classic BPF)
BPF_LD, BPF_LDX, BPF_ST, BPF_ALU, BPF_JMP, BPF_RET = 0x00, 0x01, 0x02, 0x04, 0x05, 0x06
BPF_W, BPF_H, BPF_B = 0x00, 0x08, 0x10
BPF_IMM, BPF_ABS, BPF_IND, BPF_MEM, BPF_MSH = 0x00, 0x20, 0x40, 0x60, 0xa0
BPF_AND = 0x50
BPF_JA, BPF_JEQ, BPF_JGT, BPF_JGE, BPF_JSET = 0x00, 0x10, 0x20, 0x30, 0x40
BPF_K = 0x00
BPF_MAXINSNS = 4096
SKF_AD_OFF = -0x1000
SKF_AD_HATYPE, SKF_AD_VLAN_TAG_PRESENT = 28, 48

# Offsets of the frame, from the outer Ethernet header; "x+" ones follow the
# outer IPv4 header, whose length the filter keeps in X (4 * IHL).
ETH_LEN, UDP_LEN, VXLAN_LEN = 14, 8, 8
IP_VERSION_IHL, IP_FRAG, IP_PROTO, IP_SRC, IP_DST = 14, 20, 23, 26, 30
UDP_DPORT = ETH_LEN + 2                         # x+16
VXLAN_FLAGS = ETH_LEN + UDP_LEN                 # x+22
VXLAN_VNI = VXLAN_FLAGS + 4                     # x+26: VNI in the high 24 bits of a word
INNER = VXLAN_FLAGS + VXLAN_LEN                 # x+30: inner Ethernet header
INNER_SRC_HI, INNER_SRC_LO, INNER_TYPE = INNER + 6, INNER + 10, INNER + 12
VXLAN_I_FLAG = 0x08
IP_MF_OFFSET = 0x3fff
SNAPLEN = INNER + 14 + 60                       # the longest outer IPv4 header: 104 bytes
M_SRC, M_HI, M_LO = 0, 1, 2                     # scratch memory slots

VNI_COST, WATCH_COST = 3, 6                     # instructions; + one per excluded address


class Watch(NamedTuple):
    vni: int                        # the VNI in the VXLAN header (24 bits)
    mac: str                        # inner source MAC, lower-case "aa:bb:cc:dd:ee:ff"
    exclude: tuple[str, ...] = ()   # outer IPv4 sources that are NOT evidence (the current location)


class Evidence(NamedTuple):
    vni: int
    mac: str        # inner source MAC
    src: str        # outer IPv4 source
    dst: str        # outer IPv4 destination (which of our addresses it arrived at)
    at: float       # kernel receive timestamp, time.time() scale (SO_TIMESTAMPNS)
    arp: bool       # inner ethertype is ARP (0x0806)


Insn = tuple[int, int, int, int]


def _ip(addr: str) -> int:
    return int(ipaddress.IPv4Address(addr))


def _mac(mac: str) -> tuple[int, int]:
    """(first four bytes, last two bytes) of a MAC, as the filter loads them."""
    raw = bytes.fromhex(mac.replace(":", ""))
    if len(raw) != 6:
        raise ValueError(f"not a MAC address: {mac!r}")
    return struct.unpack("!IH", raw)


def _check_vni(vni: int) -> int:
    if not 0 <= vni < 1 << 24:
        raise ValueError(f"VNI out of range (24 bits): {vni}")
    return vni


def compile_filter(watches: Sequence[Watch], local_ips: Sequence[str],
                   port: int = 4789) -> list[Insn]:
    """Pure: the classic BPF program (code, jt, jf, k) accepting exactly: IPv4
    (no VLAN tag on the outer frame), UDP, destination port ``port``, outer
    destination in ``local_ips``, not a fragment, VXLAN I flag set, and
    (VNI, inner source MAC) equal to one of the watches with the outer source
    not in its exclude list. The outer IPv4 header may carry options (its
    length is loaded with ``BPF_LDX|BPF_B|BPF_MSH``). An empty watch list (or
    no local address) gives a program that accepts nothing. Raises ValueError
    if the program would exceed 4096 instructions, saying how many watches
    fit."""
    if not watches or not local_ips:
        return [(BPF_RET | BPF_K, 0, 0, 0)]
    by_vni: dict[int, list[Watch]] = {}
    for w in watches:
        by_vni.setdefault(_check_vni(w.vni), []).append(w)
    ips = sorted({_ip(a) for a in local_ips})

    # Symbolic program: ("op", code, jt, jf, k) with jt/jf/k of jumps given as
    # labels, and ("label", name) markers; resolved below.
    prog: list[tuple] = []

    def op(code: int, k: int = 0, jt="", jf="") -> None:
        prog.append(("op", code, jt, jf, k))

    def label(name: str) -> None:
        prog.append(("label", name))

    def ld_abs(size: int, off: int) -> None:
        op(BPF_LD | size | BPF_ABS, off & 0xffffffff)

    # Fixed part: drop at the first check that fails.
    ld_abs(BPF_W, SKF_AD_OFF + SKF_AD_HATYPE)
    op(BPF_JMP | BPF_JEQ | BPF_K, ARPHRD_ETHER, jf="drop")
    ld_abs(BPF_W, SKF_AD_OFF + SKF_AD_VLAN_TAG_PRESENT)
    op(BPF_JMP | BPF_JEQ | BPF_K, 0, jf="drop")
    ld_abs(BPF_H, 12)
    op(BPF_JMP | BPF_JEQ | BPF_K, ETH_P_IP, jf="drop")
    ld_abs(BPF_B, IP_VERSION_IHL)                       # version 4, IHL 5..15
    op(BPF_JMP | BPF_JGE | BPF_K, 0x45, jf="drop")
    op(BPF_JMP | BPF_JGT | BPF_K, 0x4f, jt="drop")
    ld_abs(BPF_B, IP_PROTO)
    op(BPF_JMP | BPF_JEQ | BPF_K, IPPROTO_UDP, jf="drop")
    ld_abs(BPF_H, IP_FRAG)
    op(BPF_JMP | BPF_JSET | BPF_K, IP_MF_OFFSET, jt="drop")
    ld_abs(BPF_W, IP_DST)
    for i, addr in enumerate(ips):
        op(BPF_JMP | BPF_JEQ | BPF_K, addr, jt="ours", jf="drop" if i == len(ips) - 1 else "")
    label("ours")
    op(BPF_LDX | BPF_B | BPF_MSH, IP_VERSION_IHL)       # X = 4 * IHL
    op(BPF_LD | BPF_H | BPF_IND, UDP_DPORT)
    op(BPF_JMP | BPF_JEQ | BPF_K, port, jf="drop")
    op(BPF_LD | BPF_B | BPF_IND, VXLAN_FLAGS)
    op(BPF_JMP | BPF_JSET | BPF_K, VXLAN_I_FLAG, jt=1, jf=0)
    # Every check above drops here, and only they do: the kernel's check that
    # scratch memory is stored before it is loaded follows the instructions in
    # order, through a "ret" as if it fell through, so a drop reached before
    # the stores must come before them too (else EINVAL on attach).
    label("drop")
    op(BPF_RET | BPF_K, 0)
    ld_abs(BPF_W, IP_SRC)
    op(BPF_ST, M_SRC)
    op(BPF_LD | BPF_W | BPF_IND, INNER_SRC_HI)
    op(BPF_ST, M_HI)
    op(BPF_LD | BPF_H | BPF_IND, INNER_SRC_LO)
    op(BPF_ST, M_LO)
    op(BPF_LD | BPF_W | BPF_IND, VXLAN_VNI)
    op(BPF_ALU | BPF_AND | BPF_K, 0xffffff00)           # A = VNI << 8, kept across blocks

    # One block per VNI; A holds the frame's VNI on entry to every block.
    n = 0
    for g, vni in enumerate(sorted(by_vni)):
        label(f"vni{g}")
        op(BPF_JMP | BPF_JEQ | BPF_K, vni << 8, jt=1, jf=0)
        op(BPF_JMP | BPF_JA, f"vni{g + 1}" if g + 1 < len(by_vni) else "none")
        block = by_vni[vni]
        for i, w in enumerate(block):
            hi, lo = _mac(w.mac)
            nxt = f"w{n + 1}" if i + 1 < len(block) else f"end{g}"
            label(f"w{n}")
            op(BPF_LD | BPF_MEM, M_LO)
            op(BPF_JMP | BPF_JEQ | BPF_K, lo, jf=nxt)
            op(BPF_LD | BPF_MEM, M_HI)
            op(BPF_JMP | BPF_JEQ | BPF_K, hi, jf=nxt)
            op(BPF_LD | BPF_MEM, M_SRC)
            for addr in sorted({_ip(a) for a in w.exclude}):
                op(BPF_JMP | BPF_JEQ | BPF_K, addr, jt=nxt)
            op(BPF_RET | BPF_K, SNAPLEN)
            n += 1
        label(f"end{g}")                                # no watch of this VNI matched
        op(BPF_RET | BPF_K, 0)
    label("none")                                       # no VNI matched (jumps go forward only)
    op(BPF_RET | BPF_K, 0)

    size = sum(1 for p in prog if p[0] == "op")
    if size > BPF_MAXINSNS:
        fixed = size - sum(WATCH_COST + len(set(w.exclude)) for w in watches) - VNI_COST * len(by_vni)
        per_watch = WATCH_COST + sum(len(set(w.exclude)) for w in watches) / len(watches)
        fit = int((BPF_MAXINSNS - fixed - VNI_COST * len(by_vni)) // per_watch)
        raise ValueError(
            f"{len(watches)} watches need {size} BPF instructions, more than the kernel's "
            f"{BPF_MAXINSNS}: a watch costs {WATCH_COST} + one per excluded address, a VNI "
            f"{VNI_COST}, the fixed part {fixed}; about {max(fit, 0)} watches like these "
            f"in {len(by_vni)} VNIs fit")
    return _resolve(prog)


def _resolve(prog: list[tuple]) -> list[Insn]:
    where: dict[str, int] = {}
    pc = 0
    for p in prog:
        if p[0] == "label":
            where[p[1]] = pc
        else:
            pc += 1
    out: list[Insn] = []
    for p in prog:
        if p[0] == "label":
            continue
        _, code, jt, jf, k = p
        pc = len(out)

        def off(target) -> int:
            if isinstance(target, int):
                return target
            if target == "":
                return 0
            return where[target] - pc - 1

        if code == BPF_JMP | BPF_JA:
            out.append((code, 0, 0, off(k)))
            continue
        jt, jf = off(jt), off(jf)
        if not (0 <= jt <= 255 and 0 <= jf <= 255):
            raise ValueError("a BPF conditional jump is longer than 255 instructions "
                             "(too many local addresses or excluded addresses in one watch)")
        out.append((code, jt, jf, k))
    return out


def attach_filter(sock: socket.socket, program: Sequence[Insn]) -> None:
    """SO_ATTACH_FILTER: the kernel copies the program and swaps it in atomically."""
    insns = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *i) for i in program))
    fprog = struct.pack("HP", len(program), ctypes.addressof(insns))   # struct sock_fprog
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
    del insns   # kept alive until here; the kernel has its own copy now


class MobilityTap:
    """A packet socket in ``netns`` reporting evidence of watched MACs; see the
    module docstring. ``fileno()`` is readable when evidence may be pending."""

    def __init__(self, netns: str | None, local_ips: Sequence[str], port: int = 4789,
                 rcvbuf: int = 1 << 20):
        self.netns = netns
        self.local_ips = tuple(local_ips)
        self.port = port
        self._local = frozenset(_ip(a) for a in self.local_ips)
        self._watches: dict[tuple[int, bytes], list[frozenset[int]]] = {}
        # flags=0: a missing namespace is an error, never silently created.
        self._sock = pyroute2_netns.create_socket(netns, socket.AF_PACKET, socket.SOCK_RAW,
                                                  socket.htons(ETH_P_ALL), flags=0)
        try:
            attach_filter(self._sock, compile_filter((), ()))
            self._sock.setblocking(False)
            self._drain()                               # whatever arrived before the filter
            self._sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
            self._sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            if rcvbuf:
                try:
                    self._sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf)
                except PermissionError:
                    self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        except BaseException:
            self._sock.close()
            raise

    def fileno(self) -> int:
        return self._sock.fileno()

    def watch(self, watches: Sequence[Watch]) -> None:
        """Watch exactly these (VNI, MAC) pairs from now on, replacing the last
        list; an empty list watches nothing. Plain (vni, mac, exclude)
        tuples are taken too."""
        watches = [w if isinstance(w, Watch) else Watch(*w) for w in watches]
        program = compile_filter(watches, self.local_ips, self.port)
        table: dict[tuple[int, bytes], list[frozenset[int]]] = {}
        for w in watches:
            table.setdefault((w.vni, bytes.fromhex(w.mac.replace(":", ""))), []).append(
                frozenset(_ip(a) for a in w.exclude))
        attach_filter(self._sock, program)
        self._watches = table       # read() checks queued frames against these

    def read(self) -> list[Evidence]:
        """Every piece of evidence pending, without blocking; frames that do not
        decode as evidence for the current watches are skipped."""
        found: list[Evidence] = []
        ancbuf = socket.CMSG_SPACE(16)
        while True:
            try:
                frame, anc, _flags, addr = self._sock.recvmsg(SNAPLEN, ancbuf)
            except (BlockingIOError, InterruptedError):
                return found
            if addr[2] == PACKET_OUTGOING:
                continue
            at = None
            for level, kind, data in anc:
                if level == socket.SOL_SOCKET and kind == SCM_TIMESTAMPNS and len(data) >= 16:
                    sec, nsec = struct.unpack("qq", data[:16])
                    at = sec + nsec * 1e-9
            evidence = self._decode(frame, time.time() if at is None else at)
            if evidence is not None:
                found.append(evidence)

    def _decode(self, f: bytes, at: float) -> Evidence | None:
        """The filter's checks once more, in Python; None unless evidence."""
        if len(f) < IP_DST + 4 or f[12:14] != b"\x08\x00":
            return None
        vihl = f[IP_VERSION_IHL]
        if vihl >> 4 != 4 or vihl & 0xf < 5 or f[IP_PROTO] != IPPROTO_UDP:
            return None
        if struct.unpack_from("!H", f, IP_FRAG)[0] & IP_MF_OFFSET:
            return None
        x = (vihl & 0xf) * 4
        if len(f) < x + INNER_TYPE + 2:
            return None
        src, dst = struct.unpack_from("!II", f, IP_SRC)
        if dst not in self._local or struct.unpack_from("!H", f, x + UDP_DPORT)[0] != self.port:
            return None
        if not f[x + VXLAN_FLAGS] & VXLAN_I_FLAG:
            return None
        vni = struct.unpack_from("!I", f, x + VXLAN_VNI)[0] >> 8
        mac = f[x + INNER_SRC_HI:x + INNER_SRC_HI + 6]
        excludes = self._watches.get((vni, mac))
        if excludes is None or all(src in ex for ex in excludes):
            return None
        return Evidence(vni=vni, mac=mac.hex(":"), src=str(ipaddress.IPv4Address(src)),
                        dst=str(ipaddress.IPv4Address(dst)), at=at,
                        arp=f[x + INNER_TYPE:x + INNER_TYPE + 2] == b"\x08\x06")

    def _drain(self) -> None:
        while True:
            try:
                self._sock.recv(1)
            except (BlockingIOError, InterruptedError):
                return

    def close(self) -> None:
        self._sock.close()

"""The mobility tap against the real kernel, in throwaway namespaces.

Lab: a gateway namespace G with two underlay addresses, 198.18.1.1 on a
veth to compute H1 (198.18.1.11) and 198.18.2.1 on a veth to compute H2
(198.18.2.12). Both computes have real kernel VXLAN devices (learning off)
pointing at the gateway; frames with a chosen inner source MAC are sent
through them with a packet socket. G has no VXLAN device: the tap must see
the frames on the underlay, before any decapsulation.

Outcomes are waited for with a deadline, polling select() on the tap;
"nothing arrives" is asserted by sending a positive control after the
negatives, over the same path, and checking that only the control arrives.
The kernel filter alone (no Python re-check) is tested on a plain packet
socket with hand-built outer frames, including IP options, fragments and a
VLAN tag. Needs root.
"""
from __future__ import annotations

import contextlib
import os
import select
import socket
import statistics
import struct
import time

import pytest
from pyroute2 import netns as pyroute2_netns

from gwagent.dataplane.capture import (Evidence, MobilityTap, Watch, compile_filter)

from netns import run, throwaway_netns

pytestmark = [pytest.mark.functional,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]

GW1, GW2 = "198.18.1.1", "198.18.2.1"
H1, H2 = "198.18.1.11", "198.18.2.12"
MOBILE, OTHER, CONTROL = "02:00:00:00:0a:01", "02:00:00:00:0a:02", "02:00:00:00:0c:01"
ETH_P_ALL = 0x0003


class Lab:
    def __init__(self, g: str, h1: str, h2: str):
        self.g, self.h1, self.h2 = g, h1, h2
        run(g, "ip", "link", "add", "g1", "type", "veth", "peer", "name", "h1", "netns", h1)
        run(g, "ip", "link", "add", "g2", "type", "veth", "peer", "name", "h2", "netns", h2)
        run(g, "ip", "addr", "add", f"{GW1}/24", "dev", "g1")
        run(g, "ip", "addr", "add", f"{GW2}/24", "dev", "g2")
        run(g, "ip", "link", "set", "g1", "up")
        run(g, "ip", "link", "set", "g2", "up")
        for ns, dev, addr, gw in ((h1, "h1", H1, GW1), (h2, "h2", H2, GW2)):
            run(ns, "ip", "addr", "add", f"{addr}/24", "dev", dev)
            run(ns, "ip", "link", "set", dev, "up")
        run(h2, "ip", "route", "add", f"{GW1}/32", "via", GW2)
        for ns, name, vni, local, remote in ((h1, "vx1001", 1001, H1, GW1),
                                             (h1, "vx1002", 1002, H1, GW1),
                                             (h2, "vx1001", 1001, H2, GW2)):
            run(ns, "ip", "link", "add", name, "type", "vxlan", "id", str(vni), "local", local,
                "remote", remote, "dstport", "4789", "nolearning")
            run(ns, "ip", "link", "set", name, "up")
        self.g1_mac = _mac_of(g, "g1")
        self.h1_mac = _mac_of(h1, "h1")
        self._senders: dict[tuple[str, str], socket.socket] = {}

    def sender(self, ns: str, dev: str) -> socket.socket:
        if (ns, dev) not in self._senders:
            sock = pyroute2_netns.create_socket(ns, socket.AF_PACKET, socket.SOCK_RAW, 0, flags=0)
            sock.bind((dev, 0))
            self._senders[ns, dev] = sock
        return self._senders[ns, dev]

    def send(self, ns: str, dev: str, src_mac: str, arp: bool = False) -> None:
        """One inner frame from ``src_mac`` into VXLAN device ``dev`` of ``ns``."""
        self.sender(ns, dev).send(inner_frame(src_mac, arp))

    def close(self) -> None:
        for sock in self._senders.values():
            sock.close()


def _mac_of(ns: str, dev: str) -> bytes:
    out = run(ns, "cat", f"/sys/class/net/{dev}/address").stdout.strip()
    return bytes.fromhex(out.replace(":", ""))


def inner_frame(src_mac: str, arp: bool = False, dst: bytes = b"\x02\x00\x00\x00\x99\x99") -> bytes:
    src = bytes.fromhex(src_mac.replace(":", ""))
    if arp:   # a gratuitous ARP reply: the mobility case
        ip = socket.inet_aton("10.0.0.5")
        body = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 2, src, ip, src, ip)
        return b"\xff" * 6 + src + b"\x08\x06" + body + bytes(18)
    return dst + src + b"\x08\x00" + bytes(46)


@pytest.fixture(scope="module")
def lab():
    with contextlib.ExitStack() as stack:
        names = [stack.enter_context(throwaway_netns("gwt-")) for _ in range(3)]
        built = Lab(*names)
        stack.callback(built.close)
        yield built


@pytest.fixture
def tap(lab):
    t = MobilityTap(lab.g, [GW1, GW2])
    yield t
    t.close()


def collect(tap: MobilityTap, until, timeout: float = 3.0) -> list[Evidence]:
    """Read evidence until ``until(evidence so far)`` holds; fail at the deadline."""
    got: list[Evidence] = []
    deadline = time.monotonic() + timeout
    while not until(got):
        left = deadline - time.monotonic()
        if left <= 0:
            pytest.fail(f"timed out; evidence so far: {got}")
        if select.select([tap], [], [], left)[0]:
            got.extend(tap.read())
    return got


def seen(*macs: str):
    return lambda got: set(macs) <= {e.mac for e in got}


# --- the tap, fed by real VXLAN devices ----------------------------------------


def test_watched_mac_from_elsewhere_is_reported(lab, tap):
    tap.watch([Watch(1001, MOBILE, exclude=(H2,))])
    before = time.time()
    lab.send(lab.h1, "vx1001", MOBILE)
    got = collect(tap, seen(MOBILE))
    after = time.time()
    assert [(e.vni, e.mac, e.src, e.dst, e.arp) for e in got] == [(1001, MOBILE, H1, GW1, False)]
    assert before - 0.001 <= got[0].at <= after


def test_evidence_names_the_address_it_arrived_at(lab, tap):
    tap.watch([Watch(1001, MOBILE, exclude=(H1,))])
    lab.send(lab.h2, "vx1001", MOBILE)
    got = collect(tap, seen(MOBILE))
    assert [(e.vni, e.mac, e.src, e.dst) for e in got] == [(1001, MOBILE, H2, GW2)]


def test_excluded_source_is_no_evidence(lab, tap):
    tap.watch([Watch(1001, MOBILE, exclude=(H1,)), Watch(1001, CONTROL)])
    lab.send(lab.h1, "vx1001", MOBILE)        # from where it is believed to be
    lab.send(lab.h2, "vx1001", MOBILE)        # from elsewhere: evidence
    lab.send(lab.h1, "vx1001", CONTROL)       # after the negative, on its path
    got = collect(tap, lambda g: {(e.mac, e.src) for e in g} >= {(MOBILE, H2), (CONTROL, H1)})
    assert sorted((e.mac, e.src) for e in got) == [(MOBILE, H2), (CONTROL, H1)]


def test_unwatched_mac_and_other_vni_are_no_evidence(lab, tap):
    tap.watch([Watch(1001, MOBILE), Watch(1001, CONTROL)])
    lab.send(lab.h1, "vx1001", OTHER)         # not watched
    lab.send(lab.h1, "vx1002", MOBILE)        # watched MAC, other VNI
    lab.send(lab.h1, "vx1001", CONTROL)
    got = collect(tap, seen(CONTROL))
    assert [(e.vni, e.mac) for e in got] == [(1001, CONTROL)]


def test_a_mac_watched_in_two_vnis(lab, tap):
    tap.watch([Watch(1001, MOBILE, exclude=(H2,)), Watch(1002, MOBILE)])
    lab.send(lab.h1, "vx1002", MOBILE)
    lab.send(lab.h1, "vx1001", MOBILE)
    got = collect(tap, lambda g: len(g) >= 2)
    assert sorted((e.vni, e.mac, e.src) for e in got) == [(1001, MOBILE, H1), (1002, MOBILE, H1)]


def test_nothing_after_watching_nothing(lab, tap):
    tap.watch([Watch(1001, MOBILE)])
    tap.watch([])
    lab.send(lab.h1, "vx1001", MOBILE)
    lab.send(lab.h2, "vx1001", MOBILE)
    tap.watch([Watch(1001, CONTROL)])
    lab.send(lab.h1, "vx1001", CONTROL)
    lab.send(lab.h2, "vx1001", CONTROL)
    got = collect(tap, lambda g: {(e.mac, e.src) for e in g} >= {(CONTROL, H1), (CONTROL, H2)})
    assert sorted((e.mac, e.src) for e in got) == [(CONTROL, H1), (CONTROL, H2)]


def test_arp_is_flagged(lab, tap):
    tap.watch([Watch(1001, MOBILE), Watch(1001, CONTROL)])
    lab.send(lab.h1, "vx1001", MOBILE, arp=True)
    lab.send(lab.h1, "vx1001", CONTROL)
    got = collect(tap, seen(MOBILE, CONTROL))
    assert sorted((e.mac, e.arp) for e in got) == [(MOBILE, True), (CONTROL, False)]


def test_replacing_the_watches_moves_the_exclusion(lab, tap):
    """The mobility cycle: evidence from H2, the caller moves the MAC there
    and re-watches with H2 excluded; then H2 is no evidence and H1 is."""
    tap.watch([Watch(1001, MOBILE, exclude=(H1,))])
    lab.send(lab.h2, "vx1001", MOBILE)
    assert [e.src for e in collect(tap, seen(MOBILE))] == [H2]
    tap.watch([Watch(1001, MOBILE, exclude=(H2,))])
    lab.send(lab.h2, "vx1001", MOBILE)
    lab.send(lab.h1, "vx1001", MOBILE)
    lab.send(lab.h2, "vx1001", MOBILE)        # H2's path ends after its negatives...
    tap.watch([Watch(1001, MOBILE, exclude=(H2,)), Watch(1001, CONTROL)])
    lab.send(lab.h2, "vx1001", CONTROL)       # ...with a control
    got = collect(tap, lambda g: {e.mac for e in g} == {MOBILE, CONTROL})
    assert sorted((e.mac, e.src) for e in got) == [(MOBILE, H1), (CONTROL, H2)]


def test_a_missing_namespace_is_an_error():
    with pytest.raises(OSError):
        MobilityTap("gwt-does-not-exist", [GW1])
    assert "gwt-does-not-exist" not in pyroute2_netns.listnetns()


def test_latency_from_send_to_read(lab, tap, capsys):
    """sendto() in H1 to read() returning in G; printed, and asserted loosely
    (the bar is a millisecond; a loaded test machine gets ten)."""
    tap.watch([Watch(1001, MOBILE)])
    sock = lab.sender(lab.h1, "vx1001")
    frame = inner_frame(MOBILE)
    for _ in range(10):                       # warm up: ARP, caches
        sock.send(frame)
        collect(tap, seen(MOBILE))
    total, kernel = [], []
    for _ in range(200):
        wall, t0 = time.time(), time.perf_counter()
        sock.send(frame)
        got = collect(tap, seen(MOBILE))
        total.append(time.perf_counter() - t0)
        kernel.append(got[0].at - wall)
        assert len(got) == 1
    with capsys.disabled():
        print(f"\nmobility tap latency over 200 frames: send->read median "
              f"{statistics.median(total) * 1e6:.0f} us (p90 "
              f"{statistics.quantiles(total, n=10)[-1] * 1e6:.0f} us, max {max(total) * 1e6:.0f} us); "
              f"send->kernel timestamp median {statistics.median(kernel) * 1e6:.0f} us")
    assert statistics.median(total) < 0.010


# --- the kernel filter alone, on hand-built outer frames -------------------------


def _checksum(header: bytes) -> int:
    total = sum(struct.unpack(f"!{len(header) // 2}H", header))
    while total > 0xffff:
        total = (total & 0xffff) + (total >> 16)
    return ~total & 0xffff


def outer_frame(lab: Lab, tag: int, inner_src: str, *, vni: int = 1001, src: str = H1,
                dst: str = GW1, dport: int = 4789, flags: int = 0x08, frag: int = 0,
                proto: int = 17, options: bytes = b"", vlan: int | None = None) -> bytes:
    """A VXLAN frame from H1's veth to G's, tagged by the inner destination MAC."""
    inner = inner_frame(inner_src, dst=bytes([2, 0, 0, 0, 0, tag]))
    vxlan = struct.pack("!B3xI", flags, vni << 8)
    udp = struct.pack("!HHHH", 54321, dport, 8 + len(vxlan) + len(inner), 0)
    ihl = 5 + len(options) // 4
    hdr = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, ihl * 4 + len(udp) + len(vxlan) + len(inner),
                      tag, frag, 64, proto, 0, socket.inet_aton(src), socket.inet_aton(dst)) + options
    hdr = hdr[:10] + struct.pack("!H", _checksum(hdr)) + hdr[12:]
    eth = lab.g1_mac + lab.h1_mac + (struct.pack("!HH", 0x8100, vlan) if vlan is not None else b"")
    return eth + b"\x08\x00" + hdr + udp + vxlan + inner


def attach(sock: socket.socket, program) -> None:
    import ctypes
    buf = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *i) for i in program))
    sock.setsockopt(socket.SOL_SOCKET, 26, struct.pack("HP", len(program), ctypes.addressof(buf)))


def test_kernel_filter_accepts_exactly_the_evidence(lab):
    sock = pyroute2_netns.create_socket(lab.g, socket.AF_PACKET, socket.SOCK_RAW,
                                        socket.htons(ETH_P_ALL), flags=0)
    try:
        attach(sock, compile_filter([], [GW1]))
        sock.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            while True:
                sock.recv(1)
        watches = [Watch(1001, MOBILE, exclude=("198.18.1.77",)), Watch(1001, CONTROL)]
        attach(sock, compile_filter(watches, [GW1, GW2]))
        negatives = {
            1: dict(inner_src=OTHER),                       # unwatched MAC
            2: dict(inner_src=MOBILE, vni=1002),            # other VNI
            3: dict(inner_src=MOBILE, src="198.18.1.77"),   # excluded source
            4: dict(inner_src=MOBILE, dst="198.18.1.99"),   # not our address
            5: dict(inner_src=MOBILE, dport=4790),          # other UDP port
            6: dict(inner_src=MOBILE, flags=0x00),          # VXLAN I flag clear
            7: dict(inner_src=MOBILE, frag=0x2000),         # first fragment (MF)
            8: dict(inner_src=MOBILE, frag=0x0010),         # later fragment
            9: dict(inner_src=MOBILE, proto=6),             # TCP
            10: dict(inner_src=MOBILE, vlan=100),           # VLAN-tagged outer frame
        }
        positives = {
            20: dict(inner_src=MOBILE),
            21: dict(inner_src=MOBILE, options=b"\x01\x01\x01\x00"),        # IHL 6
            22: dict(inner_src=MOBILE, options=b"\x01" * 39 + b"\x00"),     # IHL 15
            23: dict(inner_src=CONTROL, src="198.18.1.77", dst=GW2),
        }
        out = pyroute2_netns.create_socket(lab.h1, socket.AF_PACKET, socket.SOCK_RAW, 0, flags=0)
        with contextlib.closing(out):
            out.bind(("h1", 0))
            for tag, kw in [*negatives.items(), *positives.items()]:
                out.send(outer_frame(lab, tag, **kw))
        tags: list[int] = []
        longest = 0
        deadline = time.monotonic() + 3
        while not set(positives) <= set(tags) and time.monotonic() < deadline:
            if select.select([sock], [], [], 0.1)[0]:
                with contextlib.suppress(BlockingIOError):
                    while True:
                        frame, addr = sock.recvfrom(2048)
                        if addr[2] != socket.PACKET_OUTGOING:
                            tags.append(_tag_of(frame))
                            longest = max(longest, len(frame))
        assert sorted(tags) == sorted(positives)
        assert longest == 104          # the filter keeps the headers only (IHL 15 frame: 150)
    finally:
        sock.close()


def _tag_of(frame: bytes) -> int:
    x = (frame[14] & 0xf) * 4
    return frame[14 + x + 16 + 5]              # last byte of the inner destination MAC


# --- compile_filter, pure ----------------------------------------------------------


def macs(n: int) -> list[str]:
    return [f"02:00:00:00:{i >> 8:02x}:{i & 0xff:02x}" for i in range(n)]


def test_empty_watch_list_accepts_nothing():
    assert compile_filter([], [GW1]) == [(0x06, 0, 0, 0)]
    assert compile_filter([Watch(1, MOBILE)], []) == [(0x06, 0, 0, 0)]


def test_size_limit_says_how_many_watches_fit():
    fit = [Watch(1001, m, exclude=(H1,)) for m in macs(580)]
    assert len(compile_filter(fit, [GW1])) <= 4096
    with pytest.raises(ValueError, match=r"about 580 watches"):
        compile_filter(fit + [Watch(1001, "02:00:00:00:ff:ff", exclude=(H1,))], [GW1])
    bare = [Watch(1001, m) for m in macs(677)]       # no exclusions: 6 instructions a watch
    assert len(compile_filter(bare, [GW1])) <= 4096
    with pytest.raises(ValueError, match=r"more than the kernel's 4096"):
        compile_filter(bare + [Watch(1001, "02:00:00:00:ff:ff")], [GW1])


def test_bad_input_is_refused():
    with pytest.raises(ValueError):
        compile_filter([Watch(1 << 24, MOBILE)], [GW1])
    with pytest.raises(ValueError):
        compile_filter([Watch(1, "02:00:00:00:00")], [GW1])
    with pytest.raises(ValueError):
        compile_filter([Watch(1, MOBILE)], ["198.18.1.300"])


def test_every_jump_lands_inside_the_program():
    watches = [Watch(vni, m, exclude=(H1, H2)) for vni in (7, 1001, 5000) for m in macs(40)]
    program = compile_filter(watches, [GW1, GW2, "198.18.3.1"])
    for pc, (code, jt, jf, k) in enumerate(program):
        if code & 0x07 == 0x05:
            targets = [k] if code == 0x05 else [jt, jf]
            assert all(pc + 1 + t < len(program) for t in targets), pc
    assert program[-1][0] == 0x06

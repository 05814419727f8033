"""Probes: sequence-numbered UDP streams, ICMP echo and a gratuitous ARP.

``ping`` cannot measure loss or convergence finely (``ping -i 0.01`` really
sends every ~16 ms and says nothing about order), so the lab sends its own
UDP datagrams: each carries a run id, a sequence number and the sender's
CLOCK_MONOTONIC send time (one clock for every namespace of the host). The
receiver counts received, lost, duplicated and reordered datagrams, the
longest run of missing sequence numbers, and the first datagram that got
through, which is how convergence after a change is measured.

Sockets are opened *inside* a namespace from the calling process with
``pyroute2.netns.create_socket`` (a short-lived child joins the namespace,
makes the socket and hands it back), so tests need no subprocess; the same
functions run as ``python -m gwagent.lab.probe send|recv`` under ``ip netns
exec``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import select
import socket
import struct
import sys
import threading
import time

from pyroute2 import netns

HEADER = struct.Struct("!IQd")  # run id, sequence number, send time (monotonic)
DEFAULT_PORT = 7471
ETH_P_ARP = 0x0806
ETH_P_IP = 0x0800


def ns_socket(ns: str | None, family=socket.AF_INET, kind=socket.SOCK_DGRAM,
              proto: int = 0) -> socket.socket:
    """A socket in ``ns`` (None: here). Never creates a namespace."""
    if ns is None:
        return socket.socket(family, kind, proto)
    return netns.create_socket(ns, family, kind, proto, flags=0)


@dataclasses.dataclass
class Stats:
    """What a receiver saw of one run."""

    expected: int = 0
    received: int = 0
    duplicates: int = 0
    reordered: int = 0
    max_seq: int = -1
    longest_gap: int = 0         # longest run of missing sequence numbers
    first_seq: int | None = None
    first_sent_at: float | None = None   # send time of the first datagram received
    first_received_at: float | None = None
    seen: set = dataclasses.field(default_factory=set, repr=False)

    @property
    def lost(self) -> int:
        return max(0, self.expected - len(self.seen))

    def add(self, seq: int, sent_at: float, now: float) -> None:
        if seq in self.seen:
            self.duplicates += 1
            return
        if self.first_seq is None:
            self.first_seq, self.first_sent_at, self.first_received_at = seq, sent_at, now
        if seq < self.max_seq:
            self.reordered += 1
        self.seen.add(seq)
        self.received += 1
        self.max_seq = max(self.max_seq, seq)

    def finish(self, expected: int) -> "Stats":
        self.expected = expected
        gap = run = 0
        for seq in range(expected):
            run = 0 if seq in self.seen else run + 1
            gap = max(gap, run)
        self.longest_gap = gap
        return self

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data.pop("seen")
        data["lost"] = self.lost
        return data


def send(sock: socket.socket, dst: str, port: int, count: int, interval: float,
         run_id: int = 0, stop: threading.Event | None = None) -> int:
    """Send ``count`` datagrams every ``interval`` seconds (absolute schedule)."""
    start = time.monotonic()
    sent = 0
    for seq in range(count):
        if stop is not None and stop.is_set():
            break
        delay = start + seq * interval - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        try:
            sock.sendto(HEADER.pack(run_id, seq, time.monotonic()) + b"\0" * 32, (dst, port))
            sent += 1
        except OSError:
            pass  # e.g. EHOSTUNREACH while the neighbour is unresolved: counts as lost
    return sent


def receive(sock: socket.socket, count: int, timeout: float, run_id: int = 0,
            idle: float | None = None) -> Stats:
    """Count datagrams of ``run_id`` until ``count`` arrived, ``timeout``
    passed, or nothing came for ``idle`` seconds after the first one."""
    stats = Stats()
    deadline = time.monotonic() + timeout
    last = None
    while len(stats.seen) < count:
        now = time.monotonic()
        wait = deadline - now
        if idle is not None and last is not None:
            wait = min(wait, last + idle - now)
        if wait <= 0:
            break
        ready, _, _ = select.select([sock], [], [], wait)
        if not ready:
            continue
        data = sock.recv(2048)
        if len(data) < HEADER.size:
            continue
        rid, seq, sent_at = HEADER.unpack_from(data)
        if rid != run_id:
            continue
        last = time.monotonic()
        stats.add(seq, sent_at, last)
    return stats.finish(count)


def udp_receiver(ns: str | None, port: int = DEFAULT_PORT) -> socket.socket:
    sock = ns_socket(ns)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind(("0.0.0.0", port))
    return sock


def stream(src_ns: str, dst_ns: str, dst_ip: str, count: int, interval: float = 0.002,
           port: int = DEFAULT_PORT, extra_receivers: tuple[str, ...] = (),
           grace: float = 0.5, during=None) -> list[Stats]:
    """Send ``count`` probes from ``src_ns`` to ``dst_ip``; count them in
    ``dst_ns`` (and in ``extra_receivers``, which should see none). ``during``
    runs in this thread while the stream flows. Returns the receivers' stats
    in order (dst first)."""
    run_id = int.from_bytes(os.urandom(4), "big")
    receivers = [udp_receiver(ns, port) for ns in (dst_ns, *extra_receivers)]
    sender = ns_socket(src_ns)
    results: list[Stats | None] = [None] * len(receivers)
    timeout = count * interval + grace + 1.0

    def collect(i: int) -> None:
        results[i] = receive(receivers[i], count, timeout, run_id)

    threads = [threading.Thread(target=collect, args=(i,), daemon=True)
               for i in range(len(receivers))]
    for t in threads:
        t.start()
    try:
        tx = threading.Thread(target=send, args=(sender, dst_ip, port, count, interval, run_id),
                              daemon=True)
        tx.start()
        if during is not None:
            during()
        tx.join()
        for t in threads:
            t.join()
    finally:
        for sock in (sender, *receivers):
            sock.close()
    return results


def time_to_reach(src_ns: str, dst_ns: str, dst_ip: str, since: float, timeout: float = 3.0,
                  interval: float = 0.002, port: int = DEFAULT_PORT) -> float | None:
    """Seconds from ``since`` (monotonic) until a probe sent from ``src_ns``
    reached ``dst_ns``; None if none did within ``timeout``."""
    run_id = int.from_bytes(os.urandom(4), "big")
    rx = udp_receiver(dst_ns, port)
    tx = ns_socket(src_ns)
    stop = threading.Event()
    count = int(timeout / interval)
    sender = threading.Thread(target=send, args=(tx, dst_ip, port, count, interval, run_id,
                                                 stop), daemon=True)
    try:
        sender.start()
        stats = receive(rx, 1, timeout + 0.5, run_id)
    finally:
        stop.set()
        sender.join()
        tx.close()
        rx.close()
    if stats.first_sent_at is None:
        return None
    return max(0.0, stats.first_sent_at - since)


# -- ICMP echo -----------------------------------------------------------------

def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def ping(ns: str, dst: str, attempts: int = 3, timeout: float = 1.0) -> float | None:
    """ICMP echo from ``ns`` to ``dst``: RTT in seconds of the first reply, or None."""
    sock = ns_socket(ns, socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    ident = int.from_bytes(os.urandom(2), "big")
    try:
        for seq in range(attempts):
            body = struct.pack("!d", time.monotonic()) + b"gwagent-lab"
            header = struct.pack("!BBHHH", 8, 0, 0, ident, seq)
            packet = struct.pack("!BBHHH", 8, 0, _checksum(header + body), ident, seq) + body
            sent = time.monotonic()
            sock.sendto(packet, (dst, 0))
            deadline = sent + timeout
            while (left := deadline - time.monotonic()) > 0:
                ready, _, _ = select.select([sock], [], [], left)
                if not ready:
                    break
                data, (src, _) = sock.recvfrom(2048)
                ihl = (data[0] & 0x0F) * 4
                kind, _, _, rid, rseq = struct.unpack_from("!BBHHH", data, ihl)
                if kind == 0 and rid == ident and rseq == seq and src == dst:
                    return time.monotonic() - sent
    finally:
        sock.close()
    return None


# -- gratuitous ARP ------------------------------------------------------------

def announce(ns: str, mac: str, ip: str, ifname: str = "eth0", count: int = 2) -> None:
    """Broadcast gratuitous ARPs from ``ns``, as a migrated guest announces itself."""
    sock = ns_socket(ns, socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP))
    try:
        sock.bind((ifname, ETH_P_ARP))
        hw = bytes.fromhex(mac.replace(":", ""))
        addr = socket.inet_aton(ip)
        frame = (b"\xff" * 6 + hw + struct.pack("!H", ETH_P_ARP)
                 + struct.pack("!HHBBH", 1, ETH_P_IP, 6, 4, 1)
                 + hw + addr + b"\0" * 6 + addr)
        for _ in range(count):
            sock.send(frame)
    finally:
        sock.close()


# -- command line --------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gwagent.lab.probe",
        description="Sequence-numbered UDP probes (run under 'ip netns exec NS').")
    sub = parser.add_subparsers(dest="command", required=True)
    snd = sub.add_parser("send", help="send COUNT datagrams to DST every INTERVAL ms")
    snd.add_argument("dst")
    rcv = sub.add_parser("recv", help="count datagrams; print JSON statistics")
    for sp in (snd, rcv):
        sp.add_argument("--port", type=int, default=DEFAULT_PORT)
        sp.add_argument("--count", type=int, default=1000)
        sp.add_argument("--run-id", type=int, default=0)
    snd.add_argument("--interval-ms", type=float, default=2.0)
    rcv.add_argument("--timeout", type=float, default=10.0, help="seconds, overall")
    rcv.add_argument("--idle", type=float, default=None,
                     help="stop after this many seconds without datagrams")
    args = parser.parse_args(argv)
    if args.command == "send":
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sent = send(sock, args.dst, args.port, args.count, args.interval_ms / 1000,
                        args.run_id)
        print(json.dumps({"sent": sent}))
        return 0
    with udp_receiver(None, args.port) as sock:
        stats = receive(sock, args.count, args.timeout, args.run_id, args.idle)
    print(json.dumps(stats.to_dict()))
    return 0 if stats.lost == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

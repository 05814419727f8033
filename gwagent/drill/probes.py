"""Sequence-numbered UDP probes to a VIP, and responders that say who answered.

One sender thread sends a probe from every client every ``interval`` on an
absolute schedule; one receiver thread collects the replies; one responder
thread answers in every VM that may hold the VIP. A probe carries the run
id, the client's index, its sequence number and its send time
(CLOCK_MONOTONIC, one clock for every namespace of the host); a reply adds
the answering holder's index. Sockets are made inside the namespaces from
this process (``pyroute2.netns.create_socket``), so no subprocess is needed.

A responder lives in a VM whose NIC the VRRP drill takes down: its send
errors (ENETDOWN, ENETUNREACH and friends while the link is down) are
counted and survived, never fatal (DESIGN.md: a responder that dies makes
every later run look like a network that never converges).
"""
from __future__ import annotations

import dataclasses
import os
import select
import socket
import struct
import threading
import time

from pyroute2 import netns

PORT = 7480
SO_TIMESTAMPNS = 35      # struct timespec of two longs, CLOCK_REALTIME
_TIMESPEC = struct.Struct("=qq")
PROBE = struct.Struct("!IIQd")        # run id, client, seq, sent (monotonic)
REPLY = struct.Struct("!IIQdI")       # ... + holder
PAD = b"\0" * 16


def ns_socket(ns: str) -> socket.socket:
    return netns.create_socket(ns, socket.AF_INET, socket.SOCK_DGRAM, 0, flags=0)


@dataclasses.dataclass
class Reply:
    seq: int
    sent: float
    received: float
    holder: str


@dataclasses.dataclass
class ClientRecord:
    name: str
    site: str
    sent: list = dataclasses.field(default_factory=list)      # (seq, time)
    replies: list = dataclasses.field(default_factory=list)   # Reply
    send_errors: int = 0


class Prober:
    """Probes from ``clients`` [(name, site, ns)] to ``vip``; responders in
    ``holders`` [(name, ns)]. Use as a context manager; ``records`` holds
    what each client sent and which holder answered what."""

    def __init__(self, clients, holders, vip: str, interval: float = 0.001,
                 port: int = PORT):
        self.clients, self.holders = list(clients), list(holders)
        self.vip, self.interval, self.port = vip, interval, port
        self.run_id = int.from_bytes(os.urandom(4), "big")
        self.records = [ClientRecord(name, site) for name, site, _ in self.clients]
        self.responder_errors = 0
        self._halt = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._socks: list[socket.socket] = []

    def __enter__(self) -> "Prober":
        self.tx = [ns_socket(ns) for _, _, ns in self.clients]
        for sock in self.tx:
            # The kernel's receive time: a reply's arrival is not blurred by
            # this process's own work (threads share one interpreter lock).
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        self._offset = time.time() - time.monotonic()
        self.rx = []
        for _, ns in self.holders:
            sock = ns_socket(ns)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("0.0.0.0", self.port))
            self.rx.append(sock)
        self._socks = self.tx + self.rx
        for sock in self._socks:
            sock.setblocking(False)
        for target in (self._respond, self._receive, self._send):
            thread = threading.Thread(target=target, daemon=True, name=target.__name__)
            thread.start()
            self._threads.append(thread)
        return self

    def __exit__(self, *exc) -> None:
        self._halt.set()
        for thread in self._threads:
            thread.join(2.0)
        for sock in self._socks:
            sock.close()

    # -- threads ---------------------------------------------------------
    def _send(self) -> None:
        start, seq = time.monotonic(), 0
        while not self._halt.is_set():
            delay = start + seq * self.interval - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            for i, sock in enumerate(self.tx):
                now = time.monotonic()
                try:
                    sock.sendto(PROBE.pack(self.run_id, i, seq, now) + PAD,
                                (self.vip, self.port))
                    self.records[i].sent.append((seq, now))
                except OSError:
                    self.records[i].sent.append((seq, now))
                    self.records[i].send_errors += 1
            seq += 1

    def _receive(self) -> None:
        index = {sock.fileno(): i for i, sock in enumerate(self.tx)}
        while not self._halt.is_set():
            ready, _, _ = select.select(self.tx, [], [], 0.05)
            for sock in ready:
                while True:
                    try:
                        data, anc, _flags, _addr = sock.recvmsg(256, 64)
                    except (BlockingIOError, InterruptedError):
                        break
                    except OSError:
                        break
                    now = time.monotonic()
                    for level, kind, raw in anc:
                        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS \
                                and len(raw) >= _TIMESPEC.size:
                            sec, nsec = _TIMESPEC.unpack_from(raw)
                            now = sec + nsec / 1e9 - self._offset
                    if len(data) < REPLY.size:
                        continue
                    rid, client, seq, sent, holder = REPLY.unpack_from(data)
                    if rid != self.run_id or client != index[sock.fileno()]:
                        continue
                    if holder < len(self.holders):
                        self.records[client].replies.append(
                            Reply(seq, sent, now, self.holders[holder][0]))

    def _respond(self) -> None:
        holder_of = {sock.fileno(): i for i, sock in enumerate(self.rx)}
        while not self._halt.is_set():
            ready, _, _ = select.select(self.rx, [], [], 0.05)
            for sock in ready:
                while True:
                    try:
                        data, addr = sock.recvfrom(256)
                    except (BlockingIOError, InterruptedError):
                        break
                    except OSError:
                        self.responder_errors += 1
                        break
                    if len(data) < PROBE.size:
                        continue
                    rid, client, seq, sent = PROBE.unpack_from(data)
                    if rid != self.run_id:
                        continue
                    try:
                        sock.sendto(REPLY.pack(rid, client, seq, sent, holder_of[sock.fileno()])
                                    + PAD, addr)
                    except OSError:  # NIC down and friends: survive (module docstring)
                        self.responder_errors += 1

    # -- questions ---------------------------------------------------------
    def answered_by(self, holder: str, since: float) -> bool:
        """Has every client had a reply from ``holder`` received after ``since``?"""
        return all(any(r.holder == holder and r.received > since for r in rec.replies[-200:])
                   for rec in self.records)

    def wait_answered_by(self, holder: str, since: float, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.answered_by(holder, since):
                return True
            time.sleep(0.005)
        return self.answered_by(holder, since)

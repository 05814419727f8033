"""The OpenFlow backend's mobility tap: evidence by packet-in from the switch.

The same interface as the Linux backend's BPF tap
(gwagent.dataplane.capture.MobilityTap: ``watch()``, ``read()``,
``fileno()``, ``close()``) and the same evidence, but the switch finds it:
the watches become flows in table MOBILITY (gwagent.openflow.flows,
``watch_flows``) that copy a watched MAC's frames from a VTEP that is not
its current place to the controller, and the switch's packet-ins are read
back as :class:`~gwagent.dataplane.capture.Evidence`.

Why, against the BPF tap on the same gateway (measured side by side in
bench/test_openflow.py, figures in flows.py and the README): the evidence
comes from the pipeline that forwards the frame, so it needs no kernel
socket on the underlay (a DPDK or offloaded NIC shows the kernel nothing),
no 4096-instruction filter (a watch is two flows, any number of them), and
it sees exactly the frames the switch classified as ours.

* A watch list is replaced whole, in one atomic bundle (delete every watch
  flow, add the new ones): never a moment without watches, never a delta.
* Packet-ins pass the switch's controller meter (``OFPM_CONTROLLER``,
  ``rate`` packets/s, ``burst``): over the rate, the copy to the agent is
  dropped, never the frame's forwarding. What does arrive is queued here
  (bounded: :data:`QUEUE`) by os-ken's event thread, which only queues and
  wakes the reader: it is the thread that reads the switch's replies.
* A packet-in queued when the watches changed was sent by the old flows:
  :meth:`PacketInTap.read` checks each against the watches in force, as
  the BPF tap does with frames queued in its socket.
* After the switch reconnects (OVS restarted: its flows and meters are
  gone), the next ``read()`` installs the meter and the watches again; the
  reader is woken for it.
"""
from __future__ import annotations

import collections
import logging
import os
import threading
from typing import Sequence

from os_ken.ofproto import ofproto_v1_4 as ofp

from gwagent.dataplane.capture import Evidence, Watch
from gwagent.openflow import flows as fl
from gwagent.openflow.switch import SwitchError

LOG = logging.getLogger(__name__)

#: Packet-ins kept for the reader at most (the meter bounds the rate; this
#: bounds memory if the reader stalls).
QUEUE = 4096


class PacketInTap:
    def __init__(self, switch, rate: int = 100, burst: int = 25):
        self.switch, self.rate, self.burst = switch, rate, burst
        self._queue: collections.deque = collections.deque(maxlen=QUEUE)
        self._lock = threading.Lock()
        self._watches: list[Watch] = []
        self._table: dict[tuple[int, str], list[frozenset[str]]] = {}
        self._dirty = True   # the meter and the watches must be (re)installed
        self._r, self._w = os.pipe()
        os.set_blocking(self._r, False)
        os.set_blocking(self._w, False)
        switch.listen(self)
        try:
            self._install()
        except SwitchError as exc:   # retried at the next read(), after a reconnection
            LOG.warning("mobility: evidence flows not installed yet: %s", exc)

    # -- the tap interface ----------------------------------------------------
    def fileno(self) -> int:
        return self._r

    def watch(self, watches: Sequence[Watch]) -> None:
        watches = [w if isinstance(w, Watch) else Watch(*w) for w in watches]
        for w in watches:
            if not 0 <= w.vni < 1 << 24:
                raise ValueError(f"VNI out of range (24 bits): {w.vni}")
        table: dict[tuple[int, str], list[frozenset[str]]] = {}
        for w in watches:
            table.setdefault((w.vni, w.mac.lower()), []).append(frozenset(w.exclude))
        self._watches = watches
        self._send_watches()
        self._table = table

    def read(self) -> list[Evidence]:
        try:
            while os.read(self._r, 4096):
                pass
        except BlockingIOError:
            pass
        if self._dirty:
            self._install()
        with self._lock:
            queued = list(self._queue)
            self._queue.clear()
        found = []
        for msg, at in queued:
            evidence = fl.evidence_of(msg, at)
            if evidence is None:
                continue
            excludes = self._table.get((evidence.vni, evidence.mac))
            if excludes is None or all(evidence.src in ex for ex in excludes):
                continue
            found.append(evidence)
        return found

    def close(self) -> None:
        self.switch.unlisten(self)
        for fd in (self._r, self._w):
            try:
                os.close(fd)
            except OSError:
                pass

    # -- from the switch (os-ken's event thread: queue and wake only) ---------
    def packet_in(self, msg, at: float) -> None:
        if fl.kind_of(msg.cookie) != fl.K_WATCH:
            return
        with self._lock:
            self._queue.append((msg, at))
        self._wake()

    def connected(self) -> None:
        self._dirty = True
        self._wake()

    # -- installing -------------------------------------------------------------
    def _wake(self) -> None:
        try:
            os.write(self._w, b"x")
        except (BlockingIOError, OSError):
            pass

    def _install(self) -> None:
        self._dirty = True
        errors = self.switch.request([fl.evidence_meter(self.rate, self.burst)])
        if errors:  # it exists (a restarted agent, an earlier install): modify it
            errors = self.switch.request([fl.evidence_meter(self.rate, self.burst,
                                                            ofp.OFPMC_MODIFY)])
            if errors:
                raise SwitchError(f"the controller meter ({self.rate} packets/s): "
                                  f"{errors[0]}")
        self._send_watches()
        self._dirty = False

    def _send_watches(self) -> None:
        failed = self.switch.bundle([fl.delete_watches()] + fl.watch_flows(self._watches))
        if failed:
            self._dirty = True
            raise SwitchError(f"watch flows of {len(self._watches)} watches: "
                              f"{next(iter(failed.values()))}")

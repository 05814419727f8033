"""Telling systemd how the agent is doing: the sd_notify protocol, by hand.

Under ``Type=notify`` systemd names a unix datagram socket in
``$NOTIFY_SOCKET`` (a name that starts with ``@`` is in the abstract
namespace) and reads newline-separated ``KEY=VALUE`` lines from each
datagram it receives there (sd_notify(3)). The agent says:

* ``READY=1`` once, after its first pass that put a desired state in force
  and programmed it without an error. A peer cloud that is down or has not
  answered yet does not hold it back (a gateway must come up while a peer
  cloud is down, that is what it is for); it shows in ``STATUS=``;
* ``STATUS=`` the one-line summary of every pass (``systemctl status``
  shows it);
* ``WATCHDOG=1`` from the reconcile loop, at half the interval systemd asks
  for in ``$WATCHDOG_USEC`` (``WatchdogSec=``). Only the loop feeds it, so a
  loop stuck in a pass stops feeding and systemd restarts the agent; a hung
  source does not, its reader runs in a thread of its own;
* ``STOPPING=1`` on SIGTERM.

Why by hand: the protocol is one ``sendto`` of a few bytes, and the one
pure-Python library for it on PyPI (``sdnotify`` 0.3.2) has had no release
since 2017; systemd's own bindings (``systemd-python``) compile against
libsystemd. Outside systemd (no ``$NOTIFY_SOCKET``) every call does nothing.
A notification that cannot be sent is logged once and dropped: telling
systemd must never stall or stop the gateway.
"""
from __future__ import annotations

import logging
import os
import socket
import time
from typing import Callable, Mapping

LOG = logging.getLogger(__name__)


class Notifier:
    def __init__(self, environ: Mapping[str, str] | None = None,
                 clock: Callable[[], float] = time.monotonic):
        env = os.environ if environ is None else environ
        path = env.get("NOTIFY_SOCKET") or None
        self.address = "\0" + path[1:] if path and path.startswith("@") else path
        #: seconds between two WATCHDOG=1, or None when systemd asks for none
        self.watchdog_interval = _watchdog_interval(env)
        self.clock = clock
        self.ready = False
        self._fed: float | None = None
        self._failed = False
        self._sock = None
        if self.address:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.setblocking(False)

    def send(self, *lines: str) -> bool:
        """One datagram of ``lines``; False if there is no one to tell or it
        could not be sent."""
        if self._sock is None:
            return False
        try:
            self._sock.sendto("\n".join(lines).encode(), self.address)
            return True
        except OSError as exc:  # systemd gone, socket full: drop, never block
            if not self._failed:
                LOG.warning("cannot notify systemd at %s: %s", self.address.lstrip("\0"), exc)
                self._failed = True
            return False

    def passed(self, serving: bool, summary: str) -> None:
        """After a pass: its summary, and READY=1 the first time ``serving``."""
        status = "STATUS=" + " ".join(summary.split())[:400]
        if serving and not self.ready:
            self.ready = self.send("READY=1", status)
            if self.ready:
                LOG.info("told systemd: ready")
        else:
            self.send(status)

    def tick(self) -> None:
        """From the loop: WATCHDOG=1 when half the watchdog's time has gone."""
        if self.watchdog_interval is None:
            return
        now = self.clock()
        if self._fed is None or now - self._fed >= self.watchdog_interval:
            self._fed = now
            self.send("WATCHDOG=1")

    def stopping(self) -> None:
        self.send("STOPPING=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _watchdog_interval(env: Mapping[str, str]) -> float | None:
    """Half of $WATCHDOG_USEC, if it is for this process (sd_watchdog_enabled(3))."""
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    pid = env.get("WATCHDOG_PID")
    if usec <= 0 or (pid and pid != str(os.getpid())):
        return None
    return usec / 2e6

"""Neutron's own notifications: what changed, heard as it changes.

With ``[oslo_messaging_notifications] driver = messagingv2`` in its
configuration, a Neutron API server publishes ``port.create.end``,
``port.update.end`` and ``port.delete.end`` (and the same of networks and
subnets) on the ``notifications`` topic of its message bus: a topic
exchange named after its ``control_exchange`` (``neutron`` unless set),
routing key ``notifications.info``. :class:`Feed` binds a queue of its own
to that exchange (exclusive, deleted with the connection: nothing is left
on the operator's broker, and no other consumer of ``notifications.info``,
Ceilometer say, loses a message to it) and keeps what it heard for
:class:`gwagent.neutron.source.NeutronSite`, which then reads only the
ports that changed, by ID.

What a feed can promise, and what it cannot
    Events between two connections are lost: a broker restart, a network
    cut, the feed's own start. So every (re)connection bumps ``epoch``, and
    the source reads everything again after it; while the feed is not
    connected (``live()`` false) the source works as without one, by
    listing. Anything heard that cannot be told apart (a network or a
    subnet changed, a message that does not parse) asks for a full read
    too. kombu, not oslo.messaging's listener, is used for exactly this:
    oslo.messaging reconnects silently and never says that a gap happened.

The exchange is only ever declared passively: Neutron creates it with its
own settings (``amqp_durable_queues`` and friends) at its first
notification, and a declaration of ours with other flags would make its
publishing fail. Until it exists the feed retries, and the source lists.
"""
from __future__ import annotations

import json
import logging
import socket
import threading
import time
import uuid
from typing import Callable

LOG = logging.getLogger(__name__)

PORT_EVENTS = ("port.create.end", "port.update.end", "port.delete.end")
#: events after which everything is read again (rare: an operator's change)
FULL_EVENTS = ("network.update.end", "network.delete.end", "subnet.create.end",
               "subnet.update.end", "subnet.delete.end")


def kombu_url(url: str) -> str:
    """An oslo.messaging transport URL (``rabbit://user:pass@h1:5672,user:pass@h2:5672/vhost``)
    as kombu's failover list (``amqp://...@h1:5672/vhost;amqp://...@h2:5672/vhost``)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ValueError(f"not a transport URL: {url!r}")
    if scheme in ("rabbit", "amqp", "kombu+rabbit"):
        scheme = "amqp"
    hosts, slash, vhost = rest.partition("/")
    vhost, _, _query = vhost.partition("?")
    return ";".join(f"{scheme}://{host}{slash}{vhost}" for host in hosts.split(","))


def redacted(url: str) -> str:
    """``url`` without its passwords, for logs and status."""
    scheme, sep, rest = url.partition("://")
    hosts, slash, tail = rest.partition("/")
    out = []
    for host in hosts.split(","):
        cred, at, addr = host.rpartition("@")
        user = cred.partition(":")[0]
        out.append(f"{user}:***@{addr}" if at else addr)
    return f"{scheme}{sep}{','.join(out)}{slash}{tail}"


class Heard:
    """What a feed heard since it was last taken."""

    def __init__(self):
        #: port ID -> (deleted, the port as the notification carried it)
        self.ports: dict[str, tuple[bool, dict]] = {}
        self.full: str | None = None              # why everything must be read again

    def __bool__(self) -> bool:
        return bool(self.ports) or self.full is not None


class Feed(threading.Thread):
    """One cloud's notifications, heard in a thread of its own.

    ``on_event`` is called (from the feed's thread) after each message that
    was kept, to wake whoever reads the source."""

    RETRY = 2.0          # seconds between connection attempts
    HEARTBEAT = 10       # AMQP heartbeat: a dead broker is noticed within ~2 of them

    def __init__(self, url: str, exchange: str = "neutron", topic: str = "notifications",
                 name: str = "gwagent", on_event: Callable[[], None] | None = None):
        super().__init__(name=f"notifications-{name}", daemon=True)
        self.url, self.exchange, self.topic = url, exchange, topic
        self.queue_name = f"{name}-{uuid.uuid4().hex[:12]}"
        self.on_event = on_event
        self.halt = threading.Event()
        self._lock = threading.Lock()
        self._heard = Heard()
        self._live = False
        #: bumps at each connection: events before it may be lost
        self.epoch = 0
        #: counters for status
        self.messages = self.kept = self.connects = 0
        self.error: str | None = None
        self.since: float | None = None   # wall time of the last change of live

    # -- for the source -----------------------------------------------------------
    def live(self) -> bool:
        return self._live

    def take(self) -> Heard:
        with self._lock:
            heard, self._heard = self._heard, Heard()
        return heard

    def status(self) -> dict:
        return {"url": redacted(self.url), "exchange": self.exchange, "topic": self.topic,
                "live": self._live, "since": self.since, "connects": self.connects,
                "messages": self.messages, "kept": self.kept, "error": self.error}

    def stop(self) -> None:
        self.halt.set()

    # -- the thread -----------------------------------------------------------------
    def run(self) -> None:
        import kombu
        while not self.halt.is_set():
            try:
                with kombu.Connection(kombu_url(self.url), heartbeat=self.HEARTBEAT,
                                      connect_timeout=5) as conn:
                    self._consume(conn, kombu)
            except Exception as exc:  # noqa: BLE001 - any failure: not live, retry
                self._down(exc)
            self.halt.wait(self.RETRY)
        self._set_live(False)

    def _consume(self, conn, kombu) -> None:
        conn.ensure_connection(max_retries=1)
        exchange = kombu.Exchange(self.exchange, type="topic", passive=True)
        queue = kombu.Queue(self.queue_name, exchange=exchange,
                            routing_key=f"{self.topic}.info", durable=False,
                            exclusive=True, auto_delete=True)
        with kombu.Consumer(conn.channel(), [queue], callbacks=[self._message],
                            accept=["json"], no_ack=True):
            # bound: from here on nothing is missed, so what came before
            # (unknown) is read again by the source
            with self._lock:
                self.epoch += 1
                self._heard.full = "the notification feed (re)connected"
            self.connects += 1
            self.error = None
            self._set_live(True)
            LOG.info("notifications of %s (exchange %s) heard: the source reads only "
                     "what changed", redacted(self.url), self.exchange)
            self._wake()
            while not self.halt.is_set():
                try:
                    conn.drain_events(timeout=1.0)
                except socket.timeout:
                    conn.heartbeat_check()

    def _down(self, exc: Exception) -> None:
        text = f"{type(exc).__name__}: {exc}"
        if "NOT_FOUND" in text or "404" in text:
            text = (f"exchange {self.exchange!r} not found on the bus (no notification sent "
                    f"yet, or Neutron's [oslo_messaging_notifications] driver is not "
                    f"messagingv2): {text}")
        if self._live or self.error is None:
            LOG.warning("notifications of %s not heard (%s); the source lists until they "
                        "are back", redacted(self.url), text)
        self.error = text
        self._set_live(False)
        self._wake()

    def _set_live(self, live: bool) -> None:
        if live != self._live:
            self._live, self.since = live, time.time()

    def _wake(self) -> None:
        if self.on_event is not None:
            self.on_event()

    def _message(self, body, message) -> None:
        self.messages += 1
        try:
            if isinstance(body, (bytes, str)):
                body = json.loads(body)
            if "oslo.message" in body:   # the messagingv2 envelope
                body = json.loads(body["oslo.message"])
            event, payload = body.get("event_type"), body.get("payload") or {}
        except (ValueError, TypeError, AttributeError) as exc:
            with self._lock:
                self._heard.full = f"a notification that does not parse ({exc})"
            self._wake()
            return
        with self._lock:
            if event in PORT_EVENTS:
                ports = payload.get("ports") or [payload.get("port") or {}]
                for port in ports:
                    port = port if isinstance(port, dict) else {}
                    pid = port.get("id") or payload.get("port_id")
                    if pid:
                        self._heard.ports[pid] = (event == "port.delete.end", port)
            elif event in FULL_EVENTS:
                self._heard.full = f"{event} heard"
            else:
                return
            self.kept += 1
        self._wake()

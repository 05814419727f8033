"""The controller end of one Open vSwitch bridge, on os-ken as a library.

os-ken (the maintained fork of Ryu) has no manager command any more; it is
embedded here with its native (threading) hub: its ``OFPHandler`` does the
handshake and echo, a :class:`GatewayApp` of ours takes the replies. The
listening socket is made by us, inside the gateway's network namespace, so
OVS in that namespace connects to ``tcp:127.0.0.1:PORT`` while the agent
runs outside it; each connection is served by os-ken's ``Datapath``.

Requests are correlated by xid (:meth:`Switch.bundle`, :meth:`Switch.dump`);
changes go out as one OpenFlow bundle, committed atomically, so the switch
never holds half a change. A connection or disconnection wakes the agent
(:meth:`Switch.fileno`): OVS restarted means its flows are gone, and the
next pass puts them back. A flow of ours deleted by anyone is reported by
the switch (our flows carry ``send_flow_rem``) and handed to the backend
(:meth:`Switch.removed`), which tells its own deletes' echoes from someone
else's. Flow monitors would also report changes in place, but os-ken 4.2.2
cannot parse OVS's OpenFlow 1.4 flow-monitor updates (measured: "malformed
OpenFlow packet" on a removal).
"""
from __future__ import annotations

import logging
import os
import socket
import struct
import threading
import time

from os_ken.base import app_manager
from os_ken.controller import controller, ofp_event, ofp_handler
from os_ken.controller.handler import DEAD_DISPATCHER, MAIN_DISPATCHER, set_ev_cls
from os_ken.lib import hub
from os_ken.ofproto import ofproto_parser
from os_ken.ofproto import ofproto_v1_4 as ofp
from os_ken.ofproto import ofproto_v1_4_parser as parser
from pyroute2 import netns as pyroute2_netns

from gwagent.openflow.flows import BUNDLE_FLAGS, COOKIE_BASE, COOKIE_MASK, DP, Prebuilt

LOG = logging.getLogger(__name__)


class SwitchError(Exception):
    pass


def _daemon_spawn(func, *args, **kwargs):
    """os-ken's native hub starts its threads (event loops, a connection's
    send and echo loops) as non-daemon threads it cannot stop (its kill()
    is a no-op): they kept a finished agent, or a test run, from exiting.
    Ours are daemons; everything they do is asked for and waited on by us."""
    thread = hub.HubThread(func, args, kwargs)
    thread.daemon = True
    thread.start()
    return thread


if hub.HUB_TYPE == "native":
    hub.spawn = _daemon_spawn


class _Handshake(ofp_handler.OFPHandler):
    """os-ken's handshake handler without its own listener (ours is in the
    gateway's namespace)."""

    def start(self):
        return app_manager.OSKenApp.start(self)


_SETUP = threading.Lock()


def _app_manager() -> app_manager.AppManager:
    """os-ken routes events through one registry per process (its design):
    the handshake handler is made once, on first use."""
    mgr = app_manager.AppManager.get_instance()
    with _SETUP:
        if ofp_event.NAME not in app_manager.SERVICE_BRICKS:
            mgr.instantiate(_Handshake).start()
    return mgr


_HEADER = struct.Struct("!BBHI")
_ETH_DST = 0x80000606  # OXM header: class OPENFLOW_BASIC, field ETH_DST, no mask, 6 bytes


def _eth_dst(data, at: int, end: int) -> str | None:
    """The eth_dst of an OXM match's fields in ``data[at:end]``."""
    while at + 4 <= end:
        (head,) = struct.unpack_from("!I", data, at)
        if head == _ETH_DST:
            return data[at + 4:at + 10].hex(":")
        at += 4 + (head & 0xFF)
    return None


class _Datapath(controller.Datapath):
    """os-ken's connection with a receive loop of ours. os-ken reads a
    message header and then its body (two system calls a message), parses
    every message into objects and queues it for the apps' threads; the
    answers of our requests and the switch's flow removals arrive by the
    hundred thousand after a bulk change (100k removals took it longer than
    OVS's inactivity probe: the switch disconnected). Here one read takes
    what the socket holds, and the messages on that path (errors, barrier
    and bundle-control replies, echo requests, flow removals) are read by
    hand in this thread, once connected; everything else (handshake,
    multipart replies, packet-ins, port status) goes through os-ken as
    before."""

    READ = 1 << 18

    def __init__(self, sock, addr, switch: "Switch"):
        super().__init__(sock, addr)
        self.switch = switch

    def _fast(self, msg_type: int, xid: int, data) -> bool:
        if self.state != MAIN_DISPATCHER:
            return False
        sw = self.switch
        if msg_type == ofp.OFPT_BARRIER_REPLY or msg_type == ofp.OFPT_BUNDLE_CONTROL:
            sw._reply(self, xid)
        elif msg_type == ofp.OFPT_ERROR:
            kind, code = struct.unpack_from("!HH", data, 8)
            sw._reply(self, xid, error=f"OpenFlow error type {kind} code {code}")
        elif msg_type == ofp.OFPT_FLOW_REMOVED:
            (cookie,) = struct.unpack_from("!Q", data, 8)
            (length,) = struct.unpack_from("!H", data, 50)
            sw._flow_removed(self, cookie, lambda: _eth_dst(data, 52, 48 + length))
        elif msg_type == ofp.OFPT_ECHO_REQUEST:
            self.send(_HEADER.pack(ofp.OFP_VERSION, ofp.OFPT_ECHO_REPLY, len(data), xid)
                      + bytes(data[8:]))
        else:
            return False
        return True

    @controller._deactivate  # as os-ken's: the socket closed when the loop ends
    def _recv_loop(self):
        buf = bytearray()
        while self.state != DEAD_DISPATCHER:
            try:
                ret = self.socket.recv(self.READ)
            except socket.timeout:
                continue
            except (EOFError, OSError):
                break
            if not ret:
                break
            buf += ret
            at, size = 0, len(buf)
            while size - at >= 8:
                version, msg_type, msg_len, xid = _HEADER.unpack_from(buf, at)
                msg_len = max(msg_len, 8)
                if size - at < msg_len:
                    break
                data = memoryview(buf)[at:at + msg_len].tobytes()
                at += msg_len
                if self._fast(msg_type, xid, data):
                    continue
                msg = ofproto_parser.msg(self, version, msg_type, msg_len, xid, data)
                if msg and self.ofp_brick is not None:
                    ev = ofp_event.ofp_msg_to_ev(msg)
                    self.ofp_brick.send_event_to_observers(ev, self.state)
                    for handler in self.ofp_brick.get_handlers(ev):
                        if self.state in handler.callers[ev.__class__].dispatchers:
                            handler(ev)
            del buf[:at]


class _Pending:
    def __init__(self, xids: range):
        self.xids = xids  # consecutive: membership and index by arithmetic
        self.last = xids[-1]  # its answer ends the request
        self.errors: dict[int, str] = {}
        self.replies: list = []
        self.done = threading.Event()


class GatewayApp(app_manager.OSKenApp):
    OFP_VERSIONS = [ofp.OFP_VERSION]

    def __init__(self, *args, switch: "Switch", **kwargs):
        super().__init__(*args, **kwargs)
        self.name = f"gwagent-{id(switch):x}"
        self.switch = switch

    @set_ev_cls(ofp_event.EventOFPStateChange, [MAIN_DISPATCHER, DEAD_DISPATCHER])
    def _state(self, ev):
        self.switch._state(ev.datapath, ev.state == MAIN_DISPATCHER)

    @set_ev_cls(ofp_event.EventOFPErrorMsg, MAIN_DISPATCHER)
    def _error(self, ev):
        msg = ev.msg
        self.switch._reply(msg.datapath, msg.xid, error=f"OpenFlow error type {msg.type} "
                                                        f"code {msg.code}")

    @set_ev_cls([ofp_event.EventOFPBundleCtrlMsg, ofp_event.EventOFPBarrierReply,
                 ofp_event.EventOFPFlowStatsReply, ofp_event.EventOFPGroupDescStatsReply],
                MAIN_DISPATCHER)
    def _answer(self, ev):
        msg = ev.msg
        more = bool(getattr(msg, "flags", 0) & ofp.OFPMPF_REPLY_MORE)
        self.switch._reply(msg.datapath, msg.xid, reply=msg, final=not more)

    @set_ev_cls(ofp_event.EventOFPFlowRemoved, MAIN_DISPATCHER)
    def _flow_removed(self, ev):  # (read by _Datapath; this for any other connection)
        msg = ev.msg
        self.switch._flow_removed(msg.datapath, msg.cookie, lambda: msg.match.get("eth_dst"))

    @set_ev_cls(ofp_event.EventOFPPacketIn, MAIN_DISPATCHER)
    def _packet_in(self, ev):
        self.switch._packet_in(ev.msg)

    def _send_event(self, ev, state):
        # A packet-in (mobility evidence) is handed over in the connection's
        # receive thread, not queued for the app's event thread: one thread
        # hop less on the failover path (the listener only queues and wakes).
        if isinstance(ev, ofp_event.EventOFPPacketIn) and state == MAIN_DISPATCHER:
            self.switch._packet_in(ev.msg)
            return
        super()._send_event(ev, state)


class Switch:
    """One OVS bridge's controller connection (module docstring)."""

    def __init__(self, netns: str | None, address: str = "127.0.0.1", port: int = 6653,
                 timeout: float = 10.0):
        self.netns, self.address, self.port, self.timeout = netns, address, port, timeout
        self.datapath = None
        self.connects = 0
        self.changes = 0  # connections and disconnections
        self._removed: list[tuple[int, str | None]] = []
        self._lock = threading.Lock()
        self._connected = threading.Event()
        self._pending: dict[int, _Pending] = {}
        self._next_xid = 1 << 31
        self._listeners: list = []
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._mgr = _app_manager()
        self._app = self._mgr.instantiate(GatewayApp, switch=self)
        self._app.start()
        self._listener = pyroute2_netns.create_socket(netns, socket.AF_INET, socket.SOCK_STREAM) \
            if netns else socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._listener.bind((address, port))
        except OSError as exc:
            self._listener.close()
            raise SwitchError(f"cannot listen for the switch on {address}:{port} "
                              f"(netns {netns or 'current'}): {exc}") from None
        self._listener.listen(4)
        self._closed = False
        threading.Thread(target=self._accept, name="openflow-accept", daemon=True).start()

    # -- connections ----------------------------------------------------------
    def _accept(self) -> None:
        while not self._closed:
            try:
                sock, addr = self._listener.accept()
            except OSError:
                return
            dp = _Datapath(sock, addr, self)
            threading.Thread(target=self._serve, args=(dp,), name="openflow-dp",
                             daemon=True).start()

    def _serve(self, dp) -> None:
        try:
            dp.serve()
        finally:
            self._state(dp, False)

    def _state(self, dp, up: bool) -> None:
        with self._lock:
            if up:
                self.datapath = dp
                self.connects += 1
                self.changes += 1
                self._connected.set()
                LOG.info("openflow: switch %016x connected from %s", dp.id or 0, dp.address)
            elif self.datapath is dp:
                self.datapath = None
                self._connected.clear()
                self.changes += 1
                LOG.warning("openflow: switch disconnected; flows stay (fail_mode=secure)")
                for pending in self._pending.values():
                    pending.errors.setdefault(-1, "switch disconnected")
                    pending.done.set()
            else:
                return
            listeners = list(self._listeners)
        if up:
            for listener in listeners:
                listener.connected()
        if not up and dp.send_q is not None:
            # os-ken joins the connection's send loop, which waits on its
            # queue for ever: a last message that closes it ends both.
            dp.send(b"", close_socket=True)
        self._wake()

    def listen(self, listener) -> None:
        """``listener.packet_in(msg, at)`` for every packet-in (``at``: when
        it reached us, time.time() scale), in os-ken's event thread, and
        ``listener.connected()`` on every (re)connection: both must only
        queue and wake, never send and wait (that thread reads the replies)."""
        with self._lock:
            self._listeners.append(listener)

    def unlisten(self, listener) -> None:
        with self._lock:
            if listener in self._listeners:
                self._listeners.remove(listener)

    def _packet_in(self, msg) -> None:
        at = time.time()
        with self._lock:
            if msg.datapath is not self.datapath:
                return
            listeners = list(self._listeners)
        for listener in listeners:
            listener.packet_in(msg, at)

    def _flow_removed(self, dp, cookie: int, mac) -> None:
        """A flow of ours was deleted (by us or anyone): kept for
        :meth:`removed` as (cookie, MAC of its match or None; ``mac()``
        reads it)."""
        if cookie & COOKIE_MASK != COOKIE_BASE:
            return
        mac = mac()
        with self._lock:
            if dp is not self.datapath:
                return
            self._removed.append((cookie, mac))
        self._wake()

    def removed(self) -> list[tuple[int, str | None]]:
        """The flows of ours deleted since the last call."""
        with self._lock:
            out, self._removed = self._removed, []
        return out

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except BlockingIOError:
            pass

    def wait_connected(self, timeout: float | None = None):
        if not self._connected.wait(self.timeout if timeout is None else timeout):
            raise SwitchError(f"the switch has not connected to {self.address}:{self.port} "
                              f"within {self.timeout if timeout is None else timeout:.0f}s")
        return self.datapath

    def fileno(self) -> int:
        return self._wake_r

    def drain(self) -> bool:
        got = False
        try:
            while os.read(self._wake_r, 4096):
                got = True
        except BlockingIOError:
            pass
        return got

    # -- requests -------------------------------------------------------------
    def _reply(self, dp, xid, reply=None, error=None, final=True) -> None:
        with self._lock:
            if dp is not self.datapath:
                return
            for pending in self._pending.values():
                if xid in pending.xids:
                    if error is not None:
                        pending.errors[xid] = error
                    if reply is not None:
                        pending.replies.append(reply)
                    if final and xid == pending.last:
                        pending.done.set()
                    return

    #: bytes per socket write of a long request: os-ken's send loop writes
    #: one while we encode the next, and the switch works on the first
    CHUNK = 256 * 1024

    def _take_xids(self, count: int) -> range:
        """``count`` consecutive xids (a request's messages answer in order)."""
        with self._lock:
            first = self._next_xid
            if first + count > 0xFFFFFFFF:
                first = 1 << 31
            self._next_xid = first + count
        return range(first, first + count)

    def _send(self, msgs: list, bundle_id: int = 0) -> _Pending:
        dp = self.wait_connected()
        xids = self._take_xids(len(msgs))
        pending = _Pending(xids)
        with self._lock:
            self._pending[xids[-1]] = pending
        chunks, size, i = [], 0, 0
        while i < len(msgs):
            msg = msgs[i]
            if isinstance(msg, Prebuilt) and not bundle_id:  # a bare flow-mod (request())
                data = msg.flow_mod(xids[i])
                i += 1
            elif isinstance(msg, Prebuilt):  # the bulk path: bytes patched from a template
                j = i + 1
                while (j < len(msgs) and j - i < 2048 and isinstance(msgs[j], Prebuilt)
                       and msgs[j].encoder is msg.encoder):
                    j += 1
                data = msg.encoder.encode_many([m.entry for m in msgs[i:j]], xids[i],
                                               bundle_id)
                i = j
            else:
                msg.set_xid(xids[i])
                msg.serialize()
                data = msg.buf
                i += 1
            chunks.append(data)
            size += len(data)
            if size >= self.CHUNK:
                dp.send(b"".join(chunks))
                chunks, size = [], 0
        if chunks:
            dp.send(b"".join(chunks))
        return pending

    def _wait(self, pending: _Pending, what: str) -> _Pending:
        try:
            if not pending.done.wait(self.timeout):
                raise SwitchError(f"{what}: no answer from the switch within {self.timeout:.0f}s")
        finally:
            with self._lock:
                self._pending.pop(pending.last, None)
        if -1 in pending.errors:
            raise SwitchError(f"{what}: the switch disconnected")
        return pending

    def bundle(self, msgs: list) -> dict[int, str]:
        """Send ``msgs`` in one atomic bundle; {index: error} of the messages
        the switch refused (then nothing of the bundle was applied).

        The switch checks each message as it is added and commits whatever
        was added, so the adds are followed by a barrier first: a refused
        add discards the bundle, and only a clean one is committed."""
        if not msgs:
            return {}
        bundle_id = self._take_xids(1)[0]
        flags = BUNDLE_FLAGS

        def ctrl(kind):
            return parser.OFPBundleCtrlMsg(DP, bundle_id, kind, flags, [])
        adds = [m if isinstance(m, Prebuilt) else parser.OFPBundleAddMsg(DP, bundle_id, flags, m, [])
                for m in msgs]
        started = time.monotonic()
        what = f"bundle of {len(msgs)} messages"
        staged = self._wait(self._send([ctrl(ofp.OFPBCT_OPEN_REQUEST)] + adds
                                       + [parser.OFPBarrierRequest(DP)], bundle_id), what)
        first = staged.xids[0]
        errors = {x - first - 1: e for x, e in staged.errors.items()
                  if 0 <= x - first - 1 < len(msgs)}
        if staged.errors:
            self._wait(self._send([ctrl(ofp.OFPBCT_DISCARD_REQUEST)]), what)
            reason = next(iter(errors.values()), None) or "; ".join(staged.errors.values())
            return {i: errors.get(i, f"rolled back with its bundle ({reason})")
                    for i in range(len(msgs))}
        done = self._wait(self._send([ctrl(ofp.OFPBCT_COMMIT_REQUEST)]), what)
        LOG.debug("openflow: %s in %.1f ms", what, (time.monotonic() - started) * 1000)
        if done.errors:
            reason = "; ".join(sorted(set(done.errors.values())))
            return {i: f"bundle refused at commit: {reason}" for i in range(len(msgs))}
        return {}

    def request(self, msgs: list) -> dict[int, str]:
        """Send ``msgs`` and a barrier (for what bundles cannot carry, such
        as meters); {index: error} of the refused ones."""
        if not msgs:
            return {}
        pending = self._wait(self._send(list(msgs) + [parser.OFPBarrierRequest(DP)]),
                             f"request of {len(msgs)} messages")
        first = pending.xids[0]
        return {x - first: e for x, e in pending.errors.items() if 0 <= x - first < len(msgs)}

    def dump_flows(self, cookie: int, mask: int, table: int = ofp.OFPTT_ALL) -> list:
        """The flows whose cookie matches; in one ``table`` if given (the
        switch then scans that table only, not every flow of the bridge)."""
        req = parser.OFPFlowStatsRequest(DP, 0, table, ofp.OFPP_ANY, ofp.OFPG_ANY,
                                         cookie, mask, parser.OFPMatch())
        pending = self._wait(self._send([req]), "flow dump")
        return [stat for reply in pending.replies for stat in reply.body]

    def dump_groups(self) -> list:
        req = parser.OFPGroupDescStatsRequest(DP, 0)
        pending = self._wait(self._send([req]), "group dump")
        return [stat for reply in pending.replies for stat in reply.body]

    def close(self) -> None:
        self._closed = True
        try:
            self._listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._listener.close()
        dp = self.datapath
        if dp is not None:
            dp.close()
        try:
            self._mgr.uninstantiate(self._app.name)
        except KeyError:
            pass
        os.close(self._wake_r)
        os.close(self._wake_w)

"""The agent: reconcile full snapshots, on a timer and on every change signal.

Concurrency: threads with one job each, and nothing shared but values
behind one lock (``Agent.lock``) and a wake-up pipe:

* one **reader** per source (the local site, each peer; gwagent.control.views)
  keeps that source's last good snapshot, on its own schedule, with its own
  deadlines and backoff. A hung, slow or dead cloud delays only what comes
  from that cloud;
* the **registrar** brings the local registry of remote ports in step with
  the latest desired state (a hung own Neutron delays registrations, never
  the dataplane);
* the **mobility worker** moves mobile MACs the moment a frame says so;
* the **dataplane loop** (the main thread) builds the desired state from
  the views, plans against what the backend observes and applies the plan.
  It never calls a source or a registry, so no other failure domain can
  stall it: repairs, local changes and moves go on at their usual speed.

A pass validates the views into a ``Desired`` (operator inconsistencies
keep the last good state in force and are reported). A source that never
answered yet is *unknown*: what it may own in the dataplane and the registry
is left alone, neither programmed anew nor withdrawn. Events only wake the
loop (a source's new snapshot, a kernel report about an owned object, the
resync timer); a lost event therefore costs at most one resync interval,
never permanent drift. :meth:`Agent.run_pass` does all of it in one call,
without threads, for tests and one-shot use.

Failures are isolated per item: a failed operation or remote port is retried
with a doubling delay capped at ``backoff_max`` while everything else goes
on. An exception anywhere in a pass (a backend, a source, the status write)
is logged with its cause and retried; the agent keeps running. Time is
injected (``clock``, ``wall``) so passes are deterministic in tests; the
only blocking wait is in :meth:`Agent.run`.

Mobile MACs (gwagent.control.mobility) move between passes: a
:class:`MobilityWorker` thread reads the backend's tap and applies a move
the moment a frame says so, under :attr:`Agent.lock`; a pass takes the
table's locations as input and applies no operation for a mobile MAC whose
sequence number changed since it planned, so the latest move always wins.
Events a pass causes itself (the kernel echoes every change) are told apart
from foreign ones by the backend, so a change that arrives during a pass
starts another pass, and our own echoes do not.
"""
from __future__ import annotations

import collections
import dataclasses
import gc
import json
import logging
import os
import select
import threading
import time
from pathlib import Path
from typing import Callable, Sequence

from gwagent.control import planner, registrar
from gwagent.control.mobility import Decision, MobilityTable
from gwagent.control.observed import Mirror, desired_part
from gwagent.control.sources import Registry, SiteSource, SourceError, atomic_write
from gwagent.control.views import Reader, SourceView
from gwagent.control.world import Static, World
from gwagent.hotpath import gc_paused
from gwagent.model import Desired, Site, ValidationError
from gwagent.state import (SITE, TRANSIT, GatewayState, Location, MacOp, NetworkOp, admission,
                           mobile_entry, with_mobile)

LOG = logging.getLogger(__name__)


class Backoff:
    """Per-item retry schedule: doubling delays, capped."""

    def __init__(self, initial: float, cap: float):
        self.initial, self.cap = initial, cap
        self._items: dict[object, tuple[int, float]] = {}

    def ready(self, key, now: float) -> bool:
        entry = self._items.get(key)
        return entry is None or now >= entry[1]

    def failed(self, key, now: float) -> float:
        count = self._items.get(key, (0, 0.0))[0] + 1
        delay = min(self.cap, self.initial * (2 ** (count - 1)))
        self._items[key] = (count, now + delay)
        return delay

    def succeeded(self, key) -> None:
        self._items.pop(key, None)

    def next_due(self) -> float | None:
        return min((due for _, due in self._items.values()), default=None)

    def __len__(self) -> int:
        return len(self._items)


@dataclasses.dataclass
class PassResult:
    ok: bool = True
    reason: str = ""
    at: float = 0.0
    elapsed_ms: float = 0.0
    ops: dict = dataclasses.field(default_factory=dict)
    failed: dict = dataclasses.field(default_factory=dict)  # failed operations by kind
    errors: list = dataclasses.field(default_factory=list)
    deferred: int = 0
    registered: int = 0
    unregistered: int = 0
    source_error: str | None = None
    over_budget: bool = False


class Agent:
    def __init__(self, local: SiteSource, peers: Sequence[SiteSource],
                 registry: Registry | None, backend, *,
                 status_path: Path | None = None,
                 resync_interval: float = 10.0, poll_interval: float = 0.1,
                 backoff_initial: float = 0.5, backoff_max: float = 30.0,
                 mobility: MobilityTable | None = None,
                 read_deadline: float = 10.0, pass_budget: float = 1.0,
                 ingress_filter: bool = False, mac_guard: bool = False,
                 holder=None, node: str = "", audit_interval: float = 60.0,
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time):
        self.backend = backend
        #: [gateway] high_availability = vrrp: what says whether this node
        #: holds the site's addresses (gwagent.dataplane.addresses); None:
        #: the site's only gateway, always active.
        self.holder = holder
        self.node = node
        self.role = "active" if holder is None else "standby"
        self.role_since: float | None = None
        self.role_error: str | None = None
        #: [gateway] ingress_filter: who may send VXLAN to the gateway
        #: (state.admission), enforced by the backend's admit()
        self.ingress_filter = ingress_filter
        self.ingress: dict = {}
        self._offenders_logged: set[tuple[str, str]] = set()
        #: The desired state, kept by the sources' changes (gwagent.control.world)
        self.world = World(mac_guard, getattr(backend, "guard_by_source", True))
        self._mac_guard = mac_guard
        self.guard_status: dict = {}
        #: gwagent.metrics.Metrics, when [metrics] serves them
        self.metrics = None
        self.last_ok_wall: float | None = None
        self._claims_logged: set[tuple[str, str, str]] = set()
        self.mobility = mobility or MobilityTable()
        self.mobile: dict = {}
        self.static_dp: Static | None = None
        #: the desired dataplane of the last pass (made whole when asked: desired_dp)
        self._dp: DesiredDataplane | None = None
        #: The observed dataplane between audits (gwagent.control.observed)
        self.mirror = Mirror(audit_interval, clock)
        self.audit_interval = audit_interval
        self._planned: tuple | None = None   # (static, mobile) last planned, kept since
        self._planned_locs: dict = {}
        #: keys and floods the desired state changed since the last plan
        self._changed: tuple[set, set] = (set(), set())
        self._counts: tuple = (0, 0, 0, 0, None)  # status's per-network counts, and what they are of
        #: Held by whoever changes the desired state, mobile MACs' entries or
        #: the mobility table.
        self.lock = threading.RLock()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self.on_mobility_change: Callable[[], None] | None = None
        self.status_path = status_path
        self.resync_interval, self.poll_interval = resync_interval, poll_interval
        self.read_deadline, self.pass_budget = read_deadline, pass_budget
        self.clock, self.wall = clock, wall
        self.items = Backoff(backoff_initial, backoff_max)        # dataplane operations
        self.port_items = Backoff(backoff_initial, backoff_max)   # remote ports
        self.step_backoff = Backoff(backoff_initial, backoff_max)
        self.desired: Desired | None = None
        self.desired_error: str | None = None
        self.unknown: list[SourceView] = []
        self._built: tuple | None = None
        self.last: PassResult | None = None
        self.last_error: str | None = None
        self.registered_count = 0
        #: the registry as the registrar last read and wrote it (key -> port),
        #: trusted while its version says no one else changed it; and the
        #: remote ports the desired state changed since (None: a full diff)
        self._registered: dict | None = None
        self._registered_until = 0.0
        self._port_changes: dict | None = None
        self.registry_state: dict = {"state": "idle"}
        self.mobility_counters: collections.Counter = collections.Counter()
        self.stopping = False
        self.reload_requested = False
        #: Called after every pass with its result and its log line, and on
        #: every turn of the loop (gwagent.service tells systemd from them).
        self.on_pass: Callable[[PassResult, str], None] | None = None
        self.on_loop: Callable[[], None] | None = None
        self.views: list[SourceView] = []
        self._readers: list[Reader] = []
        self._registrar: threading.Thread | None = None
        self._registry_due = threading.Event()
        self._sources_changed = threading.Event()
        self.configure(local, peers, registry)

    @property
    def mac_guard(self) -> bool:
        """[gateway] mac_guard: no MAC hijack across clouds (state.guards),
        enforced by the backend's guard()."""
        return self._mac_guard

    @mac_guard.setter
    def mac_guard(self, on: bool) -> None:
        if on != self._mac_guard:  # the guards are kept by the World, or not at all
            self._mac_guard = on
            self.world = World(on, getattr(self.backend, "guard_by_source", True))
            self._built = None

    @property
    def audit_interval(self) -> float:
        return self.mirror.audit_interval

    @audit_interval.setter
    def audit_interval(self, seconds: float) -> None:
        """[agent] audit_interval: the full reads of the dataplane, and of
        the backend's other sets it audits (the MAC guard's members: at 1M
        a read of them takes minutes on Linux, see the README)."""
        self.mirror.audit_interval = seconds
        for audited in getattr(self.backend, "audited", ()):
            audited.interval = seconds

    def configure(self, local: SiteSource, peers: Sequence[SiteSource],
                  registry: Registry | None) -> None:
        """Swap sources (SIGHUP). What a source of the same name said stays
        in force until it answers again; the last good desired state too."""
        running = bool(self._readers)
        if running:
            self._stop_readers()
        old = {v.initial_label: v for v in self.views}
        views = [SourceView(local, "local", self.read_deadline, self.clock, self.wall)]
        views += [SourceView(p, "peer", self.read_deadline, self.clock, self.wall)
                  for p in peers]
        for view in views:
            if view.initial_label in old and old[view.initial_label].role == view.role:
                view.adopt(old[view.initial_label])
        gone = [v.source for v in self.views if all(v.source is not n.source for n in views)]
        self.views = views
        self.local, self.peers, self.registry = local, list(peers), registry
        for source in gone:  # their notification feeds, say
            close = getattr(source, "close", None)
            if close is not None:
                close()
        self._built = None
        self._registry_version = None
        if running:
            self._start_readers()

    def _read_registry_version(self):
        version = getattr(self.registry, "registry_version", None)
        return version() if version else None

    def _registry_changed(self) -> bool:
        """Whether the registry needs a look although the desired state did
        not change: unknown version, changed by someone else, or ports
        awaiting retry."""
        try:
            version = self._read_registry_version()
        except Exception:  # noqa: BLE001 - unknown: look
            return True
        return version is None or version != self._registry_version or len(self.port_items) > 0

    def wake(self) -> None:
        """Ask the loop for a look (from any thread)."""
        try:
            os.write(self._wake_w, b"x")
        except BlockingIOError:
            pass  # already pending

    # -- the desired state, from the views ----------------------------------
    def _build_desired(self, result: PassResult, now: float) -> bool:
        """A new Desired when a view has a new snapshot; True if taken."""
        built = tuple(v.generation for v in self.views)
        local = self.views[0].snapshot
        if built == self._built or local is None:
            return False
        self._built = built
        known = [v for v in self.views[1:] if v.snapshot is not None]
        world = self.world
        try:
            change = world.update(local, tuple(v.snapshot for v in known))
        except Exception as exc:  # noqa: BLE001 - operator data across sites, or a bug
            if not isinstance(exc, ValidationError):
                LOG.exception("the desired state could not be built; built whole next time")
                self.world = World(self.mac_guard, world.by_source)
                self._built = None
            self.desired_error = str(exc) or type(exc).__name__
            LOG.error("sources rejected together, keeping the last good state (%s): %s",
                      "none yet" if self.desired is None else "in force", exc)
            return False
        self.desired_error = None
        self.unknown = [v for v in self.views[1:] if v.snapshot is None]
        self._take_desired(world.desired, now, change)
        return True

    def _take_desired(self, desired: Desired, now: float, change) -> None:
        mobile, static = self.world.mobile, self.world.static
        planned = self._planned
        if change.full or planned is None or planned[0] is not self.static_dp:
            self._planned = None  # planned whole in the next pass
        elif static is not planned[0] or mobile is not planned[1]:
            # the next pass plans the keys that changed (their entries: the World's)
            for key in change.macs:
                self._planned_locs.pop(key, None)  # a mobile one is placed again
            self._planned = (static, mobile)
            self._changed[0].update(change.macs)
            self._changed[1].update(change.floods)
        ports = self.world.take_ports()
        with self.lock:
            self.desired, self.mobile, self.static_dp = desired, mobile, static
            self.mobility.update(mobile, now)
            if ports is None or self._port_changes is None:
                self._port_changes = None  # the registrar diffs everything
            else:
                self._port_changes.update(ports)
        self._log_rejected(desired)
        self._registry_due.set()
        if self.on_mobility_change is not None:
            self.on_mobility_change()

    def _log_rejected(self, desired: Desired) -> None:
        now = {(r.site, r.network, r.port_id, r.mac): r.reason for r in desired.all_rejected()}
        before = getattr(self, "_rejected_logged", {})
        for key, reason in sorted(now.items()):
            if before.get(key) != reason:
                LOG.warning("endpoint left out: site %s network %s port %s MAC %s: %s",
                            key[0], key[1], key[2] or "-", key[3], reason)
        for key in sorted(set(before) - set(now)):
            LOG.info("endpoint no longer left out: site %s network %s port %s MAC %s",
                     *key)
        self._rejected_logged = now

    def _source_errors(self) -> str | None:
        bad = []
        for view in self.views:
            view.check_hung()
            state = view.state()
            if state == "failing":
                bad.append(f"{view.role} {view.label}: {view.error}")
            elif state in ("hung", "stale"):
                since = view.reading_since
                slow = view.last_read_s
                what = (f"a read has run {view.clock() - since:.1f}s" if since is not None
                        else f"its last read took {slow:.1f}s (deadline {view.deadline:g}s)"
                        if slow is not None and slow > view.deadline else "no answer")
                bad.append(f"{view.role} {view.label}: {state}: {what} (last good "
                           f"{view.status()['seconds_since_good']}s ago)")
        if self.desired_error:
            bad.append(self.desired_error)
        return "; ".join(bad) or None

    # -- one pass -------------------------------------------------------------
    def run_pass(self, reason: str = "manual", read: bool = True,
                 registry: bool = True) -> PassResult:
        """One pass. ``read``: ask every source first (else use the views as
        the readers keep them); ``registry``: sync the registry in this pass
        (else the registrar thread does)."""
        start = self.clock()
        now = start
        result = PassResult(reason=reason, at=self.wall())
        if read:
            for view in self.views:
                view.refresh()
        with gc_paused():  # a new desired state is built whole (gwagent/hotpath.py)
            fresh = self._build_desired(result, now)
            if self.desired is not None:
                if registry and self.registry is not None and (fresh or self._registry_changed()):
                    self._guarded(result, "registry", self._sync_registry, result, now)
                self._guarded(result, "dataplane", self._sync_dataplane, result, now)
                self._guarded(result, "ingress", self._sync_ingress)
                self._guarded(result, "guard", self._sync_guard)
        if fresh:
            # The new desired state and what was planned from it live until
            # the next change: out of the collector's scans, whose full
            # passes over them had cost 1-4 s of a change's pass at 100k
            # endpoints (acyclic data; reference counting still frees it).
            gc.freeze()
        result.source_error = self._source_errors()
        result.ok = not result.errors and result.source_error is None
        result.elapsed_ms = round((self.clock() - start) * 1000, 1)
        result.over_budget = result.elapsed_ms > self.pass_budget * 1000
        self.last = result
        self.last_error = result.source_error or (result.errors[0] if result.errors else None)
        if result.ok:
            self.last_ok_wall = self.wall()
        if self.metrics is not None:
            self.metrics.passed(result)
        line = self._log(result)
        self.write_status()
        if self.on_pass is not None:
            self.on_pass(result, line)
        return result

    def _guarded(self, result: PassResult, what: str, func, *args) -> None:
        """Run one step of a pass; an unexpected exception is logged with
        its cause, counted as an error of the pass and retried soon."""
        try:
            func(*args)
            self.step_backoff.succeeded(what)
        except Exception as exc:  # noqa: BLE001 - the agent survives itself
            LOG.exception("%s step failed; retrying", what)
            result.errors.append(f"{what}: {type(exc).__name__}: {exc}")
            self.step_backoff.failed(what, self.clock())

    # -- active or standby ------------------------------------------------------
    def _addresses(self) -> tuple[str, ...]:
        d = self.desired
        if d is None:
            return ()
        gw = d.local.site.gateway
        return (gw.tunnel_ip, gw.transit_ip)

    def holds_addresses(self) -> bool:
        """Whether this node holds the site's tunnel and transit addresses
        now (always, for a site's only gateway). An error reading them
        counts as not holding them: a node that cannot tell stays silent."""
        if self.holder is None:
            return True
        addresses = self._addresses()
        if not addresses:
            return False
        try:
            held = self.holder.holds(addresses)
            self.role_error = None
            return held
        except Exception as exc:  # noqa: BLE001 - say it in status; stay standby
            self.role_error = f"cannot read this node's addresses: {exc}"
            return False

    def _node_problem(self) -> str | None:
        """This node is not one the site's inventory names as its gateway."""
        d = self.desired
        nodes = d.local.site.gateway.nodes if d else ()
        if self.holder is not None and nodes and self.node not in nodes:
            return (f"node {self.node!r} is not one of the site's gateway nodes "
                    f"({', '.join(nodes)}): check [gateway] node")
        return None

    def check_role(self) -> bool:
        """Look whether this node became active or standby; log a change,
        and start a registry sync on becoming active. True on a change."""
        if self.holder is not None and self.desired is None:
            return False  # the site's addresses are not known yet
        role = "active" if self.holds_addresses() else "standby"
        if role == self.role and self.role_since is not None:
            return False
        old, self.role, self.role_since = self.role, role, self.wall()
        moved = getattr(self.backend, "underlay_changed", None)
        if old is not None and moved is not None and moved():
            self.mirror.invalidate("the node's addresses moved (its devices' MTU follows "
                                   "their underlay)")
        if self._node_problem():
            LOG.warning("%s", self._node_problem())
        if self.holder is not None:
            addresses = " and ".join(self._addresses())
            if role == "active":
                LOG.warning("node %s is the ACTIVE gateway of the site: it holds %s; "
                            "its registrar writes for the site", self.node or "-", addresses)
                self._registry_due.set()
            elif old == "active" or self.role_error:
                LOG.warning("node %s is STANDBY: it no longer holds %s%s; its registrar "
                            "writes nothing", self.node or "-", addresses,
                            f" ({self.role_error})" if self.role_error else "")
            else:
                LOG.info("node %s is standby: %s held elsewhere; dataplane kept programmed, "
                         "registrar silent", self.node or "-", addresses)
        return True

    def _sync_registry(self, result: PassResult, now: float) -> None:
        with self.lock:
            desired, unknown = self.desired, list(self.unknown)
            changes, self._port_changes = self._port_changes, {}
        try:
            self._sync_ports(result, now, desired, unknown, changes)
        except BaseException:
            with self.lock:
                self._port_changes = None  # not known what was done: a full diff next
            raise
        if result.errors:
            with self.lock:
                self._port_changes = None

    def _sync_ports(self, result: PassResult, now: float, desired: Desired, unknown: list,
                    changes: dict | None) -> None:
        """Register and unregister what differs. The whole registry is read
        and diffed when it may have changed behind the registrar's back
        (its version moved, or it has none), after a full change of the
        desired state, while ports await a retry, and at least every
        ``audit_interval``; else only the ports the desired state changed
        are compared with what it last held."""
        since = self.wall()
        if not self.holds_addresses():
            # The fence: a standby never writes (the active one does; the
            # same ports, the same VTEP, so a takeover finds nothing to do).
            self.registry_state = {"state": "standby", "since": since, "at": self.wall(),
                                   "error": self.role_error}
            self._registered = None
            return
        self.registry_state = {"state": "syncing", "since": since}
        known = self._registered
        if (changes is not None and known is not None and not len(self.port_items)
                and self.clock() < self._registered_until and not self._registry_changed()):
            register = [p for key, p in sorted(changes.items(), key=lambda kv: kv[0])
                        if p is not None and known.get(key) != p]
            unregister = [known[key] for key, p in sorted(changes.items(), key=lambda kv: kv[0])
                          if p is None and key in known]
            registered = None
        else:
            try:
                registered = self.registry.remote_ports()
            except Exception as exc:  # noqa: BLE001 - a registry is a source too
                result.errors.append(f"registry: {exc}")
                self.registry_state = {"state": "failing", "error": str(exc), "since": since,
                                       "at": self.wall()}
                return
            register, unregister = registrar.diff(desired.remote_ports(), registered)
            known = {}
            for port in registered:
                known.setdefault(port.key, port)
            if unknown:
                # Remote ports of a peer that never answered yet are neither ours
                # to withdraw nor to keep by name: leave every port whose origin
                # is not a site we know.
                sites = {snap.site.name for snap in desired.sites}
                unregister = [p for p in unregister if p.origin.site in sites]
        repair = getattr(self.registry, "repair_bindings", None)
        if repair is not None:
            repair()  # ports Neutron left unbound (gwagent.neutron.source)
        self._registered = None  # until this sync is done
        ready_reg = [p for p in register if self.port_items.ready(("port", p.key), now)]
        ready_unreg = [p for p in unregister if self.port_items.ready(("port", p.key), now)]
        result.deferred += len(register) + len(unregister) - len(ready_reg) - len(ready_unreg)
        for action, ports in (("register", ready_reg), ("unregister", ready_unreg)):
            if not ports:
                continue
            if not self.holds_addresses():
                # Lost the site's addresses while reading: write nothing.
                result.deferred += len(ports)
                continue
            try:
                failures = getattr(self.registry, action)(ports)
            except Exception as exc:  # noqa: BLE001 - every port of the call failed
                failures = {p.key: str(exc) for p in ports}
            for port in ports:
                error = failures.get(port.key)
                if error:
                    delay = self.port_items.failed(("port", port.key), now)
                    result.errors.append(f"{action} {'/'.join(port.key)}: {error} "
                                         f"(retry in {delay:.1f}s)")
                elif action == "register":
                    self.port_items.succeeded(("port", port.key))
                    known[port.key] = port
                else:
                    self.port_items.succeeded(("port", port.key))
                    known.pop(port.key, None)
            done = len(ports) - sum(1 for p in ports if failures.get(p.key))
            if action == "register":
                result.registered = done
            else:
                result.unregistered = done
        self.registered_count = len(known)
        self._registry_version = self._read_registry_version()
        errors = [e for e in result.errors if e.startswith(("register", "unregister"))]
        if not errors and not result.deferred and self._registry_version is not None:
            if registered is not None:  # read whole: trusted for an audit interval
                self._registered_until = self.clock() + self.audit_interval
            self._registered = known
        self.registry_state = {"state": "failing" if errors else "ok", "since": since,
                               "at": self.wall(), "error": errors[0] if errors else None,
                               "retrying": len(self.port_items)}

    def _sync_dataplane(self, result: PassResult, now: float) -> None:
        """Plan and apply what differs from the desired state: the whole
        state after a full read of the dataplane (an audit, or the mirror
        not to be trusted) or a new desired state; else only what changed
        since the last pass (events, moves, retries)."""
        mirror = self.mirror
        take = getattr(self.backend, "take_changes", None)
        if take is not None:
            self._drain_kernel()
            mirror.changed(take())
        why = mirror.dump_due() if take is not None else "no events from this backend"
        if why:
            mirror.load(self.backend.observe(), why)
        with self.lock:
            locations = self.mobility.locations()
            seqs = {key: self.mobility.seq(key) for key in self.mobile}
            static, mobile, desired, unknown = (self.static_dp, self.mobile, self.desired,
                                                self.unknown)
        locs = {key: locations.get(key, spec.home) for key, spec in mobile.items()}
        # An exception before the end plans the next pass whole: what was
        # planned, and changed, is not known to be written.
        planned, self._planned = self._planned, None
        changed, self._changed = self._changed, (set(), set())
        if (not why and not unknown and planned is not None and planned[0] is static
                and planned[1] is mobile and set(mirror.networks) == set(static.networks)):
            keys, floods = mirror.take_dirty()
            keys |= changed[0]
            floods |= changed[1]
            moved = {key for key in mobile if locs[key] != self._planned_locs.get(key)}
            if moved or changed[0] or changed[1]:
                self._dp = DesiredDataplane(static, mobile, locations)
            keys |= moved
            entries = self.world.entries
            names = {net.name for net in static.networks}

            def entry_of(key):
                if key in mobile:
                    entry = mobile_entry(mobile[key], locs[key])
                    return entry if entry is not None and key[0] in names else None
                return entries.get(key)
            # (the static state's networks and floods are the desired ones)
            ops = planner.plan(desired_part(entry_of, static, keys, floods),
                               mirror.observed(keys, floods))
            keep = planned
        else:
            mirror.take_dirty()  # the whole plan covers them
            observed = mirror.snapshot()
            desired_dp = with_mobile(static.state(), mobile, locations)
            if unknown:
                desired_dp = _keep_unknown(desired_dp, observed, desired)
            self._dp = DesiredDataplane(static, mobile, locations, desired_dp)
            ops = planner.plan(desired_dp, observed)
            keep = None if unknown or static is not self.world.static else (static, mobile)
        self._planned_locs = locs
        ready, not_done = [], []
        for op in ops:
            (ready if self.items.ready(op.key, now) else not_done).append(op)
        result.deferred += len(not_done)
        failures = self._apply(ready, seqs) if ready else []
        mirror.again(not_done)
        result.failed = dict(collections.Counter(f.op.action for f in failures))
        for failure in failures:
            delay = self.items.failed(failure.op.key, now)
            result.errors.append(f"{failure.error} (retry in {delay:.1f}s)")
            not_done.append(failure.op)
        if len(self.items):
            failed_keys = {f.op.key for f in failures}
            for op in ready:
                if op.key not in failed_keys:
                    self.items.succeeded(op.key)
        result.ops = dict(sorted(collections.Counter(op.action for op in ready).items()))
        # What status reports as programmed: desired entries minus those not done.
        self.unprogrammed = {op.entry for op in not_done
                             if not isinstance(op, NetworkOp) and op.action != "delete"}
        self.broken_networks = {op.network.name for op in not_done
                                if isinstance(op, NetworkOp) and op.action == "ensure"}
        self._planned = keep

    def _sync_ingress(self) -> None:
        """The ingress filter as the desired state says (or none, when it
        is off); log each new offender once."""
        admit = getattr(self.backend, "admit", None)
        if admit is None:
            return
        adm, unknown = None, []
        if self.ingress_filter:
            with self.lock:
                desired, unknown = self.desired, list(self.unknown)
            # configured peers whose source has not answered yet
            waiting = frozenset(site.gateway.transit_ip for site in
                                (_configured_site(v.source) for v in unknown) if site)
            world = self.world
            adm = admission(desired, waiting, world.local_vteps.keys()
                            if world.desired is desired else None)
        # While a peer has not answered, whom it would admit is unknown: what
        # is admitted stays (a restarted agent must not drop its peers).
        counters = admit(adm, keep=bool(unknown))
        if adm is None:
            self.ingress = {"enabled": False}
            return
        words = {SITE: ("tunnel", "not a known VTEP of the site"),
                 TRANSIT: ("transit", "not a peer gateway")}
        for side, found in sorted(counters.offenders.items()):
            for src, packets in sorted(found.items()):
                if (side, src) not in self._offenders_logged:
                    self._offenders_logged.add((side, src))
                    LOG.warning("ingress filter: dropping VXLAN to the %s address from %s "
                                "(%s): %d packets so far", words[side][0], src,
                                words[side][1], packets)
        self.ingress = {
            "enabled": True,
            "admitted": {side: sorted(sources) for side, _, sources in adm.sides()},
            "dropped": {side: counters.dropped.get(side, 0) for side in (SITE, TRANSIT)},
            "offenders": {side: dict(sorted(counters.offenders.get(side, {}).items()))
                          for side in (SITE, TRANSIT)}}

    def _sync_guard(self) -> None:
        """The MAC guard as the desired state says (or none, when it is
        off); log each newly claimed MAC once."""
        guard = getattr(self.backend, "guard", None)
        if guard is None:
            return
        want = None
        if self.mac_guard:
            want = self.world.guards  # kept with the static state (gwagent.control.world)
        counters = guard(want, self.world.guard_change) if want is not None else guard(want)
        if want is None:
            self.guard_status = {"enabled": False}
            return
        words = {TRANSIT: ("a peer gateway", "an endpoint of this site or one mobile "
                           "without a candidate there"),
                 SITE: ("a compute of the site", "a remote endpoint or one mobile without "
                        "a candidate there")}
        for side, found in sorted(counters.macs.items()):
            for (network, mac), frames in sorted(found.items()):
                if (side, network, mac) not in self._claims_logged:
                    self._claims_logged.add((side, network, mac))
                    LOG.warning("MAC guard: dropping frames from %s with source MAC %s of "
                                "network %s (%s): %d frames so far", words[side][0], mac,
                                network, words[side][1], frames)
        self.guard_status = {
            "enabled": True, "guards": len(want),
            "dropped": {side: counters.dropped.get(side, 0) for side in (SITE, TRANSIT)},
            "claims": {side: {f"{net} {mac}": n for (net, mac), n in
                              sorted(counters.macs.get(side, {}).items())}
                       for side in (SITE, TRANSIT)}}

    def _apply(self, ops: list, seqs: dict) -> list:
        """Apply a pass's operations; those about a mobile MAC under the
        lock, and only if no move happened since the plan was made. The
        mirror learns what was written."""
        if not self.mobile:
            return self._write(ops)
        plain, mobile = [], []
        for op in ops:
            key = (op.entry.network, op.entry.mac) if isinstance(op, MacOp) else None
            (mobile if key in self.mobile else plain).append((key, op))
        failures = self._write([op for _, op in plain]) if plain else []
        if mobile:
            with self.lock:
                current = [op for key, op in mobile if self.mobility.seq(key) == seqs.get(key)]
                if current:
                    failures += self._write(current)
        return failures

    def _write(self, ops: list) -> list:
        failures = self.backend.apply(ops)
        self.mirror.applied(ops, failures)
        return failures

    def apply_move(self, decision: Decision) -> list:
        """Put a mobile MAC where ``decision`` says, at once (the caller
        holds :attr:`lock`). Returns the backend's failures."""
        spec = self.mobile.get(decision.key)
        if spec is None or self.static_dp is None:
            return []
        if self.static_dp.network(spec.network) is None:
            return []
        old = mobile_entry(spec, decision.previous)
        new = mobile_entry(spec, decision.location)
        if new == old:
            return []
        op = MacOp("set", new, old) if new is not None else MacOp("delete", old)
        failures = self.backend.move([op])
        self.mirror.applied([op], failures)
        return failures

    def _log(self, r: PassResult) -> str:
        d = self.desired
        _, local, remote, _ = self._network_counts()
        ops = " ".join(f"{k}={v}" for k, v in r.ops.items()) or "none"
        line = (f"pass {'ok' if r.ok else 'FAILED'} reason={r.reason} "
                f"networks={len(d.networks) if d else 0} local={local} remote={remote} "
                f"ops[{ops}] errors={len(r.errors)} deferred={r.deferred} "
                f"ports+{r.registered}/-{r.unregistered} elapsed={r.elapsed_ms}ms"
                + (f" OVER BUDGET ({self.pass_budget * 1000:.0f}ms)" if r.over_budget else ""))
        (LOG.info if r.ok and not r.over_budget else LOG.warning)(line)
        if r.source_error and not r.errors:
            LOG.debug("  sources: %s", r.source_error)
        for error in r.errors[:10]:
            LOG.warning("  %s", error)
        if len(r.errors) > 10:
            LOG.warning("  ... and %d more errors", len(r.errors) - 10)
        return line

    # -- status -------------------------------------------------------------
    @property
    def desired_dp(self) -> GatewayState | None:
        """The desired dataplane of the last pass, whole (work proportional
        to the world the first time it is asked of a pass that changed it:
        for tests and benchmarks; passes never ask)."""
        dp = self._dp
        return dp.whole() if dp is not None else None

    def programmed(self) -> collections.Counter:
        """(network, side) -> the MAC places and flood destinations
        programmed: the desired dataplane but what is not done. From the
        World's counts and the mobile MACs, not a walk of the world (but
        while a peer is unknown: its kept entries are counted whole)."""
        dp, static = self._dp, self.static_dp
        missing = getattr(self, "unprogrammed", ())
        world = self.world
        if dp is None and static is None:
            return collections.Counter()
        if self.unknown or world.static is not static:
            dp = dp.whole() if dp is not None else static.state()
            count = collections.Counter((e.network, e.side) for e in dp.macs if e not in missing)
            count.update((f.network, f.side) for f in dp.floods if f not in missing)
            return count
        count = collections.Counter({(net, side): c[side] for net, c in world.counts.items()
                                     for side in (SITE, TRANSIT) if c[side]})
        with self.lock:
            locations, mobile = self.mobility.locations(), self.mobile
        for key, spec in mobile.items():
            where = locations.get(key, spec.home)
            if where is not None and spec.network in world.counts:
                count[(spec.network, where.side)] += 1
        count.subtract((e.network, e.side) for e in missing)
        return +count

    def _network_counts(self) -> tuple[list, int, int, int]:
        """Per network: endpoints and entries programmed; computed again
        only when the desired state or what is not programmed changed."""
        d = self.desired
        dp = self._dp or self.static_dp
        missing = frozenset(getattr(self, "unprogrammed", ()))
        broken = frozenset(getattr(self, "broken_networks", ()))
        cached = self._counts
        if cached[0] is d and cached[1] is dp and cached[2] == missing and cached[3] == broken:
            return cached[4]
        networks, local_n, remote_n, programmed = [], 0, 0, 0
        if d is not None:
            per_net = collections.Counter()
            for (net, _), n in self.programmed().items():
                per_net[net] += n
            counts = self.world.counts
            for net in d.networks:
                entries = 0 if net.name in broken else per_net[net.name]
                of = counts.get(net.name) or collections.Counter()
                local, remote = of["local"], of["remote"]
                networks.append({
                    "name": net.name, "segmentation_id": net.segmentation_id,
                    "transit_vni": net.transit_vni,
                    "local_endpoints": local, "remote_endpoints": remote, "entries": entries})
                programmed += entries
                local_n, remote_n = local_n + local, remote_n + remote
        counts = (networks, local_n, remote_n, programmed)
        self._counts = (d, dp, missing, broken, counts)
        return counts

    def status(self) -> dict:
        d = self.desired
        networks, local_n, remote_n, programmed = self._network_counts()
        last = dataclasses.asdict(self.last) if self.last else None
        with self.lock:
            mobility = self.mobility.status(self.clock(), self.wall() - self.clock())
        rejected = [r.to_dict() for r in d.all_rejected()] if d is not None else []
        return {
            "site": d.local.site.name if d else None,
            "backend": getattr(self.backend, "name", type(self.backend).__name__),
            "networks": networks,
            "endpoints": {"local": local_n, "remote": remote_n},
            "entries_programmed": programmed,
            "remote_ports_registered": (self.registered_count
                                        if self.registry and self.role == "active" else None),
            "last_pass": last,
            "last_error": self.last_error,
            "retrying": len(self.items),
            "rejected_endpoints": rejected,
            "mobile_macs": mobility,
            "mobility": dict(self.mobility_counters),
            "mobility_config": {"max_moves": self.mobility.max_moves,
                                "move_window": self.mobility.window,
                                "freeze_time": self.mobility.hold},
            "sources": [view.status() for view in self.views],
            "registry": dict(self.registry_state) if self.registry is not None else None,
            "dataplane_audit": self.mirror.status(),
            "ingress": dict(self.ingress),
            "mac_guard": dict(self.guard_status),
            "ha": {"mode": "none" if self.holder is None else "vrrp", "node": self.node,
                   "role": self.role, "since": self.role_since,
                   "addresses": list(self._addresses()),
                   "nodes": list(d.local.site.gateway.nodes) if d else [],
                   "error": self.role_error or self._node_problem()},
            "pass_budget_ms": self.pass_budget * 1000,
        }

    def write_status(self) -> None:
        """Write status.json; a failure is logged, never fatal."""
        if self.status_path is None:
            return
        try:
            atomic_write(self.status_path, json.dumps(self.status(), indent=1) + "\n")
        except Exception:  # noqa: BLE001 - the agent survives itself
            LOG.exception("cannot write the status file %s", self.status_path)

    # -- the loop -------------------------------------------------------------
    def run(self, on_reload: Callable[[], None] | None = None) -> None:
        """Reconcile until :attr:`stopping` is set (by SIGTERM): the readers
        and the registrar run in threads of their own, the dataplane here."""
        self._start_readers()
        self._start_registrar()
        try:
            self._loop(on_reload)
        finally:
            self._stop_readers()
            self._stop_registrar()
            for view in self.views:
                close = getattr(view.source, "close", None)
                if close is not None:
                    close()

    def _loop(self, on_reload) -> None:
        due = self.clock()
        reason = "start"
        while not self.stopping:
            if self.on_loop is not None:
                self.on_loop()
            if self.check_role():
                self.write_status()
                reason = reason or "role"
            if self.reload_requested and on_reload is not None:
                self.reload_requested = False
                on_reload()
                reason = "reload"
            now = self.clock()
            if reason is None and self._sources_changed.is_set():
                reason = "source"
            if reason is None and now >= due:
                reason = "resync"
            if reason is not None:
                self._sources_changed.clear()
                result = self.run_pass(reason, read=False, registry=False)
                now = self.clock()
                due = now + self.resync_interval
                retry = min((t for t in (self.items.next_due(), self.step_backoff.next_due())
                             if t is not None), default=None)
                if retry is not None:
                    due = min(due, max(retry, now + self.poll_interval))
                if result.source_error:
                    due = min(due, now + max(self.poll_interval, 1.0))  # show hung sources
                reason = None
                # Events that arrived during the pass and are not echoes of
                # its own changes start another pass at once.
                if self._drain_kernel():
                    reason = "kernel"
                    continue
            timeout = max(0.0, min(self.poll_interval, due - self.clock()))
            try:
                readable, _, _ = select.select([self.backend, self._wake_r], [], [], timeout)
            except InterruptedError:
                readable = []
            if self._wake_r in readable:
                self._drain_wake()
                if not self._sources_changed.is_set():
                    self.write_status()  # a move, the registrar: news for status only
            if self.backend in readable and self._drain_kernel():
                reason = "kernel"

    # -- the threads ------------------------------------------------------------
    def _on_source_change(self) -> None:
        self._sources_changed.set()
        self.wake()

    def _start_readers(self) -> None:
        self._readers = [Reader(view, self.poll_interval, self.resync_interval,
                                self.items.initial, self.items.cap, self._on_source_change)
                         for view in self.views]
        for reader in self._readers:
            reader.start()

    def _stop_readers(self) -> None:
        for reader in self._readers:
            reader.stop()
        for reader in self._readers:
            reader.join(0.5)  # a hung read is left to end on its own (daemon)
        self._readers = []

    def _start_registrar(self) -> None:
        if self.registry is None:
            return
        self._registrar_halt = threading.Event()
        self._registrar = threading.Thread(target=self._registrar_loop, name="registrar",
                                           daemon=True)
        self._registrar.start()

    def _stop_registrar(self) -> None:
        if self._registrar is not None:
            self._registrar_halt.set()
            self._registry_due.set()
            self._registrar.join(0.5)
            self._registrar = None

    def _registrar_loop(self) -> None:
        """Keep the registry in step, apart from the dataplane: on every new
        desired state, when ports are due for a retry, and every resync."""
        next_full = 0.0
        while not self._registrar_halt.is_set():
            due = self.port_items.next_due()
            now = self.clock()
            wait = min(max(0.0, next_full - now), self.poll_interval * 5)
            if due is not None:
                wait = min(wait, max(0.0, due - now))
            fired = self._registry_due.wait(wait)
            self._registry_due.clear()
            if self._registrar_halt.is_set():
                return
            now = self.clock()
            if self.desired is None or self.registry is None:
                continue
            if not (fired or now >= next_full or self._registry_changed()):
                continue
            result = PassResult(reason="registry", at=self.wall())
            start = self.clock()
            self._guarded(result, "registry", self._sync_registry, result, now)
            if now >= next_full:
                next_full = now + self.resync_interval
            if result.registered or result.unregistered or result.errors:
                LOG.log(logging.WARNING if result.errors else logging.INFO,
                        "registry %s: ports+%d/-%d errors=%d deferred=%d elapsed=%.1fms",
                        "FAILED" if result.errors else "ok", result.registered,
                        result.unregistered, len(result.errors), result.deferred,
                        (self.clock() - start) * 1000)
                for error in result.errors[:10]:
                    LOG.warning("  %s", error)
            self.wake()

    def _drain_kernel(self) -> bool:
        try:
            return self.backend.drain_events()
        except Exception:  # noqa: BLE001 - unknown: look at the dataplane
            LOG.exception("reading kernel events failed; reconciling")
            return True

    def _drain_wake(self) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass

    def close(self) -> None:
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass


def _configured_site(source) -> Site | None:
    """The site a source was configured with (a Neutron peer's, through
    its throttle), or None (an inventory file says it when read)."""
    for obj in (source, getattr(source, "source", None)):
        site = getattr(obj, "site", None)
        if isinstance(site, Site):
            return site
    return None


class MobilityWorker(threading.Thread):
    """Moves mobile MACs the moment the backend's tap reports a frame from
    one, without waiting for a pass or any source (module docstring).

    The tap reports (VNI, inner source MAC, outer source IP); the VNI says
    the network and the side (the site's segmentation ID or the transit
    VNI: one gateway never carries a VNI twice), the outer source the
    VTEP. The table decides; a move is applied under the agent's lock and
    the tap's filter is rebuilt so that frames from the new location are no
    longer evidence.
    """

    def __init__(self, agent: Agent, clock: Callable[[], float] = time.monotonic):
        super().__init__(name="mobility", daemon=True)
        self.agent, self.clock = agent, clock
        self.tap = None  # opened once the gateway's addresses are known
        self._halt = threading.Event()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._vnis: dict[int, tuple[str, str]] = {}
        self._watched = None
        self._logged_refusals: dict = {}
        agent.on_mobility_change = self.poke

    def poke(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except BlockingIOError:
            pass

    def stop(self) -> None:
        self._halt.set()
        self.poke()

    def close(self) -> None:
        if self.tap is not None:
            self.tap.close()

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                self._rewatch()
                expiry = self.agent.mobility.next_expiry()
                timeout = 1.0 if expiry is None else max(0.0, min(1.0, expiry - self.clock()))
                waitables = [self._wake_r] + ([self.tap] if self.tap is not None else [])
                readable, _, _ = select.select(waitables, [], [], timeout)
                if self._wake_r in readable:
                    try:
                        while os.read(self._wake_r, 4096):
                            pass
                    except BlockingIOError:
                        pass
                if self.tap is not None and self.tap in readable:
                    for evidence in self.tap.read():
                        self.handle(evidence)
                with self.agent.lock:
                    self.agent.mobility.tick(self.clock())
            except Exception:  # noqa: BLE001 - the fast path must survive its own bugs
                LOG.exception("mobility worker: error; going on")
                self._halt.wait(0.1)

    def _rewatch(self) -> None:
        agent = self.agent
        with agent.lock:
            version = (agent.mobility.version, id(agent.static_dp))
            if version == self._watched:
                return
            if self.tap is None and agent.desired is not None:
                gw = agent.desired.local.site.gateway
                self.tap = agent.backend.tap([gw.tunnel_ip, gw.transit_ip])
            self._vnis = {}
            if agent.static_dp is not None:
                for net in agent.static_dp.networks:
                    self._vnis[net.site.vni] = (net.name, SITE)
                    self._vnis[net.transit.vni] = (net.name, TRANSIT)
            vni_of = {}
            for vni, (network, side) in self._vnis.items():
                vni_of.setdefault(network, []).append(vni)
            watches = [(vni, key[1], exclude)
                       for key, exclude in agent.mobility.watches()
                       for vni in vni_of.get(key[0], ())]
            self._watched = version
        if self.tap is not None:
            try:
                self.tap.watch(watches)
            except ValueError as exc:  # more than the kernel's filter can hold
                keep = len(watches)
                while keep and not self._try_watch(watches[:keep]):
                    keep = keep * 9 // 10
                LOG.error("mobility: %s; watching %d of %d (network, MAC) pairs, the others "
                          "stay where the sources put them until a pass", exc, keep,
                          len(watches))

    def _try_watch(self, watches) -> bool:
        try:
            self.tap.watch(watches)
            return True
        except ValueError:
            return False

    def handle(self, evidence) -> None:
        where = self._vnis.get(evidence.vni)
        if where is None:
            return
        network, side = where
        key, location = (network, evidence.mac), Location(side, evidence.src)
        agent = self.agent
        with agent.lock:
            decision = agent.mobility.claim(key, location, self.clock())
            failures = agent.apply_move(decision) if decision.outcome == "moved" else []
        agent.mobility_counters[decision.outcome] += 1
        if decision.outcome == "moved":
            took = (time.time() - evidence.at) * 1000 if evidence.at else float("nan")
            agent.mobility_counters["last_move_ms"] = round(took, 3)
            LOG.info("mobility: %s %s moved %s -> %s %s (seq %d, %.2f ms after the frame%s)",
                     network, evidence.mac,
                     f"{decision.previous.side} {decision.previous.vtep}"
                     if decision.previous else "nowhere", side, evidence.src, decision.seq,
                     took, ", ARP" if evidence.arp else "")
            for failure in failures:
                LOG.error("mobility: %s", failure.error)
            if decision.alarm:
                LOG.warning("mobility: %s %s is flapping (%d moves in %.0f s): frozen at %s %s "
                            "for %.0f s", network, evidence.mac, agent.mobility.max_moves,
                            agent.mobility.window, side, evidence.src, agent.mobility.hold)
            agent.wake()
        elif decision.outcome == "refused":
            last = self._logged_refusals.get((key, evidence.src))
            now = self.clock()
            if last is None or now - last > 60:
                self._logged_refusals[(key, evidence.src)] = now
                LOG.warning("mobility: refused claim of %s %s from %s %s: not a candidate "
                            "(candidates: %s)", network, evidence.mac, side, evidence.src,
                            ", ".join(f"{c.side} {c.vtep}" for c in sorted(
                                agent.mobility.macs[key].spec.candidates)))
                agent.wake()


class DesiredDataplane:
    """The desired dataplane of a pass: the static one (a World's Static)
    with the mobile MACs where they were; made whole only when asked
    (:meth:`whole`: status while a peer is unknown, tests), then kept. A
    value: what another thread holds never changes under it."""

    def __init__(self, static: Static, mobile: dict, locations: dict,
                 state: GatewayState | None = None):
        self.static, self.mobile, self.locations = static, mobile, locations
        self._whole = state

    def whole(self) -> GatewayState:
        state = self._whole
        if state is None:
            state = self._whole = with_mobile(self.static.state(), self.mobile, self.locations)
        return state


def _keep_unknown(desired_dp: GatewayState, observed: GatewayState,
                  desired: Desired) -> GatewayState:
    """While a peer never answered, keep the observed entries that may be
    its own (a restarted agent adopting its dataplane): on the transit side,
    toward no known peer, for MACs desired nowhere else."""
    known = {p.site.gateway.transit_ip for p in desired.peers}
    wanted = {(m.network, m.mac) for m in desired_dp.macs}
    macs = {m for m in observed.macs if m.side == TRANSIT and m.vtep is not None
            and m.vtep not in known and (m.network, m.mac) not in wanted}
    floods = {f for f in observed.floods if f.side == TRANSIT and f.vtep not in known}
    if not macs and not floods:
        return desired_dp
    return dataclasses.replace(desired_dp, macs=desired_dp.macs | macs,
                               floods=desired_dp.floods | floods)

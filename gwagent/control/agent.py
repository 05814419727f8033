"""The agent: reconcile full snapshots, on a timer and on every change signal.

One pass reads every source, validates the whole into a ``Desired`` (an
invalid or unreadable snapshot keeps the last good one in force and is
reported), brings the local registry of remote ports in step, then plans
against what the backend observes and applies the plan. Events only wake the
loop (an inventory version change, a kernel report about an owned object, the
resync timer); a lost event therefore costs at most one resync interval,
never permanent drift.

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
from gwagent.control.sources import Registry, SiteSource, SourceError, atomic_write
from gwagent.model import Desired, ValidationError
from gwagent.state import (SITE, TRANSIT, DataplaneState, FdbOp, Location, NetworkOp,
                           gateway_mobile, mobile_entries, static_dataplane, with_mobile)

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
    errors: list = dataclasses.field(default_factory=list)
    deferred: int = 0
    registered: int = 0
    unregistered: int = 0
    source_error: str | None = None


class Agent:
    def __init__(self, local: SiteSource, peers: Sequence[SiteSource],
                 registry: Registry | None, backend, *,
                 status_path: Path | None = None,
                 resync_interval: float = 10.0, poll_interval: float = 0.1,
                 backoff_initial: float = 0.5, backoff_max: float = 30.0,
                 mobility: MobilityTable | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time):
        self.backend = backend
        self.mobility = mobility or MobilityTable()
        self.mobile: dict = {}
        self.static_dp: DataplaneState | None = None
        self.desired_dp: DataplaneState | None = None
        #: Held by whoever changes mobile MACs' entries or the table.
        self.lock = threading.RLock()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self.on_mobility_change: Callable[[], None] | None = None
        self.status_path = status_path
        self.resync_interval, self.poll_interval = resync_interval, poll_interval
        self.clock, self.wall = clock, wall
        self.items = Backoff(backoff_initial, backoff_max)
        self.source_backoff = Backoff(backoff_initial, backoff_max)
        self.desired: Desired | None = None
        self.last: PassResult | None = None
        self.last_error: str | None = None
        self.registered_count = 0
        self.mobility_counters: collections.Counter = collections.Counter()
        self.stopping = False
        self.reload_requested = False
        self.configure(local, peers, registry)

    def configure(self, local: SiteSource, peers: Sequence[SiteSource],
                  registry: Registry | None) -> None:
        """Swap sources (SIGHUP); the last good desired state stays in force."""
        self.local, self.peers, self.registry = local, list(peers), registry
        self._versions = None
        self._registry_version = None

    def _read_registry_version(self):
        version = getattr(self.registry, "registry_version", None)
        return version() if version else None

    def _registry_changed(self) -> bool:
        """Whether the registry needs a look although no source changed:
        unknown version, changed by someone else, or ports awaiting retry."""
        version = self._read_registry_version()
        return version is None or version != self._registry_version or self._port_retries

    @property
    def _port_retries(self) -> bool:
        return any(isinstance(k, tuple) and k[0] == "port" for k in self.items._items)

    # -- one pass ---------------------------------------------------------
    def versions(self) -> tuple:
        out = []
        for src in [self.local, *self.peers]:
            try:
                out.append(src.version())
            except Exception:  # noqa: BLE001 - unknown: the pass re-reads and reports
                out.append(None)
        return tuple(out)

    def read_sources(self) -> Desired:
        local = self.local.snapshot()
        peers = tuple(peer.snapshot() for peer in self.peers)
        return Desired(local, peers, previous=self.desired)

    def wake(self) -> None:
        """Ask the loop for a look (from any thread)."""
        try:
            os.write(self._wake_w, b"x")
        except BlockingIOError:
            pass  # already pending

    def _take_desired(self, desired: Desired, now: float) -> None:
        mobile = gateway_mobile(desired)
        static = static_dataplane(desired, mobile)
        with self.lock:
            self.desired, self.mobile, self.static_dp = desired, mobile, static
            self.mobility.update(mobile, now)
        self._log_rejected(desired)
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

    def run_pass(self, reason: str = "manual") -> PassResult:
        start = self.clock()
        now = start
        result = PassResult(reason=reason, at=self.wall())
        versions = self.versions()
        fresh = (self.desired is None or versions != self._versions
                 or None in versions or self.source_backoff.next_due() is not None)
        self._versions = versions
        if fresh:
            try:
                self._take_desired(self.read_sources(), now)
                self.source_backoff.succeeded("sources")
            except Exception as exc:  # noqa: BLE001 - a source must never end the agent
                delay = self.source_backoff.failed("sources", now)
                result.source_error = str(exc) or type(exc).__name__
                if isinstance(exc, (SourceError, ValidationError, OSError)):
                    LOG.error("sources rejected, keeping the last good state (%s); retry in "
                              "%.1fs: %s", "none yet" if self.desired is None else "in force",
                              delay, exc)
                else:
                    LOG.exception("reading the sources failed unexpectedly, keeping the last "
                                  "good state; retry in %.1fs", delay)
        if self.desired is not None:
            if self.registry is not None and (fresh or self._registry_changed()):
                self._guarded(result, "registry", self._sync_registry, result, now)
            self._guarded(result, "dataplane", self._sync_dataplane, result, now)
        result.ok = not result.errors and result.source_error is None
        result.elapsed_ms = round((self.clock() - start) * 1000, 1)
        self.last = result
        self.last_error = result.source_error or (result.errors[0] if result.errors else None)
        self._log(result)
        self.write_status()
        return result

    def _guarded(self, result: PassResult, what: str, func, *args) -> None:
        """Run one step of a pass; an unexpected exception is logged with
        its cause, counted as an error of the pass and retried soon."""
        try:
            func(*args)
        except Exception as exc:  # noqa: BLE001 - the agent survives itself
            LOG.exception("%s step failed; retrying", what)
            result.errors.append(f"{what}: {type(exc).__name__}: {exc}")
            self.source_backoff.failed(("step", what), self.clock())

    def _sync_registry(self, result: PassResult, now: float) -> None:
        try:
            registered = self.registry.remote_ports()
        except (SourceError, ValidationError, OSError) as exc:
            result.errors.append(f"registry: {exc}")
            return
        register, unregister = registrar.diff(self.desired.remote_ports(), registered)
        ready_reg = [p for p in register if self.items.ready(("port", p.key), now)]
        ready_unreg = [p for p in unregister if self.items.ready(("port", p.key), now)]
        result.deferred += len(register) + len(unregister) - len(ready_reg) - len(ready_unreg)
        for action, ports in (("register", ready_reg), ("unregister", ready_unreg)):
            if not ports:
                continue
            try:
                failures = getattr(self.registry, action)(ports)
            except (SourceError, OSError) as exc:
                failures = {p.key: str(exc) for p in ports}
            for port in ports:
                error = failures.get(port.key)
                if error:
                    delay = self.items.failed(("port", port.key), now)
                    result.errors.append(f"{action} {'/'.join(port.key)}: {error} "
                                         f"(retry in {delay:.1f}s)")
                else:
                    self.items.succeeded(("port", port.key))
            done = len(ports) - sum(1 for p in ports if failures.get(p.key))
            if action == "register":
                result.registered = done
            else:
                result.unregistered = done
        self.registered_count = len(registered) + result.registered - result.unregistered
        self._registry_version = self._read_registry_version()

    def _sync_dataplane(self, result: PassResult, now: float) -> None:
        observed = self.backend.observe()
        with self.lock:
            locations = self.mobility.locations()
            seqs = {key: self.mobility.seq(key) for key in self.mobile}
        self.desired_dp = with_mobile(self.static_dp, self.mobile, locations)
        ops = planner.plan(self.desired_dp, observed)
        ready, not_done = [], []
        for op in ops:
            (ready if self.items.ready(op.key, now) else not_done).append(op)
        result.deferred += len(not_done)
        failures = self._apply(ready, seqs) if ready else []
        self.source_backoff.succeeded(("step", "dataplane"))
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
                             if isinstance(op, FdbOp) and op.action != "delete"}
        self.broken_networks = {op.devices.bridge for op in not_done
                                if isinstance(op, NetworkOp) and op.action == "ensure"}

    def _apply(self, ops: list, seqs: dict) -> list:
        """Apply a pass's operations; those about a mobile MAC under the
        lock, and only if no move happened since the plan was made."""
        if not self.mobile:
            return self.backend.apply(ops)
        mobile_macs = {mac for _, mac in self.mobile}
        dev_net = {name: devs.network for devs in self.desired_dp.networks
                   for name in devs.names}
        plain, mobile = [], []
        for op in ops:
            key = None
            if isinstance(op, FdbOp) and op.entry.mac in mobile_macs:
                key = (dev_net.get(op.entry.dev), op.entry.mac)
            (mobile if key in self.mobile else plain).append((key, op))
        failures = self.backend.apply([op for _, op in plain]) if plain else []
        if mobile:
            with self.lock:
                current = [op for key, op in mobile if self.mobility.seq(key) == seqs.get(key)]
                if current:
                    failures += self.backend.apply(current)
        return failures

    def apply_move(self, decision: Decision) -> list:
        """Put a mobile MAC where ``decision`` says, at once (the caller
        holds :attr:`lock`). Returns the backend's failures."""
        spec = self.mobile.get(decision.key)
        if spec is None or self.static_dp is None:
            return []
        nets = self.static_dp.networks
        old = DataplaneState(nets, frozenset(mobile_entries(nets, spec, decision.previous)))
        new = DataplaneState(nets, frozenset(mobile_entries(nets, spec, decision.location)))
        ops = planner.plan(new, old)
        return self.backend.move(ops) if ops else []

    def _log(self, r: PassResult) -> None:
        d = self.desired
        local = len(d.local.endpoints) if d else 0
        remote = sum(1 for _ in d.remote_endpoints()) if d else 0
        ops = " ".join(f"{k}={v}" for k, v in r.ops.items()) or "none"
        line = (f"pass {'ok' if r.ok else 'FAILED'} reason={r.reason} "
                f"networks={len(d.networks) if d else 0} local={local} remote={remote} "
                f"ops[{ops}] errors={len(r.errors)} deferred={r.deferred} "
                f"ports+{r.registered}/-{r.unregistered} elapsed={r.elapsed_ms}ms")
        (LOG.info if r.ok else LOG.warning)(line)
        for error in r.errors[:10]:
            LOG.warning("  %s", error)
        if len(r.errors) > 10:
            LOG.warning("  ... and %d more errors", len(r.errors) - 10)

    # -- status -------------------------------------------------------------
    def status(self) -> dict:
        d = self.desired
        networks, local_n, remote_n, programmed = [], 0, 0, 0
        if d is not None:
            dp = self.desired_dp or self.static_dp
            missing = getattr(self, "unprogrammed", set())
            broken = getattr(self, "broken_networks", set())
            per_dev = collections.Counter(e.dev for e in dp.fdb if e not in missing)
            remote = collections.Counter(ep.network for _, ep in d.remote_endpoints())
            local = collections.Counter(ep.network for ep in d.local.endpoints)
            devices = {devs.network: devs for devs in dp.networks}
            for net in d.networks:
                devs = devices[net.name]
                entries = 0 if devs.bridge in broken else sum(per_dev[n] for n in devs.names)
                networks.append({
                    "name": net.name, "segmentation_id": net.segmentation_id,
                    "transit_vni": net.transit_vni, "bridge": devs.bridge,
                    "local_endpoints": local[net.name], "remote_endpoints": remote[net.name],
                    "fdb_entries": entries})
                programmed += entries
            local_n, remote_n = sum(local.values()), sum(remote.values())
        last = dataclasses.asdict(self.last) if self.last else None
        with self.lock:
            mobility = self.mobility.status(self.clock(), self.wall() - self.clock())
        rejected = [r.to_dict() for r in d.all_rejected()] if d is not None else []
        return {
            "site": d.local.site.name if d else None,
            "networks": networks,
            "endpoints": {"local": local_n, "remote": remote_n},
            "entries_programmed": programmed,
            "remote_ports_registered": self.registered_count if self.registry else None,
            "last_pass": last,
            "last_error": self.last_error,
            "retrying": len(self.items),
            "rejected_endpoints": rejected,
            "mobile_macs": mobility,
            "mobility": dict(self.mobility_counters),
            "mobility_config": {"max_moves": self.mobility.max_moves,
                                "move_window": self.mobility.window,
                                "freeze_time": self.mobility.hold},
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
        """Reconcile until :attr:`stopping` is set (by SIGTERM)."""
        due = self.clock()
        reason = "start"
        while not self.stopping:
            if self.reload_requested and on_reload is not None:
                self.reload_requested = False
                on_reload()
                reason = "reload"
            now = self.clock()
            if reason is None and self.versions() != self._versions:
                reason = "inventory"
            if reason is None and now >= due:
                reason = "resync"
            if reason is not None:
                result = self.run_pass(reason)
                now = self.clock()
                due = now + self.resync_interval
                retry = self.items.next_due()
                if result.source_error or result.errors:
                    retry = min(retry or due, self.source_backoff.next_due() or due)
                if retry is not None:
                    due = min(due, max(retry, now + self.poll_interval))
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
                self.write_status()
            if self.backend in readable and self._drain_kernel():
                reason = "kernel"

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
                for devs in agent.static_dp.networks:
                    self._vnis[devs.site_side.vni] = (devs.network, SITE)
                    self._vnis[devs.transit_side.vni] = (devs.network, TRANSIT)
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

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
on. Time is injected (``clock``, ``wall``) so passes are deterministic in
tests; the only blocking wait is in :meth:`Agent.run`.
"""
from __future__ import annotations

import collections
import dataclasses
import json
import logging
import select
import time
from pathlib import Path
from typing import Callable, Sequence

from gwagent.control import planner, registrar
from gwagent.control.sources import Registry, SiteSource, SourceError, atomic_write
from gwagent.model import Desired, ValidationError
from gwagent.state import FdbOp, NetworkOp, desired_dataplane

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
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time):
        self.backend = backend
        self.status_path = status_path
        self.resync_interval, self.poll_interval = resync_interval, poll_interval
        self.clock, self.wall = clock, wall
        self.items = Backoff(backoff_initial, backoff_max)
        self.source_backoff = Backoff(backoff_initial, backoff_max)
        self.desired: Desired | None = None
        self.last: PassResult | None = None
        self.last_error: str | None = None
        self.registered_count = 0
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
        return tuple(src.version() for src in [self.local, *self.peers])

    def read_sources(self) -> Desired:
        local = self.local.snapshot()
        peers = tuple(peer.snapshot() for peer in self.peers)
        return Desired(local, peers)

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
                self.desired = self.read_sources()
                self.desired_dp = desired_dataplane(self.desired)
                self.source_backoff.succeeded("sources")
            except (SourceError, ValidationError, OSError) as exc:
                delay = self.source_backoff.failed("sources", now)
                result.source_error = str(exc)
                LOG.error("sources rejected, keeping the last good state (%s); retry in %.1fs: %s",
                          "none yet" if self.desired is None else "in force", delay, exc)
        if self.desired is not None:
            if self.registry is not None and (fresh or self._registry_changed()):
                self._sync_registry(result, now)
            self._sync_dataplane(result, now)
        result.ok = not result.errors and result.source_error is None
        result.elapsed_ms = round((self.clock() - start) * 1000, 1)
        self.last = result
        self.last_error = result.source_error or (result.errors[0] if result.errors else None)
        self._log(result)
        self.write_status()
        return result

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
        ops = planner.plan(self.desired_dp, observed)
        ready, not_done = [], []
        for op in ops:
            (ready if self.items.ready(op.key, now) else not_done).append(op)
        result.deferred += len(not_done)
        failures = self.backend.apply(ready) if ready else []
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
            dp = self.desired_dp
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
        return {
            "site": d.local.site.name if d else None,
            "networks": networks,
            "endpoints": {"local": local_n, "remote": remote_n},
            "entries_programmed": programmed,
            "remote_ports_registered": self.registered_count if self.registry else None,
            "last_pass": last,
            "last_error": self.last_error,
            "retrying": len(self.items),
        }

    def write_status(self) -> None:
        if self.status_path is not None:
            atomic_write(self.status_path, json.dumps(self.status(), indent=1) + "\n")

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
                self.backend.drain_events()  # our own changes echo back: not news
                now = self.clock()
                due = now + self.resync_interval
                retry = self.items.next_due()
                if result.source_error:
                    retry = min(retry or due, self.source_backoff.next_due() or due)
                if retry is not None:
                    due = min(due, max(retry, now + self.poll_interval))
                reason = None
            timeout = max(0.0, min(self.poll_interval, due - self.clock()))
            try:
                readable, _, _ = select.select([self.backend], [], [], timeout)
            except InterruptedError:
                readable = []
            if readable and self.backend.drain_events():
                reason = "kernel"

"""The agent's view of each source: its last good snapshot, and its health.

Why it looks like this
    Every cloud is its own failure domain: a hung, slow or dead Neutron must
    never stall the gateway of another cloud, nor the gateway's own
    dataplane. So each source (the local site, each peer) is read on its
    own schedule, in a thread of its own (:class:`Reader`), and what it
    said last is kept here; the dataplane loop only ever works from these
    views, never waits on a source. A source that stops answering keeps its
    last good snapshot in force: stale is not gone (nothing is withdrawn
    because an API is unreachable).

Health, as ``gwagent status`` shows it
    * ``fresh``: the last read succeeded;
    * ``failing``: the last read raised (the error, and since when; the
      last good snapshot stays in force);
    * ``hung``: a read has been running for longer than its deadline (a
      call that does not return; Neutron's own socket deadlines end it
      eventually, a file on a dead mount may never);
    * ``stale``: no answer for longer than the deadline, or the last answer
      took longer than the deadline (an API that answers, but too late:
      each read is slower than the deadline, so it is never ``hung`` for
      long, and never ``fresh`` until a read is quick again);
    * ``unknown``: no good read yet (at start, or after a reload): what the
      source owned is neither programmed anew nor withdrawn until it answers.

One log line when a source goes bad (failing or hung), one when it recovers.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from gwagent.model import SiteSnapshot

LOG = logging.getLogger(__name__)


def label_of(source, role: str) -> str:
    """A name for a source in logs and status: its site if known, else its file."""
    inner = getattr(source, "source", source)
    site = getattr(inner, "site", None)
    if site is not None and getattr(site, "name", None):
        return site.name
    path = getattr(inner, "path", None)
    return str(path) if path is not None else role


class SourceView:
    """What the agent knows of one source. ``refresh()`` reads it (from the
    source's reader thread, or from a synchronous pass); everything else
    is cheap and safe from any thread."""

    def __init__(self, source, role: str, deadline: float = 10.0,
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time):
        self.source, self.role, self.deadline = source, role, deadline
        self.clock, self.wall = clock, wall
        self.initial_label = label_of(source, role)
        self.snapshot: SiteSnapshot | None = None
        self.generation = 0          # bumps with every new good snapshot
        self.version: object = None
        self.good_at: float | None = None      # wall time of the last good read
        self.good_mono: float | None = None
        self.error: str | None = None
        self.error_since: float | None = None  # wall
        self.reading_since: float | None = None  # monotonic, while a read runs
        self.last_read_s: float | None = None    # how long the last answer took
        self.failures = 0
        self.reads = 0
        self._bad_logged = False
        self._lock = threading.Lock()

    # -- reading ----------------------------------------------------------
    def refresh(self, force: bool = False) -> bool:
        """Ask the source; True if a new good snapshot was taken or the source
        recovered. A change
        token that did not move skips the full read unless ``force``."""
        self.reading_since = started = self.clock()
        try:
            version = self.source.version()
            if (not force and self.snapshot is not None and version is not None
                    and version == self.version and self.error is None):
                self.good_at, self.good_mono = self.wall(), self.clock()  # it answered
                return self._answered(self.clock() - started)
            snap = self.source.snapshot()
        except Exception as exc:  # noqa: BLE001 - any failure of a source is its own
            self._failed(exc)
            return False
        finally:
            self.reading_since = None
        with self._lock:
            changed = snap != self.snapshot
            self.snapshot, self.version = snap, version
            self.good_at, self.good_mono = self.wall(), self.clock()
            if changed:
                self.generation += 1
            recovered = self.error is not None
            self.error = self.error_since = None
            self.failures = 0
            self.reads += 1
        if self._answered(self.clock() - started) or recovered:
            return True  # news for the loop (and status) even if the snapshot is the same
        return changed

    @property
    def label(self) -> str:
        snap = self.snapshot
        return snap.site.name if snap is not None else self.initial_label

    def adopt(self, old: "SourceView") -> None:
        """Keep what a view of the same source knew (a reload)."""
        self.snapshot, self.generation = old.snapshot, old.generation
        self.good_at, self.good_mono = old.good_at, old.good_mono

    def _answered(self, took: float) -> bool:
        """Note how long an answer took: one log line when answers become
        slower than the deadline, one when a quick one follows a bad spell
        (slow, hung or failing). True if it recovered."""
        self.last_read_s = took
        if took > self.deadline:
            if not self._bad_logged:
                self._bad_logged = True
                LOG.error("source %s (%s) slow: a read took %.1f s (deadline %.1f s); "
                          "status shows it stale until a read is quicker", self.label,
                          self.role, took, self.deadline)
            return False
        if self._bad_logged and self.error is None:
            LOG.warning("source %s (%s) recovered: its read took %.2f s", self.label,
                        self.role, took)
            self._bad_logged = False
            return True
        return False

    def _failed(self, exc: Exception) -> None:
        text = str(exc) or type(exc).__name__
        with self._lock:
            first = self.error is None
            self.error = text
            if first:
                self.error_since = self.wall()
            self.failures += 1
        if first and not self._bad_logged:
            self._bad_logged = True
            kept = ("its last good snapshot stays in force" if self.snapshot is not None
                    else "nothing known of it yet")
            LOG.error("source %s (%s) failing: %s; %s", self.label, self.role, text, kept)

    def check_hung(self) -> None:
        """Log once when a read runs past its deadline (called by the loop)."""
        since = self.reading_since
        if since is not None and self.clock() - since > self.deadline and not self._bad_logged:
            self._bad_logged = True
            LOG.error("source %s (%s) hung: a read has run for %.1f s (deadline %.1f s); "
                      "%s", self.label, self.role, self.clock() - since, self.deadline,
                      "its last good snapshot stays in force" if self.snapshot is not None
                      else "nothing known of it yet")

    # -- health -------------------------------------------------------------
    def state(self) -> str:
        now, since = self.clock(), self.reading_since
        if since is not None and now - since > self.deadline:
            return "hung"
        if self.error is not None:
            return "failing"
        if self.snapshot is None:
            return "unknown"
        if self.good_mono is not None and now - self.good_mono > self.deadline:
            return "stale"
        if self.last_read_s is not None and self.last_read_s > self.deadline:
            return "stale"
        return "fresh"

    def status(self) -> dict:
        now = self.clock()
        since = self.reading_since
        return {
            "name": self.label, "role": self.role, "state": self.state(),
            "last_good_at": self.good_at,
            "seconds_since_good": round(now - self.good_mono, 3)
            if self.good_mono is not None else None,
            "error": self.error, "error_since": self.error_since,
            "reading_for": round(now - since, 3) if since is not None else None,
            "last_read_s": round(self.last_read_s, 3) if self.last_read_s is not None else None,
            "deadline": self.deadline, "failures": self.failures,
            "endpoints": len(self.snapshot.endpoints) if self.snapshot else None,
            "notifications": self._events_status(),
        }

    def _events_status(self) -> dict | None:
        events = getattr(self.source, "events_status", None)
        try:
            return events() if events is not None else None
        except Exception:  # noqa: BLE001 - status never fails for a source's sake
            return None


class Reader(threading.Thread):
    """Reads one source on its own schedule: a cheap change check every
    ``poll`` seconds, a full read when it moved and every ``resync``
    seconds regardless, a doubling delay up to ``backoff_max`` while it
    fails. Calls ``on_change`` after a new good snapshot."""

    def __init__(self, view: SourceView, poll: float, resync: float, backoff_initial: float,
                 backoff_max: float, on_change: Callable[[], None]):
        super().__init__(name=f"source-{view.label}", daemon=True)
        self.view, self.poll, self.resync = view, poll, resync
        self.backoff_initial, self.backoff_max = backoff_initial, backoff_max
        self.on_change = on_change
        self.halt = threading.Event()

    def run(self) -> None:
        next_full = 0.0
        while not self.halt.is_set():
            now = self.view.clock()
            force = now >= next_full
            try:
                if self.view.refresh(force=force):
                    self.on_change()
            except Exception:  # noqa: BLE001 - a reader must outlive its bugs
                LOG.exception("reader of %s: unexpected error", self.view.label)
            if force:
                next_full = now + self.resync
            wait = self.poll
            if self.view.error is not None:
                wait = min(self.backoff_max,
                           self.backoff_initial * 2 ** max(0, self.view.failures - 1))
                wait = max(wait, self.poll)
                next_full = 0.0  # the next attempt is a full read
            self.halt.wait(wait)

    def stop(self) -> None:
        self.halt.set()

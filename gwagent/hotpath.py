"""Helpers of the measured hot paths (a pass over 100k endpoints, a change
of one endpoint in a million)."""
from __future__ import annotations

import contextlib
import functools
import gc


@contextlib.contextmanager
def gc_paused():
    """Hold the cyclic garbage collector while a pass builds and drops
    hundreds of thousands of acyclic tuples (entries, operations,
    messages): its passes over a large heap doubled the FDB decode time
    and tripled the plan of 100k entries here (0.44 s -> 0.14 s without).
    Reference counting still frees everything; a cycle made meanwhile
    waits for the next collection. Nested and concurrent uses are safe:
    only the outermost that found it enabled turns it back on."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def without_gc(func):
    """``func`` run under :func:`gc_paused`."""
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        with gc_paused():
            return func(*args, **kwargs)
    return wrapper


class ChangedSet:
    """A frozen set made as a change of another (:meth:`changed`) in work
    proportional to the change, and made whole (:meth:`whole`: a
    frozenset) only when asked.

    Why: the sets a gateway keeps by changes (its static dataplane's MACs,
    its MAC guards, a backend's guard members) hold an element per MAC of
    the world, and a new frozenset per change copied them whole (at 1M
    endpoints, a quarter of a second to add one). A ChangedSet is a value
    like a frozenset: what another thread holds never changes under it,
    and the identity of one is its version (``old is new``: nothing
    changed). It holds its whole or (the set it changes, the elements gone,
    those come) in one attribute, so making it whole is safe from any
    thread; made whole, it lets go of the changes before it. The changes
    kept since the last whole are made whole again once they outweigh an
    eighth of the set: a copy of the set per that much change (each
    changed element's share of the work stays constant; the memory the
    changes hold stays bounded)."""

    __slots__ = ("_of", "_size", "_pending")
    SLACK, FLOOR = 8, 1024   # made whole when the changes kept exceed size / SLACK (or FLOOR)

    def __init__(self, items=frozenset()):
        self._of = frozenset(items)   # the whole, or (the set changed, gone, come)
        self._size = len(self._of)
        self._pending = 0             # elements in the changes kept since a whole

    def changed(self, gone, came) -> "ChangedSet":
        """This set without ``gone`` (elements of it), with ``came`` (none of
        the rest of it): ``(self - gone) | came`` in work proportional to
        ``gone`` and ``came``."""
        gone, came = frozenset(gone), frozenset(came)
        if not gone and not came:
            return self
        new = ChangedSet.__new__(ChangedSet)
        new._of = (self, gone, came)
        new._size = self._size - len(gone) + len(came)
        new._pending = self._pending + len(gone) + len(came)
        if new._pending > max(new._size // self.SLACK, self.FLOOR):
            new.whole()
        return new

    def whole(self) -> frozenset:
        """The set, whole (made once, then kept)."""
        of = self._of
        if isinstance(of, frozenset):
            return of
        steps = []
        while not isinstance(of, frozenset):
            steps.append(of)
            of = of[0]._of
        if len(steps) == 1:   # one copy, not two (a cold start: one change of everything)
            _, gone, came = steps[0]
            of = (of - gone) | came if gone else of | came
        else:
            items = set(of)
            for _, gone, came in reversed(steps):
                items -= gone
                items |= came
            of = frozenset(items)
        self._of, self._size, self._pending = of, len(of), 0
        return of

    def __len__(self) -> int:
        return self._size

    def __iter__(self):
        return iter(self.whole())

    def __repr__(self) -> str:
        return f"ChangedSet({len(self)} elements)"


def whole(items) -> frozenset:
    """``items`` (a ChangedSet, a frozenset or any iterable) as a frozenset."""
    return items.whole() if isinstance(items, ChangedSet) else frozenset(items)


def follow(last: tuple | None, source, derive, same: bool = True,
           changed: tuple | None = None) -> tuple[ChangedSet, tuple | None]:
    """``derive(source)``, computed from the last one by what changed; and
    the step, for :func:`difference`.

    ``last`` is (the source, what ``derive`` made of it) of the previous
    call, or None; ``derive`` maps each element of a set on its own (one
    element to at most one, and distinct ones to distinct ones), so the
    result follows a change of a few elements: those gone out, those come
    in. ``changed`` is (a source, the elements gone since, those come),
    when the caller knows them (gwagent.control.world); else two set
    differences find them (the sources made whole: C loops, but work
    proportional to the world). ``same``: whatever else ``derive`` reads
    is as it was for ``last`` (else everything is derived again). The
    result is a :class:`ChangedSet`, made from the last one in work
    proportional to the change. The step is (what was made, what is made
    now, the derived elements gone, those come), or None."""
    source = source or frozenset()
    if last is None or last[0] is None or not same:
        return ChangedSet(derive(source)), None
    old, made = last
    if old is source:
        return made, None
    if changed is not None and changed[0] is old:
        gone, came = changed[1], changed[2]
    else:
        old, source = whole(old), whole(source)
        gone, came = old - source, source - old
    out, into = derive(gone), derive(came)
    if not isinstance(made, ChangedSet):
        made = ChangedSet(made)
    now = made.changed(out, into)
    return now, (made, now, out, into)


def difference(have, want, step: tuple | None) -> tuple[frozenset, frozenset]:
    """(gone, add) from ``have`` to ``want``: the step of :func:`follow`
    when it went from ``have`` to ``want``, else two set differences (of
    the wholes)."""
    if step is not None and step[0] is have and step[1] is want:
        return step[2], step[3]
    have, want = whole(have), whole(want)
    return have - want, want - have

"""The registrar: keep one remote port per remote endpoint in the local site.

Pure diff from (desired remote ports, registered remote ports) to what to
register (create or update in place) and what to unregister. Only ports the
registry reports as this gateway's own are ever considered, so a foreign
port is never touched; two registered ports with one key (a crash between
create and record, say) are collapsed to one.
"""
from __future__ import annotations

from typing import Iterable

from gwagent.model import RemotePort


def diff(desired: Iterable[RemotePort], registered: Iterable[RemotePort]
         ) -> tuple[list[RemotePort], list[RemotePort]]:
    want = {p.key: p for p in desired}
    keep: dict[tuple, RemotePort] = {}
    unregister = []
    for port in registered:
        if port.key not in want or port.key in keep:
            unregister.append(port)
        else:
            keep[port.key] = port
    register = [p for key, p in sorted(want.items()) if keep.get(key) != p]
    # A duplicate whose twin is kept equal to the desired port stays removed;
    # if the kept one differs, the update in place fixes it.
    return register, unregister

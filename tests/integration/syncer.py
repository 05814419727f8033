"""One reconcile pass of remote ports, as the agent drives source + registry.

Read the local and peer snapshots, compute the remote ports the local site
must hold (``Desired.remote_ports()``), and register what is missing or
different and unregister what this gateway owns but no longer wants.
"""
from __future__ import annotations

from gwagent.model import Desired


def sync_once(local, peers) -> dict:
    desired = Desired(local.snapshot(), tuple(p.snapshot() for p in peers))
    want = {rp.key: rp for rp in desired.remote_ports()}
    have = {rp.key: rp for rp in local.remote_ports()}
    changed = [rp for key, rp in want.items() if have.get(key) != rp]
    stale = [rp for key, rp in have.items() if key not in want]
    errors = {}
    errors.update(local.register(changed))
    errors.update(local.unregister(stale))
    return {"registered": len(changed), "unregistered": len(stale), "errors": errors}

"""One reconcile pass of remote ports, as the agent drives source + registry.

Read the local and peer snapshots, compute the remote ports the local site
must hold (``Desired.remote_ports()``), and register what is missing or
different and unregister what this gateway owns but no longer wants.
"""
from __future__ import annotations

from gwagent.control import registrar
from gwagent.model import Desired


def sync_once(local, peers) -> dict:
    desired = Desired(local.snapshot(), tuple(p.snapshot() for p in peers))
    changed, stale = registrar.diff(desired.remote_ports(), local.remote_ports())
    errors = {}
    errors.update(local.register(changed))
    errors.update(local.unregister(stale))
    return {"registered": len(changed), "unregistered": len(stale), "errors": errors}

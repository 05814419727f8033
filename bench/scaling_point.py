"""One point of the scaling curve, in a process of its own (bench/test_scaling.py).

    python bench/scaling_point.py --backend linux --endpoints 100000 --networks 10

A gateway (the product's Agent, ingress filter and MAC guard on, the audit
an hour away) from fixed in-memory sources: a local site with one endpoint
per network and a peer with ``--endpoints`` remote endpoints over
``--networks`` stretched networks (bench/test_reconcile.py's world). In a
throwaway namespace ``gwb-``, and on OpenFlow with an ovs-vswitchd of its
own, both removed at the end. It prints one JSON object:

* ``cold_s``: the first pass, from an empty dataplane, everything written;
* ``idle_s``: a pass with nothing to change (median of 10);
* ``change_s``: one more remote endpoint in the peer's snapshot (a VM
  booted there), from the new snapshot to its entry in the dataplane
  (median of 3; each checked afterwards by a read of that one device or
  flow; ``change_full_reads``: why the dataplane was read whole in those
  passes, if it was);
* ``registry_change_s``: the registrar's sync after that change, against
  a registry in memory holding every remote port (median of 3; the
  dataplane's figures above leave the registry out);
* ``rss_peak_mib``: the process's peak resident memory (the world, the
  agent's state, everything);
* ``dataplane_mib``: what the entries cost the kernel (its slab, before and
  after the cold pass) or ovs-vswitchd (its resident memory, the same).

A process per point, so that each peak is its own and nothing of a bigger
world is left in the allocator for the next.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import os
import pathlib
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests" / "functional"))

from gwagent.control.agent import Agent, PassResult  # noqa: E402
from gwagent.dataplane.linux import LinuxBackend  # noqa: E402
from gwagent.lab.ovs import Ovs, missing  # noqa: E402
from gwagent.model import SiteSnapshot  # noqa: E402
from gwagent.openflow import flows as fl  # noqa: E402
from gwagent.openflow.backend import OpenFlowBackend  # noqa: E402

from netns import new_name, remove, run  # noqa: E402
from test_reconcile import build_desired  # noqa: E402

IDLE_ROUNDS = 10
CHANGES = 3


class Source:
    """A source whose snapshot the benchmark replaces (a new version each time)."""

    def __init__(self, snapshot):
        self.snap, self.ver = snapshot, 1

    def snapshot(self):
        return self.snap

    def version(self):
        return self.ver

    def replace(self, snapshot) -> None:
        self.snap, self.ver = snapshot, self.ver + 1


class Registry:
    """A registry of remote ports in memory, as a site's Neutron with its
    notifications heard holds them: what was registered, and a version
    that moves only when someone else changes it."""

    def __init__(self):
        self.ports = {}

    def remote_ports(self):
        return list(self.ports.values())

    def registry_version(self):
        return "events", 0

    def register(self, ports):
        self.ports.update((p.key, p) for p in ports)
        return {}

    def unregister(self, ports):
        for port in ports:
            self.ports.pop(port.key, None)
        return {}


def _sync_registry(agent) -> float:
    """One sync of the registrar, as its thread makes it; its seconds."""
    result = PassResult(reason="registry", at=time.time())
    start = time.perf_counter()
    agent._sync_registry(result, agent.clock())
    took = time.perf_counter() - start
    if result.errors:
        raise RuntimeError(f"registry sync failed: {result.errors[:3]}")
    return took


@contextlib.contextmanager
def _namespace():
    """A throwaway ``gwb-`` namespace made by ``ip netns add``, which waits
    as long as the kernel takes (after a point with 3,000 links its
    clean-up holds the next creation for seconds, past pyroute2's deadline)."""
    name = new_name("gwb-")
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        remove(name)


def _kib(path: str, field: str) -> int:
    for line in pathlib.Path(path).read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise LookupError(f"{field} not in {path}")


def _dataplane_kib(ovs) -> int:
    """The kernel's slab, or ovs-vswitchd's resident memory."""
    if ovs is None:
        return _kib("/proc/meminfo", "Slab")
    return _kib(f"/proc/{ovs.pid('ovs-vswitchd')}/status", "VmRSS")


def _pass(agent, reason="resync"):
    result = agent.run_pass(reason, registry=False)  # as the loop: the registrar apart
    if result.errors:
        raise RuntimeError(f"pass failed: {result.errors[:3]}")
    return result


def _added(peer, i: int, networks: int):
    """The peer's snapshot with one more endpoint (a VM booted in that
    cloud), from a source that says what changed, as the Neutron source
    does (SiteSnapshot.after)."""
    ep = dataclasses.replace(peer.endpoints[0], network=f"net{i % networks}",
                             mac=f"fa:16:3e:ff:00:{i:02x}")
    return SiteSnapshot.after(peer, peer.networks, peer.endpoints + (ep,), (), (ep,),
                              peer.rejected, peer.vteps), ep


def _in_dataplane(backend: str, ns: str, agent, ep, ovs) -> bool:
    """A read of one device or one flow: is the endpoint's MAC at the peer's
    gateway?"""
    vni = next(n.transit_vni for n in agent.static_dp.networks if n.name == ep.network)
    if backend == "linux":
        out = run(ns, "bridge", "fdb", "show", "dev", f"gwa-vt-{vni}").stdout
        return any(line.startswith(f"{ep.mac} dst ") for line in out.splitlines())
    out = ovs.ofctl("gwa-ovs", "dump-flows", f"table={fl.UNICAST},reg0={vni},dl_dst={ep.mac}")
    return f"dl_dst={ep.mac}" in out


def measure(backend: str, endpoints: int, networks: int) -> dict:
    desired = build_desired(endpoints, networks)
    local, peer = desired.local, desired.peers[0]
    peer_source = Source(peer)
    with _namespace() as ns:
        ovs = be = None
        rundir = tempfile.mkdtemp(prefix="gwb-ovs-")
        try:
            if backend == "linux":
                be = LinuxBackend(ns)
            else:
                if missing():
                    raise SystemExit(f"the OpenFlow points need {missing()}")
                ovs = Ovs(ns, rundir).start()
                be = OpenFlowBackend(ns, ovs.db_sock, "gwa-ovs", "gwa-vxlan", "netdev",
                                     "127.0.0.1", 6653, timeout=600)
            registry = Registry()
            agent = Agent(Source(local), [peer_source], registry, be, ingress_filter=True,
                          mac_guard=True, audit_interval=3600.0, pass_budget=3600.0)
            gc.collect()
            gc.freeze()  # as the agent's long-lived state (see gwagent/hotpath.py)
            before = _dataplane_kib(ovs)
            start = time.perf_counter()
            cold = _pass(agent, "start")
            cold_s = time.perf_counter() - start
            if sum(cold.ops.values()) < endpoints:
                raise RuntimeError(f"the cold pass wrote too little: {cold.ops}")
            _pass(agent)  # the echoes of the cold pass's own network changes
            _sync_registry(agent)
            if len(registry.ports) != endpoints:
                raise RuntimeError(f"registered {len(registry.ports)} of {endpoints} ports")
            dataplane_kib = _dataplane_kib(ovs) - before
            idle = []
            for _ in range(IDLE_ROUNDS):
                start = time.perf_counter()
                result = _pass(agent)
                idle.append(time.perf_counter() - start)
                if result.ops:
                    raise RuntimeError(f"an idle pass planned {result.ops}")
            changes, reads, registrations = [], [], []
            snap = peer
            for i in range(CHANGES):
                audits = agent.mirror.audits
                snap, ep = _added(snap, i, networks)
                start = time.perf_counter()
                peer_source.replace(snap)
                result = _pass(agent, "source")
                changes.append(time.perf_counter() - start)
                if agent.mirror.audits != audits:  # a full read in the change's pass: why
                    reads.append(agent.mirror.last_dump_reason)
                if not result.ops:
                    raise RuntimeError("the new endpoint planned nothing")
                if not _in_dataplane(backend, ns, agent, ep, ovs):
                    raise RuntimeError(f"{ep.mac} is not in the dataplane after the pass")
                registrations.append(_sync_registry(agent))
                if not any(p.origin == ep for p in registry.ports.values()):
                    raise RuntimeError(f"{ep.mac} is not in the registry after its sync")
            return {
                "backend": backend, "endpoints": endpoints, "networks": networks,
                "cold_s": cold_s, "idle_s": statistics.median(idle),
                "change_s": statistics.median(changes), "change_ops": result.ops,
                "change_full_reads": reads,
                "registry_change_s": statistics.median(registrations),
                "rss_peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "dataplane_mib": dataplane_kib / 1024,
            }
        finally:
            gc.unfreeze()
            if be is not None:
                # Removing a namespace with 3,000 links left the kernel
                # unregistering them for ~19 s, holding the next point's
                # first netlink socket past pyroute2's deadline: remove
                # them here, before the namespace goes.
                if backend == "linux":
                    be.remove_all()
                be.close()
            if ovs is not None:
                ovs.stop()
            shutil.rmtree(rundir, ignore_errors=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=("linux", "openflow"), required=True)
    parser.add_argument("--endpoints", type=int, required=True)
    parser.add_argument("--networks", type=int, required=True)
    args = parser.parse_args(argv)
    # a deadline's SIGTERM still cleans up (namespace, ovs-vswitchd); not
    # in pyroute2's forked helper, which inherits the handler and is itself
    # ended by SIGTERM: its clean-up would remove the namespace it was in
    me = os.getpid()

    def stop(*_):
        if os.getpid() != me:
            os._exit(0)
        sys.exit("stopped (SIGTERM)")
    signal.signal(signal.SIGTERM, stop)
    print(json.dumps(measure(args.backend, args.endpoints, args.networks)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

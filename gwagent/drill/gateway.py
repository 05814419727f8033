"""``gwagent drill gateway``: the active gateway node of a site dies under traffic.

For a site with two gateway nodes (``gateways: [a-gw1, a-gw2]``; keepalived
holds the site's tunnel and transit addresses on the active one,
:mod:`gwagent.lab.vrrp`), each run:

1. waits until the first node is active and every probe is answered;
2. takes *both* NICs of the active node down (``eth0`` on the site
   segment, ``eth1`` on the transit: the node is gone for the computes and
   the peers alike; stopping its agent alone would be a false drill, its
   kernel would go on forwarding);
3. timestamps the standby's first gratuitous ARP for the site's tunnel
   address on the wire (the takeover; failure to GARP is VRRP's detection
   time, reported beside the outage);
4. waits until every client is answered again, checks that the new
   active node's dataplane is the one the old one had (nothing stale), and
   counts the writes to every site's registry (Neutron, or the inventory's
   registry file) since before the failure: expected none, the remote
   ports keep the site's virtual tunnel address as their VTEP;
5. brings the old node's NICs back: it takes the addresses back (VRRP
   preemption, the *give-back*), measured the same way.

The traffic: UDP probes every millisecond, on the drilled network, from
every VM of the other sites to a VM of the drilled site and from every VM
of the drilled site to a VM of another site: each crosses the dying node.
"""
from __future__ import annotations

import contextlib
import dataclasses
import time
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from gwagent.drill import report
from gwagent.drill.check import Check
from gwagent.drill.garp import LEAD, TAIL, wait_settled
from gwagent.drill.probes import PORT, Prober
from gwagent.drill.scenario import DrillError, drilled_network
from gwagent.drill.vrrp import GarpWatch
from gwagent.lab import build, gateways, probe, vrrp
from gwagent.lab.namespaces import ipr as open_ipr

NICS = ("eth0", "eth1")


@dataclasses.dataclass
class Plan:
    """Who probes whom across the drilled site's gateway."""

    site: object                   # the LabSite
    network: str
    inbound: tuple                 # (target VM, [client VMs of other sites])
    outbound: tuple                # (target VM of another site, [client VMs of the site])


def plan(lab, site_name: str | None = None, network: str | None = None) -> Plan:
    topo = lab.topology
    ha = [s for s in topo.sites if s.ha]
    if site_name is None:
        if not ha:
            raise DrillError("no site of the lab has two gateway nodes; a gateway drill needs "
                             "one, e.g. 'gateways: [a-gw1, a-gw2]' in the topology "
                             "(gwagent/lab/ha.yaml is such a lab)")
        site = ha[0]
    else:
        try:
            site = topo.site(site_name)
        except KeyError:
            raise DrillError(f"no site {site_name!r} in the lab (sites: "
                             f"{', '.join(s.name for s in topo.sites)})") from None
        if not site.ha:
            raise DrillError(f"site {site.name} has one gateway node ({site.gateways[0]}); "
                             "a gateway drill needs two ('gateways: [N1, N2]' in the "
                             "topology)")
    network = drilled_network(topo, network)
    here = [vm for vm in topo.vms if vm.network == network and vm.site == site.name]
    there = [vm for vm in topo.vms if vm.network == network and vm.site != site.name]
    if not here or not there:
        raise DrillError(f"network {network} needs a VM in site {site.name} and one in "
                         "another site for traffic across the gateway")
    return Plan(site, network, (here[0], there), (there[0], here))


def _links(lab, node: str, up: bool) -> float:
    """Both NICs of the node up or down; returns the moment before."""
    with open_ipr(lab.ns(node)) as ipr:
        before = time.monotonic()
        for nic in NICS:
            ipr.link("set", index=ipr.link_lookup(ifname=nic)[0], state="up" if up else "down")
    return before


def registry_marks(lab) -> tuple[dict[str, frozenset], dict[str, int]]:
    """Every site's registered remote ports, whole (a write changes one),
    and the write requests (POST, PUT, DELETE) each gateway agent has sent
    to a Neutron (its metrics; none on a file lab), by node: a write that
    changed nothing shows there."""
    ports = {s.name: frozenset(lab.truth.remote_ports(s.name)) for s in lab.topology.sites}
    requests = {node: _write_requests(build.metrics_url(lab, site.name, node))
                for site in lab.topology.sites for node in site.gateways}
    return ports, requests


def _write_requests(url: str | None) -> int:
    if not url:
        return 0
    with urllib.request.urlopen(url, timeout=5) as resp:
        text = resp.read().decode()
    return int(sum(s.value for family in text_string_to_metric_families(text)
                   for s in family.samples
                   if s.name == "gwagent_neutron_requests_total"
                   and s.labels.get("method") in ("POST", "PUT", "DELETE")))


def _writes(before: tuple, after: tuple) -> tuple[int, str]:
    """Remote ports created, changed or deleted between two marks, or the
    write requests sent meanwhile if they are more; and who sent them."""
    changed = sum(len(before[0][s] ^ after[0][s]) for s in before[0])
    sent = {node: n - before[1].get(node, 0) for node, n in after[1].items()}
    who = ", ".join(f"{node} sent {n}" for node, n in sorted(sent.items()) if n)
    return max(changed, sum(sent.values())), who or f"{changed} remote ports differ"


def wait_active(lab, site, node: str, timeout: float) -> bool:
    """Until ``node`` holds the site's addresses and its agent says so."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if vrrp.holds(lab, site, node) and ((build.agent_status(lab, site.name, node) or {})
                                            .get("ha") or {}).get("role") == "active":
            return True
        time.sleep(0.02)
    return False


def dataplane_checks(lab, site, node: str, reference: tuple) -> list[Check]:
    """The node's MAC places and flood destinations against ``reference``
    (what the other node had before the failure)."""
    places, floods = gateways.places(lab, site.name, node), gateways.floods(lab, site.name, node)
    return [Check(node, f"MAC places ({lab.backend})", _fmt(reference[0]), _fmt(places)),
            Check(node, f"flood destinations ({lab.backend})", _fmt(reference[1]), _fmt(floods))]


def _fmt(entries) -> str:
    return f"{len(entries)}: " + ", ".join(sorted(map(str, entries)))[:2000]


def run(lab, site_name: str | None = None, network: str | None = None, runs: int = 1,
        timeout: float = 3.0, progress=lambda msg: None) -> tuple[list[report.Move], dict]:
    p = plan(lab, site_name, network)
    site = p.site
    first, second = site.gateways
    elect = 3.0
    if not wait_active(lab, site, first, elect + 10):
        raise DrillError(f"{first} does not hold site {site.name}'s addresses "
                         f"({site.tunnel_ip}, {site.transit_ip}); lab status says who does")
    clients_in = [(vm.name, vm.site, lab.ns(vm.name)) for vm in p.inbound[1]]
    clients_out = [(vm.name, vm.site, lab.ns(vm.name)) for vm in p.outbound[1]]
    # Warm ARP: a cold one costs the kernel's 1 s retries, not the gateway's.
    for clients, target in ((clients_in, p.inbound[0]), (clients_out, p.outbound[0])):
        for _, _, ns in clients:
            probe.ping(ns, target.ip)
    watches = {n: GarpWatch(lab.ns(n), site.tunnel_ip) for n in site.gateways}
    moves, writes = [], []
    progress(f"gateway drill on site {site.name} ({first} active, {second} standby), network "
             f"{p.network}: {len(clients_in)} clients -> {p.inbound[0].name}, "
             f"{len(clients_out)} clients -> {p.outbound[0].name}")
    try:
        with Prober(clients_in, [(p.inbound[0].name, lab.ns(p.inbound[0].name))],
                    p.inbound[0].ip, port=PORT) as pin, \
                Prober(clients_out, [(p.outbound[0].name, lab.ns(p.outbound[0].name))],
                       p.outbound[0].ip, port=PORT + 1) as pout:
            probers = ((pin, p.inbound[0].name), (pout, p.outbound[0].name))
            for i in range(1, runs + 1):
                for mode, dead, taker in (("takeover", first, second),
                                          ("giveback", second, first)):
                    if not all(wait_settled(pr, target, time.monotonic(), timeout + elect)
                               for pr, target in probers):
                        progress(f"gateway {mode} run {i}: not every client is answered "
                                 "before the failure; measuring anyway")
                    reference = (gateways.places(lab, site.name, dead),
                                 gateways.floods(lab, site.name, dead))
                    marks = registry_marks(lab)
                    for w in watches.values():
                        w.drain()
                    start = time.monotonic() - LEAD
                    if mode == "takeover":
                        failed = _links(lab, first, up=False)
                    else:
                        failed = _links(lab, first, up=True)  # the preferred node returns
                    garp = watches[taker].first_after(failed, elect + timeout)
                    ref = garp if garp is not None else failed
                    ok = all(wait_settled(pr, target, ref, timeout + elect)
                             for pr, target in probers)
                    time.sleep(TAIL)
                    end = time.monotonic()
                    results = [dataclasses.replace(report.analyse(rec, target, target, start,
                                                                  end, ref), old_after=0)
                               for pr, target in probers for rec in pr.records]
                    active = wait_active(lab, site, taker, timeout + elect)
                    checks = dataplane_checks(lab, site, taker, reference)
                    if not active:
                        checks.append(Check(taker, "holds the site's addresses, agent active",
                                            "yes", "no"))
                    # The new active node's registrar has run by now (it starts
                    # at once on becoming active); what it wrote shows here.
                    _settle_registrar(lab, site, taker, failed, timeout)
                    n_writes, who = _writes(marks, registry_marks(lab))
                    writes.append(n_writes)
                    if n_writes:
                        checks.append(Check(site.name, "registry writes after the move", "0",
                                            f"{n_writes} ({who})"))
                    move = report.Move(
                        "gw", mode, "cross", i, dead, taker, results, checks,
                        failure_ms=round((failed - ref) * 1000, 3),
                        note=("" if ok else "not settled")
                        + ("" if garp is not None else " no GARP seen"))
                    moves.append(move)
                    progress(f"gateway {mode:<8} run {i}/{runs}: {dead} -> {taker}: GARP "
                             f"{(ref - failed) * 1000:.0f} ms after the "
                             f"{'failure' if mode == 'takeover' else 'return'}; outage "
                             + ", ".join(f"{c.client} "
                                         f"{'NEVER' if c.outage_ms is None else f'{c.outage_ms:.0f} ms'}"
                                         for c in results)
                             + f"; registry writes {n_writes}"
                             + (f"; {len(move.stale)} STALE" if move.stale else "")
                             + (f" ({move.note.strip()})" if move.note else ""))
    finally:
        for w in watches.values():
            w.close()
        with contextlib.suppress(Exception):
            _links(lab, first, up=True)
    return moves, {"drill": "gateway", "site": site.name, "network": p.network,
                   "nodes": list(site.gateways), "registry_writes": writes,
                   "detection_ms": [round(-m.failure_ms, 3) for m in moves
                                    if m.failure_ms is not None]}


def _settle_registrar(lab, site, node: str, since: float, timeout: float) -> None:
    """Until the node's registrar has synced once after ``since`` (wall
    time of the agent's status; the registrar runs on becoming active)."""
    wall_since = time.time() - (time.monotonic() - since)
    deadline = time.monotonic() + timeout + 2.0
    while time.monotonic() < deadline:
        reg = (build.agent_status(lab, site.name, node) or {}).get("registry") or {}
        if reg.get("state") in ("ok", "failing") and (reg.get("at") or 0) > wall_since:
            return
        time.sleep(0.05)

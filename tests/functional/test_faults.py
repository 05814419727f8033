"""Independent failure domains: faults in one cloud's control plane, under traffic.

A three-site lab with one real Neutron per site and RabbitMQ. For each fault
(``gwagent lab fault``: a peer's API frozen then killed, the own API frozen,
RabbitMQ stopped, an API answering 500s, an API answering 3 s late), while
sequence-numbered probes cross the gateways every millisecond:

* no probe is lost (on OpenFlow's userspace datapath: no gap of more than
  1 s, see the test);
* an owned MAC place (FDB entry or flow) deleted behind gateway a's back is
  repaired within 2.5 s (the fault's own delay is 3 s);
* a VM added in a healthy cloud is reachable from the other healthy site;
* the gateway's status names the failing source;

and once the fault is cleared every gateway converges to exactly the state
it had (the same MAC places and flood destinations; the same remote ports,
none duplicated or orphaned). The lab runs on both backends.
"""
from __future__ import annotations

import collections
import threading
import time

import pytest

from gwagent.lab import build, faults, gateways, probe
from gwagent.lab import neutron as lab_neutron
from gwagent.lab import topology as topo_mod

from labs import BACKENDS, lab_up, wait_for

THREE_SITES = {
    "networks": [{"name": "red", "transit_vni": 5001, "subnet": "198.19.10.0/24"}],
    "sites": [{"name": "a", "computes": ["a-cn1", "a-cn2"], "segmentation_ids": {"red": 1001}},
              {"name": "b", "computes": ["b-cn1"], "segmentation_ids": {"red": 2001}},
              {"name": "c", "computes": ["c-cn1"], "segmentation_ids": {"red": 3001}}],
    "vms": [{"name": "a1", "site": "a", "compute": "a-cn1", "network": "red",
             "ip": "198.19.10.11"},
            {"name": "a2", "site": "a", "compute": "a-cn2", "network": "red",
             "ip": "198.19.10.12"},
            {"name": "b1", "site": "b", "compute": "b-cn1", "network": "red",
             "ip": "198.19.10.21"},
            {"name": "c1", "site": "c", "compute": "c-cn1", "network": "red",
             "ip": "198.19.10.31"}],
}


@pytest.fixture(scope="module", params=BACKENDS)
def flab(request):
    with lab_up(topo_mod.parse(THREE_SITES), neutron=True, backend=request.param) as lab:
        yield lab


def owned_state(lab, site):
    """The MAC places and flood destinations of the site's gateway."""
    return gateways.places(lab, site), gateways.floods(lab, site)


def remote_ports(lab, site):
    """{origin key: count} of the remote ports the site's gateway holds."""
    ports = lab_neutron.remote_ports_of(lab, site)
    return collections.Counter((p.origin.site, p.origin.port_id, p.origin.mac) for p in ports)


def baseline(lab):
    return ({s.name: owned_state(lab, s.name) for s in lab.topology.sites},
            {s.name: remote_ports(lab, s.name) for s in lab.topology.sites})


def source_row(lab, site, name):
    status = build.agent_status(lab, site) or {}
    return next((s for s in status.get("sources") or () if s["name"] == name), None)


class Traffic:
    """Probes every 1 ms between VMs of different sites, for the whole fault."""

    def __init__(self, lab, pairs):
        self.lab, self.pairs, self.results = lab, pairs, {}
        self.stop = threading.Event()
        self.threads = []

    def __enter__(self):
        for i, (src, dst) in enumerate(self.pairs):
            thread = threading.Thread(target=self._run, args=(i, src, dst), daemon=True)
            thread.start()
            self.threads.append(thread)
        return self

    def _run(self, i, src, dst):
        lab = self.lab
        port = probe.DEFAULT_PORT + 100 + i
        rx = probe.udp_receiver(lab.ns(dst), port)
        tx = probe.ns_socket(lab.ns(src))
        run_id = i + 1000
        count = 120_000  # an upper bound: the stream stops with the scenario
        sender = threading.Thread(target=probe.send, args=(
            tx, lab.topology.vm(dst).ip, port, count, 0.001, run_id, self.stop), daemon=True)
        sender.start()
        stats = probe.Stats()
        try:
            while sender.is_alive():
                got = probe.receive(rx, count, 0.2, run_id)
                for seq in got.seen:
                    stats.add(seq, 0.0, 0.0)
            tail = probe.receive(rx, count, 0.5, run_id, idle=0.3)
            for seq in tail.seen:
                stats.add(seq, 0.0, 0.0)
        finally:
            tx.close()
            rx.close()
        self.results[(src, dst)] = stats.finish(stats.max_seq + 1)

    def __exit__(self, *exc):
        self.stop.set()
        for thread in self.threads:
            thread.join(10)


def delete_owned_entry(lab, mac):
    """Delete gateway a's place for ``mac`` (its VXLAN entry, or its flow;
    traffic floods meanwhile); return the time it was deleted."""
    t0 = time.monotonic()
    gateways.delete_by_hand(lab, "a", "red", mac)
    return t0


def repaired_within(lab, mac, dst, since, timeout=5.0):
    def back():
        """the deleted entry is back"""
        return ("transit", dst) in gateways.place_of(lab, "a", "red", mac)
    wait_for(back, timeout, 0.01)
    return time.monotonic() - since


# (fault, faulted site, the gateway that must name it, the healthy sites)
SCENARIOS = [
    ("api-freeze", "b", "a", ("a", "c")),
    ("api-kill", "b", "a", ("a", "c")),
    ("api-freeze", "a", "a", ("b", "c")),
    ("api-error", "b", "a", ("a", "c")),
    ("api-slow", "b", "a", ("a", "c")),
    ("rabbit-stop", None, None, ()),
]


@pytest.mark.parametrize("fault, site, observer, healthy", SCENARIOS,
                         ids=[f"{f}-{s or 'lab'}" for f, s, _, _ in SCENARIOS])
def test_a_fault_of_one_cloud_stalls_no_gateway(flab, fault, site, observer, healthy):
    lab = flab
    before_fdb, before_ports = baseline(lab)
    c1 = lab.topology.vm("c1")
    c_transit = lab.topology.site("c").transit_ip
    report = {}
    started = time.monotonic()

    def mark(phase):
        """the scenario's time line, in its report"""
        report.setdefault("at_s", {})[phase] = round(time.monotonic() - started, 2)
    with Traffic(lab, [("a1", "b1"), ("a1", "c1"), ("b1", "c1")]) as traffic:
        time.sleep(0.3)
        print(faults.inject(lab, site, fault))
        mark("injected")
        try:
            if observer is not None:
                def named():
                    """gateway a's status names the failing source"""
                    row = source_row(lab, observer, site)
                    return row and row["state"] != "fresh" and row
                row = wait_for(named, 15.0, 0.1)
                report["status"] = (row["state"], row.get("error"))
                mark("named")
            # a repair of an owned entry is not held up by the fault
            t0 = delete_owned_entry(lab, c1.mac)
            report["repair_s"] = repaired_within(lab, c1.mac, c_transit, t0)
            # inside the fault's own delay (3 s): not held up by it (measured
            # 0.1-0.8 s, once 1.1 s on a busy CI machine and 1.6 s on Linux
            # in a three-site lab with both networks)
            assert report["repair_s"] < 2.5, report
            if healthy:
                # a VM added in a healthy cloud reaches the other healthy site
                home, other = healthy[1], healthy[0]
                src = next(vm.name for vm in lab.topology.vms if vm.site == other)
                new = {"name": "f1", "site": home,
                       "compute": lab.topology.site(home).computes[0], "network": "red",
                       "ip": "198.19.10.99"}
                t_add = build.add_vm(lab, new)
                took = probe.time_to_reach(lab.ns(src), lab.ns("f1"), new["ip"], t_add,
                                           timeout=15.0, port=probe.DEFAULT_PORT + 90)
                report["new_vm_s"] = took
                assert took is not None, f"f1 in site {home} not reachable from {src}"
                build.remove_vm(lab, "f1")
                mark("new-vm")
        finally:
            print(faults.clear(lab, site))
            cleared = time.time()
            mark("cleared")
        if observer is not None:
            def recovered():
                """the source is fresh again"""
                row = source_row(lab, observer, site)
                return row and row["state"] == "fresh"
            wait_for(recovered, 30.0, 0.2)
            mark("recovered")
    mark("traffic-stopped")
    print(f"{fault} {site}: {report}")
    for pair, stats in traffic.results.items():
        assert stats.expected > 1000, (pair, stats.to_dict())
        if lab.backend == "linux":
            assert stats.lost == 0, (pair, stats.to_dict())
        else:
            # OVS's userspace datapath reads its NICs through AF_PACKET
            # sockets with the default 208 KB buffer, and drops when
            # ovs-vswitchd falls behind on this busy 2-core machine: measured
            # with no fault at all in this lab, tens of probes in one burst of
            # 15-70 ms, seen as drops on ovs-vswitchd's packet socket (ss -0
            # -m) and none on Linux in the same runs. A gateway stalled by a
            # fault would lose seconds of probes: no gap may come near that.
            # (RabbitMQ's restart once cost 3% in one CI run: its reconnection
            # storm is the heaviest CPU load of the matrix; in another its
            # longest burst was 303 ms). A stall is seconds: 1 s keeps the
            # two apart.
            assert stats.lost <= stats.expected // 20, (pair, stats.to_dict())
            assert stats.longest_gap < 1000, (pair, stats.to_dict())

    def syncs():
        """{site: start} of each gateway's last registry sync, if each
        finished well and was begun after the fault was cleared"""
        out = {}
        for s in lab.topology.sites:
            reg = (build.agent_status(lab, s.name) or {}).get("registry") or {}
            if reg.get("state") != "ok" or reg.get("since", 0) < cleared:
                return None
            out[s.name] = reg["since"]
        return out

    first_same = []

    def converged():
        """every gateway holds exactly what it held before the fault, and
        still does after a registry sync of each begun later (a request the
        fault delayed may land late: once a remote port of f1, created
        after a listing had none)"""
        at, done = time.time(), syncs()
        fdb, ports = baseline(lab)
        if fdb != before_fdb or ports != before_ports:
            first_same.clear()
            return False
        if first_same and done is not None and min(done.values()) > first_same[0]:
            return True
        first_same[:] = first_same or [at]
        return False
    wait_for(converged, 30.0, 0.5, seen=lambda: (
        cleared, first_same, {s.name: (build.agent_status(lab, s.name) or {}).get("registry")
                              for s in lab.topology.sites}, baseline(lab)[1]))
    mark("converged")
    print(f"{fault} {site}: converged at {report['at_s']['converged']} s")
    for site_name, counts in before_ports.items():
        assert all(n == 1 for n in counts.values()), f"duplicate remote port in {site_name}"
    vms = {(vm.site, vm.mac) for vm in lab.topology.vms}
    for site_name, counts in baseline(lab)[1].items():
        orphans = [k for k in counts if (k[0], k[2]) not in vms]
        assert orphans == [], f"orphaned remote ports in {site_name}: {orphans}"

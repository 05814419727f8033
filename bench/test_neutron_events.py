"""Neutron changes by notifications: cold sync and one port change, at the
sizes of ``GWAGENT_EVENTS_PORTS`` (default 1000; the issue's second size is
10000, which takes about an hour of Neutron's CPU per cloud).

A private RabbitMQ broker and two real Neutron servers that publish their
notifications on it (``messagingv2``). The gateway of site B runs as it is
deployed: ``gwagent run`` in a process of its own, its dataplane (Linux) in
a throwaway ``gwb-`` namespace, its configuration the product's defaults
but for the clouds' names, their notifications and the stretched network.
Site A's ports are bound to one compute whose L2 agent is written into A's
database. Measured in one run, per size:

* ``floor_s``: Neutron creating the same remote ports in B (the bodies the
  registrar sends, for another gateway host, on a network of their own) in
  bulk for a plain client, 250 a request: what any registrar must wait
  for (``a_create_s``: site A's endpoint ports, bound to a compute, for
  comparison);
* ``cold_s``: from the gateway's start until its status says it registered
  every one of them in B (target: within 1.2x of the floor: the registrar
  adds at most 20% to Neutron's own work);
* ``change_s``: a port created in A, until B's dataplane holds its MAC
  toward A's gateway and B's Neutron its remote port (median of
  ``CHANGES``; target: under 1 s), with ``change_dataplane_s`` and
  ``change_registry_s`` apart, and ``change_create_s``, A's own create
  request (the notification leaves after it);
* ``full_listings``: the listings the gateway made during the changes
  (its status; by notifications there are none: it reads the ports by ID).

Targets are recorded, not asserted; the figures go to ``extra_info``,
stdout and bench/results.md.

    GWAGENT_EVENTS_PORTS=1000,10000 [GWAGENT_EVENTS_FLOOR=0] .venv/bin/pytest bench/test_neutron_events.py \\
        -p no:cacheprovider --benchmark-only -s
"""
from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gwagent.model import Gateway, RemotePort, Site
from gwagent.neutron.source import (BULK_SIZE, DEVICE_OWNER, NeutronSite,
                                    owner_device_id)

from netns import run, throwaway_netns
from test_neutron_sync import _free_port, _network, _populate, two_sites

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "integration"))
import rabbit as rabbitmq  # noqa: E402

SIZES = [int(s) for s in os.environ.get("GWAGENT_EVENTS_PORTS", "1000").split(",")]
#: GWAGENT_EVENTS_FLOOR=0: no floor (a third of a size's time: at 10,000
#: ports each of the three creations takes Neutron 20-25 minutes here)
FLOOR = os.environ.get("GWAGENT_EVENTS_FLOOR", "1") != "0"
CHANGES = 5
TRANSIT_VNI = 5001
GW_A = ("gw-a", "198.18.0.1", "198.19.0.1")   # host, tunnel IP, transit IP
GW_B = ("gw-b", "198.18.0.2", "198.19.0.2")


def wait_for(predicate, timeout: float, what: str, interval: float = 0.05):
    """The first true value of ``predicate()``, or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout:.0f}s: {what}")
        time.sleep(interval)
    return value


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    if not rabbitmq.available():
        pytest.fail("rabbitmq-server not installed: run make setup")
    base = tmp_path_factory.mktemp("neutron-events")
    broker = rabbitmq.Rabbit(base / "rabbit", port=_free_port(), dist_port=_free_port(),
                             epmd_port=_free_port(), node="gwbench",
                             vhosts=("site-a", "site-b"))
    broker.start()
    try:
        with two_sites(base, broker.vhost_url, timeout=600) as (clouds, clients):
            yield {"broker": broker, "clouds": clouds, "clients": clients}
    finally:
        broker.stop()


def _config(world, ns: str, state: Path, name: str, ids: dict) -> str:
    broker, clouds = world["broker"], world["clouds"]
    peer = (f"\n[neutron_peer_site-a]\ncloud = site-a\nclouds_file = {clouds}\n"
            f"network_ids = {name}:{ids['site-a']}\ngateway_host = {GW_A[0]}\n"
            f"gateway_tunnel_ip = {GW_A[1]}\ngateway_transit_ip = {GW_A[2]}\n"
            f"notification_url = {broker.vhost_url('site-a')}\n"
            "notification_exchange = neutron-site-a\n")
    return (f"[gateway]\nsource = neutron\nnetns = {ns}\nstate_dir = {state}\nnode = {GW_B[0]}\n"
            f"\n[neutron]\ncloud = site-b\nclouds_file = {clouds}\nsite_name = site-b\n"
            f"networks = {name}:{TRANSIT_VNI}\nnetwork_ids = {name}:{ids['site-b']}\n"
            f"gateway_host = {GW_B[0]}\ngateway_tunnel_ip = {GW_B[1]}\n"
            f"gateway_transit_ip = {GW_B[2]}\npeers = site-a\n"
            f"notification_url = {broker.vhost_url('site-b')}\n"
            "notification_exchange = neutron-site-b\n" + peer)


def _floor(a, b, name: str, net_a: dict, net_floor: dict) -> float:
    """Seconds Neutron takes to create in B, for a plain client in bulk, the
    remote ports of A's endpoints that the registrar would (its bodies, for
    gateway host ``gw-floor``, on network ``net_floor``)."""
    peer = NeutronSite(a, Site("site-a", Gateway(*GW_A)), {name: TRANSIT_VNI},
                       {name: net_a["id"]})
    floor = NeutronSite(b, Site("site-b", Gateway("gw-floor", GW_B[1], GW_B[2])),
                        {name: TRANSIT_VNI}, {name: net_floor["id"]})
    net = floor._stretched()[name]
    bodies = [floor._body(RemotePort(ep, GW_B[1], "gw-floor"), net)
              for ep in peer.snapshot().endpoints]
    start = time.perf_counter()
    for i in range(0, len(bodies), BULK_SIZE):
        b.request("POST", "/ports", {"ports": bodies[i:i + BULK_SIZE]})
    return time.perf_counter() - start


def _status(state: Path) -> dict:
    try:
        return json.loads((state / "status.json").read_text())
    except (OSError, ValueError):
        return {}


def _in_dataplane(ns: str, mac: str) -> bool:
    """A read of one device: is ``mac`` at A's gateway on the transit VXLAN?"""
    out = run(ns, "bridge", "fdb", "show", "dev", f"gwa-vt-{TRANSIT_VNI}").stdout
    return any(line.startswith(f"{mac} dst {GW_A[2]}") for line in out.splitlines())


@pytest.mark.parametrize("count", SIZES)
def test_neutron_change_by_notifications(benchmark, world, figures, count, tmp_path):
    a, b = world["clients"]["site-a"], world["clients"]["site-b"]
    name = f"ev{count}"
    net_a, net_b = _network(a, name, "198.18.0.0/15"), _network(b, name, "198.18.0.0/15")

    start = time.perf_counter()
    _populate(a, net_a, count, 0)
    a_create = time.perf_counter() - start
    floor = (_floor(a, b, name, net_a, _network(b, f"floor{count}", "198.18.0.0/15"))
             if FLOOR else None)

    state = tmp_path / "state"
    conf = tmp_path / "gwagent.conf"
    owner = owner_device_id(GW_B[0])
    with throwaway_netns("gwb-") as ns:
        conf.write_text(_config(world, ns, state, name,
                                {"site-a": net_a["id"], "site-b": net_b["id"]}))
        log = open(tmp_path / "gwagent.log", "wb")
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "gwagent.cli", "run", "--config-file",
                                 str(conf)], stdout=log, stderr=subprocess.STDOUT)
        try:
            def registered():
                st = _status(state)
                if proc.poll() is not None:
                    pytest.fail(f"gwagent exited {proc.returncode}; see {log.name}")
                return ((st.get("registry") or {}).get("state") == "ok"
                        and st.get("remote_ports_registered") == count and st)
            benchmark.pedantic(wait_for, args=(registered, 4 * (floor or a_create) + 120,
                                               f"{count} remote ports registered in B", 0.2),
                               rounds=1, iterations=1)
            cold = time.perf_counter() - start
            reads = lambda: {s["name"]: dict((s.get("notifications") or {}).get("reads") or {})
                             for s in _status(state).get("sources") or ()}  # noqa: E731
            wait_for(lambda: all((s.get("notifications") or {}).get("live")
                                 for s in _status(state).get("sources") or ()), 60,
                     "both clouds' notifications heard")
            before = reads()

            changes, dataplane, registry, created = [], [], [], []
            for i in range(CHANGES):
                t0 = time.perf_counter()
                port = a.request("POST", "/ports", {"port": {
                    "network_id": net_a["id"], "project_id": "p", "binding:host_id": "cn-a1",
                    "device_owner": "compute:bench",
                    "fixed_ips": [{"ip_address": f"198.19.250.{i + 2}"}]}})["port"]
                created.append(time.perf_counter() - t0)
                mac = port["mac_address"]
                t_dp = t_reg = None
                deadline = time.monotonic() + 30
                while (t_dp is None or t_reg is None) and time.monotonic() < deadline:
                    if t_dp is None and _in_dataplane(ns, mac):
                        t_dp = time.perf_counter() - t0
                    if t_reg is None and b.list("ports", device_owner=DEVICE_OWNER,
                                                device_id=owner, mac_address=mac,
                                                fields=["id"]):
                        t_reg = time.perf_counter() - t0
                    time.sleep(0.02)
                assert t_dp is not None and t_reg is not None, \
                    f"port {mac} not in B's dataplane ({t_dp}) and registry ({t_reg}) in 30 s"
                dataplane.append(t_dp)
                registry.append(t_reg)
                changes.append(max(t_dp, t_reg))
            after = reads()
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
            log.close()

    full = {src: after[src].get("full", 0) + after[src].get("owned_full", 0)
            - before[src].get("full", 0) - before[src].get("owned_full", 0) for src in after}
    info = {"ports": count, "a_create_s": round(a_create, 2),
            "floor_s": round(floor, 2) if floor else None,
            "cold_s": round(cold, 2),
            "cold_vs_floor": round(cold / floor, 2) if floor else None,
            "change_s": round(statistics.median(changes), 3),
            "change_max_s": round(max(changes), 3),
            "change_dataplane_s": round(statistics.median(dataplane), 3),
            "change_registry_s": round(statistics.median(registry), 3),
            "change_create_s": round(statistics.median(created), 3),
            "full_listings": full}
    benchmark.extra_info.update(info)
    figures[f"neutron-events/{count}"] = {"seconds": info["change_s"], "entries": count,
                                          **info}
    print(f"\nneutron events {count}: {json.dumps(info)}")

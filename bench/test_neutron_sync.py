"""Neutron sync: cold sync of 1000 ports and one change, bulk vs per-port.

Two real Neutron servers (fake:// transport: no broker needed, the driver's
casts go nowhere). Site A holds 1000 ports bound to one compute whose L2
agent is written into A's database; the gateway of site B registers them as
remote ports in B. Measured, each side by side with a naive client that
sends one request per port (the same registry with bulk size 1):

* cold sync: A's snapshot to 1000 remote ports in B (target: < 10 s);
* one change: a new IP on one port in A until its remote port in B carries
  it (target: < 2 s): the PUT in A, A's ``version()`` (how the agent sees a
  change) and one sync pass.

The naive client syncs 200 ports (its rate is per port; 1000 would add
minutes and say nothing more). Site A's ports are created in bulk before
the clock starts. Targets are recorded, not asserted; the figures go to
``extra_info``, stdout and bench/results.md (merged with other benches').
Where the time goes: Neutron's own port create, about 0.1 s of CPU per port
in bulk or not (see gwagent/neutron/source.py, "Cost").

    .venv/bin/pytest bench/test_neutron_sync.py -p no:cacheprovider --benchmark-only -s
"""
from __future__ import annotations

import contextlib
import json
import socket
import sqlite3
import sys
import time
import uuid
from pathlib import Path

import pytest

from gwagent.model import Gateway, Site
from gwagent.lab import neutron_server as nserver
from gwagent.neutron.source import DEVICE_OWNER, NeutronClient, NeutronSite, owner_device_id

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "integration"))
from syncer import sync_once  # noqa: E402

N_PORTS = 1000
N_NAIVE = 200


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _add_agent(db: Path, host: str, tunnel_ip: str) -> None:
    now = time.strftime("%Y-%m-%d %H:%M:%S")
    with sqlite3.connect(db) as conn:
        conn.execute(
            "INSERT INTO agents (id, agent_type, binary, topic, host, admin_state_up, "
            "created_at, started_at, heartbeat_timestamp, configurations, load) "
            "VALUES (?, 'Open vSwitch agent', 'neutron-openvswitch-agent', 'N/A', ?, 1, "
            "?, ?, ?, ?, 0)",
            (str(uuid.uuid4()), host, now, now, now,
             json.dumps({"tunneling_ip": tunnel_ip, "tunnel_types": ["vxlan"]})))


@contextlib.contextmanager
def two_sites(base: Path, transport=lambda site: "fake://", timeout: float = 120):
    """Neutron servers ``site-a`` and ``site-b`` (with compute ``cn-a1``'s
    L2 agent in A): yields (clouds.yaml, {site: client})."""
    if not (nserver.DEFAULT_VENV / "bin" / "uwsgi").exists():
        pytest.fail("no Neutron venv: run make setup (tools/setup-neutron-venv.sh)")
    ports = {"site-a": _free_port(), "site-b": _free_port()}
    clouds = base / "clouds.yaml"
    clouds.write_text("clouds:\n" + "".join(
        f"  {n}:\n    auth_type: none\n    auth:\n      endpoint: http://127.0.0.1:{p}\n"
        for n, p in ports.items()))
    servers = {}
    try:
        for name, port in ports.items():
            servers[name] = nserver.prepare(name, base / name, port,
                                            transport_url=transport(name),
                                            vni_range="1000:1999" if name == "site-a"
                                            else "2000:2999")
        _add_agent(servers["site-a"].workdir / "neutron.db", "cn-a1", "198.18.1.1")
        for srv in servers.values():
            srv.spawn()
        for srv in servers.values():
            srv.wait_ready(60)
        yield clouds, {n: NeutronClient(n, str(clouds), timeout=timeout) for n in ports}
    finally:
        for srv in servers.values():
            srv.stop()


@pytest.fixture(scope="module")
def bench_sites(tmp_path_factory):
    with two_sites(tmp_path_factory.mktemp("neutron-bench")) as (_, clients):
        yield clients


def _network(client, name, cidr):
    net = client.request("POST", "/networks", {"network": {"name": name, "project_id": "p"}})
    net = net["network"]
    client.request("POST", "/subnets", {"subnet": {
        "network_id": net["id"], "cidr": cidr, "ip_version": 4, "project_id": "p",
        "enable_dhcp": False}})
    return net


def _populate(client, net, count, third_octet_base):
    # MACs given, not drawn: Neutron draws 24 random bits per port and a bulk
    # whose draw collides fails whole (409; seen at 9,000 of 10,000 ports)
    bodies = [{"network_id": net["id"], "project_id": "p", "binding:host_id": "cn-a1",
               "device_owner": "compute:bench",
               "mac_address": f"fa:16:3e:{third_octet_base:02x}:{i >> 8 & 255:02x}:{i & 255:02x}",
               "fixed_ips": [{"ip_address": f"198.19.{third_octet_base + i // 250}"
                                            f".{i % 250 + 2}"}]} for i in range(count)]
    for start in range(0, count, 250):
        client.request("POST", "/ports", {"ports": bodies[start:start + 250]})


def _scenario(bench_sites, name, count, bulk_size, figures, benchmark):
    a, b = bench_sites["site-a"], bench_sites["site-b"]
    net_a = _network(a, name, "198.18.0.0/15")
    net_b = _network(b, name, "198.18.0.0/15")
    _populate(a, net_a, count, 0 if bulk_size > 1 else 100)
    gw_a = Gateway("gw-a", "198.18.0.1", "198.19.0.1")
    gw_b = Gateway(f"gw-b-{name}", "198.18.0.2", "198.19.0.2")
    src_a = NeutronSite(a, Site("site-a", gw_a), {name: 5001}, {name: net_a["id"]})
    src_b = NeutronSite(b, Site("site-b", gw_b), {name: 5001}, {name: net_b["id"]},
                        bulk_size=bulk_size)

    t0 = time.perf_counter()
    result = benchmark.pedantic(sync_once, args=(src_b, [src_a]), rounds=1, iterations=1)
    cold = time.perf_counter() - t0
    assert result["errors"] == {} and result["registered"] == count
    owned = b.list("ports", device_owner=DEVICE_OWNER, device_id=owner_device_id(gw_b.host),
                   fields=["id", "status"])
    assert len(owned) == count and {p["status"] for p in owned} == {"ACTIVE"}

    # one change in A: a second IP on one port, until B's remote port has it
    victim = a.list("ports", network_id=net_a["id"], fields=["id", "fixed_ips"])[0]
    new_ip = victim["fixed_ips"][0]["ip_address"].rsplit(".", 1)[0] + ".254"
    before = src_a.version()
    t0 = time.perf_counter()
    a.request("PUT", f"/ports/{victim['id']}", {"port": {"fixed_ips": victim["fixed_ips"] + [
        {"ip_address": new_ip}]}})
    t1 = time.perf_counter()
    assert src_a.version() != before
    t2 = time.perf_counter()
    changed = sync_once(src_b, [src_a])
    t3 = time.perf_counter()
    one = t3 - t0
    assert changed == {"registered": 1, "unregistered": 0, "errors": {}}
    remote = [p for p in b.list("ports", device_owner=DEVICE_OWNER,
                                device_id=owner_device_id(gw_b.host),
                                fields=["fixed_ips", "binding:profile"])
              if p["binding:profile"]["gwagent"]["origin_port"] == victim["id"]]
    assert new_ip in {f["ip_address"] for f in remote[0]["fixed_ips"]}

    info = {"ports": count, "bulk_size": bulk_size, "cold_sync_s": round(cold, 3),
            "cold_ports_per_s": round(count / cold, 1), "one_change_s": round(one, 3),
            "one_change_put_s": round(t1 - t0, 3), "one_change_version_s": round(t2 - t1, 3),
            "one_change_sync_s": round(t3 - t2, 3)}
    naive = figures.get("neutron/naive")
    if bulk_size > 1 and naive:
        info["ratio_bulk_vs_naive"] = round(info["cold_ports_per_s"]
                                            / naive["cold_ports_per_s"], 2)
    benchmark.extra_info.update(info)
    figures[f"neutron/{name}"] = {"seconds": cold, "entries": count, **info}
    print(f"\n{name}: {json.dumps(info)}")
    return info


# The naive baseline first, so that the bulk run can state its ratio.
def test_neutron_cold_sync_naive_per_port(benchmark, bench_sites, figures):
    _scenario(bench_sites, "naive", N_NAIVE, 1, figures, benchmark)


def test_neutron_cold_sync_bulk(benchmark, bench_sites, figures):
    _scenario(bench_sites, "bulk", N_PORTS, 250, figures, benchmark)


"""Fixtures for the Neutron integration tests: real servers, real RabbitMQ.

* ``rabbit``: a private RabbitMQ broker on loopback (Debian rabbitmq-server),
  started once per session and stopped by PID.
* ``sites``: two real Neutron servers (API by uwsgi plus an RPC server), one
  per site, ML2 with vxlan (site A VNIs 1000-1999, site B 2000-2999) and
  mechanism drivers gwagent, openvswitch, l2population; SQLite in a private
  directory; a ``clouds.yaml`` with ``auth_type: none`` entries ``site-a``
  and ``site-b``.
* ``agent_factory``: a stand-in L2 agent (tests/integration/fake_l2_agent.py,
  run in the Neutron venv) that registers with ``report_state`` over
  RabbitMQ and records the l2pop messages it receives.

Tests isolate themselves by names: each uses its own network names and
gateway hosts, so the servers are shared by the whole session.

Needs the Neutron venv (tools/setup-neutron-venv.sh) and rabbitmq-server,
which make setup installs; without them the tests fail and say so.
"""
from __future__ import annotations

import itertools
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gwagent.model import Gateway, Site
from gwagent.lab import neutron_server as nserver
from gwagent.neutron.source import NeutronClient, NeutronSite

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import rabbit as rabbitmq  # noqa: E402


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def neutron_venv() -> Path:
    venv = nserver.DEFAULT_VENV
    if not (venv / "bin" / "uwsgi").exists():
        pytest.fail(f"no Neutron venv at {venv}: run make setup (tools/setup-neutron-venv.sh)")
    return venv


@pytest.fixture(scope="session")
def rabbit(tmp_path_factory):
    if not rabbitmq.available():
        pytest.fail("rabbitmq-server not installed: run make setup (apt-get install rabbitmq-server)")
    broker = rabbitmq.Rabbit(tmp_path_factory.mktemp("rabbit"), port=free_port(),
                             dist_port=free_port(), epmd_port=free_port(),
                             vhosts=("site-a", "site-b"))
    broker.start()
    yield broker
    broker.stop()


class Admin:
    """Test-side Neutron calls (setting up what the cloud's users would)."""

    def __init__(self, client: NeutronClient, project: str = "tenant1"):
        self.client, self.project = client, project

    def network(self, name: str, cidr: str, tags=()) -> dict:
        net = self.client.request("POST", "/networks", {"network": {
            "name": name, "project_id": self.project}})["network"]
        if tags:
            self.client.request("PUT", f"/networks/{net['id']}/tags", {"tags": list(tags)})
        sub = self.client.request("POST", "/subnets", {"subnet": {
            "network_id": net["id"], "cidr": cidr, "ip_version": 4,
            "project_id": self.project, "enable_dhcp": False}})["subnet"]
        net["subnet"] = sub
        return net

    def network_id(self, name: str) -> str:
        (net,) = self.client.list("networks", name=name, fields=["id"])
        return net["id"]

    def port(self, net: dict, host: str | None = None, **attrs) -> dict:
        body = {"network_id": net["id"], "project_id": self.project, **attrs}
        if host:
            body["binding:host_id"] = host
        return self.client.request("POST", "/ports", {"port": body})["port"]

    def update(self, port_id: str, **attrs) -> dict:
        return self.client.request("PUT", f"/ports/{port_id}", {"port": attrs})["port"]

    def delete(self, port_id: str) -> None:
        self.client.request("DELETE", f"/ports/{port_id}")

    def get(self, port_id: str) -> dict:
        return self.client.request("GET", f"/ports/{port_id}")["port"]

    def ports(self, **filters) -> list[dict]:
        return self.client.list("ports", **filters)


class SiteEnv:
    """One site: its server, its clouds.yaml entry and an admin client."""

    def __init__(self, name: str, server, clouds_file: Path):
        self.name, self.server, self.clouds_file = name, server, clouds_file
        self.admin = Admin(self.client())

    def client(self) -> NeutronClient:
        return NeutronClient(self.name, clouds_file=str(self.clouds_file), timeout=10)

    def source(self, gateway: Gateway, networks: dict, ids: dict | None = None) -> NeutronSite:
        """The site's source for ``networks`` ({name: transit VNI}); the
        Neutron network IDs, as an operator writes them in the
        configuration, are looked up here by name unless given."""
        if ids is None:
            ids = {name: self.admin.network_id(name) for name in networks}
        return NeutronSite(self.client(), Site(self.name, gateway), networks, ids)


@pytest.fixture(scope="session")
def sites(neutron_venv, rabbit, tmp_path_factory):
    base = tmp_path_factory.mktemp("neutron")
    ports = {"site-a": free_port(), "site-b": free_port()}
    ranges = {"site-a": "1000:1999", "site-b": "2000:2999"}
    clouds = base / "clouds.yaml"
    clouds.write_text("clouds:\n" + "".join(
        f"  {name}:\n    auth_type: none\n    auth:\n      endpoint: http://127.0.0.1:{port}\n"
        for name, port in ports.items()))
    servers = {}
    try:
        for name, port in ports.items():
            servers[name] = nserver.prepare(name, base / name, port,
                                            transport_url=rabbit.vhost_url(name),
                                            vni_range=ranges[name], venv=neutron_venv)
        for srv in servers.values():  # start both, then wait: ~4 s, not 8
            srv.spawn()
        for srv in servers.values():
            srv.wait_ready(60)
        yield {name: SiteEnv(name, srv, clouds) for name, srv in servers.items()}
    finally:
        for srv in servers.values():
            srv.stop()


class FakeAgent:
    def __init__(self, proc: subprocess.Popen, record: Path, host: str, tunnel_ip: str):
        self.proc, self.record, self.host, self.tunnel_ip = proc, record, host, tunnel_ip

    def command(self, **cmd) -> dict:
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        answer = json.loads(self.proc.stdout.readline())
        assert answer.get("ok"), answer
        return answer

    def messages(self) -> list[dict]:
        try:
            return [json.loads(line) for line in self.record.read_text().splitlines()]
        except FileNotFoundError:
            return []

    def wait_for(self, predicate, timeout: float = 10.0) -> dict:
        """The first recorded message satisfying ``predicate``."""
        deadline = time.monotonic() + timeout
        while True:
            for msg in self.messages():
                if predicate(msg):
                    return msg
            if time.monotonic() > deadline:
                raise AssertionError(f"no matching l2pop message within {timeout} s; got "
                                     f"{json.dumps(self.messages(), indent=1)[:3000]}")
            time.sleep(0.1)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def start_agent(venv: Path, rabbit, site: str, host: str, tunnel_ip: str,
                workdir: Path) -> FakeAgent:
    """A stand-in L2 agent of ``site`` on ``host`` with VTEP ``tunnel_ip``."""
    record = workdir / f"agent-{site}-{host}.jsonl"
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    log = workdir / f"agent-{site}-{host}.log"
    proc = subprocess.Popen(
        [str(venv / "bin" / "python"), str(HERE / "fake_l2_agent.py"), f"{rabbit.url}{site}",
         f"neutron-{site}", host, tunnel_ip, str(record)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=open(log, "ab"), text=True,
        env=env, start_new_session=True)
    agent = FakeAgent(proc, record, host, tunnel_ip)
    line = proc.stdout.readline()
    if not line:
        agent.stop()
        raise RuntimeError(f"fake agent {host} died; see {log}")
    assert json.loads(line).get("ready"), line
    return agent


@pytest.fixture(scope="session")
def computes(sites, neutron_venv, rabbit, tmp_path_factory):
    """One compute (an L2 agent with a VTEP) per site: cn-a1 198.18.1.1 in
    site-a, cn-b1 198.18.2.1 in site-b."""
    workdir = tmp_path_factory.mktemp("agents")
    agents = {}
    try:
        agents["site-a"] = start_agent(neutron_venv, rabbit, "site-a", "cn-a1", "198.18.1.1",
                                       workdir)
        agents["site-b"] = start_agent(neutron_venv, rabbit, "site-b", "cn-b1", "198.18.2.1",
                                       workdir)
        yield agents
    finally:
        for agent in agents.values():
            agent.stop()


@pytest.fixture
def agent_factory(sites, neutron_venv, rabbit, tmp_path):
    agents = []

    def start(site: str, host: str, tunnel_ip: str) -> FakeAgent:
        agent = start_agent(neutron_venv, rabbit, site, host, tunnel_ip, tmp_path)
        agents.append(agent)
        return agent

    yield start
    for agent in agents:
        agent.stop()


_names = itertools.count()


@pytest.fixture
def uniq():
    """A fresh suffix for network names and gateway hosts of one test."""
    return f"t{os.getpid() % 1000}x{next(_names)}"

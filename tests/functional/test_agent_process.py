"""The agent as a process: signals, status and cleanup, on a real kernel.

Each test runs ``gwagent run`` against site files in a temporary directory
and a throwaway namespace, and stops it by PID.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from gwagent.dataplane.linux import LinuxBackend

from netns import run as ns_run
from netns import throwaway_netns

SITE_A = {"site": "a", "gateway": {"host": "gw-a", "tunnel_ip": "198.18.1.1",
                                   "transit_ip": "198.18.0.1"},
          "networks": [{"name": "red", "segmentation_id": 1001, "transit_vni": 5001}],
          "endpoints": [{"port_id": "a1", "network": "red", "mac": "fa:16:3e:00:00:01",
                         "ips": ["198.19.10.11"], "vtep": "198.18.1.11"}]}


def peer(name: str, n: int, macs: int) -> dict:
    return {"site": name, "gateway": {"host": f"gw-{name}", "tunnel_ip": f"198.18.{n}.1",
                                      "transit_ip": f"198.18.0.{n}"},
            "networks": [{"name": "red", "segmentation_id": 1000 * n + 1, "transit_vni": 5001}],
            "endpoints": [{"port_id": f"{name}{i}", "network": "red",
                           "mac": f"fa:16:3e:00:0{n}:{i:02x}", "vtep": f"198.18.{n}.11"}
                          for i in range(1, macs + 1)]}


@pytest.fixture
def gateway(tmp_path):
    with throwaway_netns("gwt-") as ns:
        for name, data in (("a", SITE_A), ("b", peer("b", 2, 2)), ("c", peer("c", 3, 3))):
            (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(data))
        conf = tmp_path / "gw.conf"

        def configure(*peers):
            conf.write_text(
                "[gateway]\n"
                f"site_file = {tmp_path / 'a.yaml'}\n"
                f"peer_site_files = {','.join(str(tmp_path / f'{p}.yaml') for p in peers)}\n"
                f"netns = {ns}\nstate_dir = {tmp_path / 'state'}\n"
                "[agent]\nresync_interval = 1\npoll_interval = 0.05\n")
        configure("b")
        procs = []

        def start():
            proc = subprocess.Popen([sys.executable, "-m", "gwagent.cli", "run",
                                     "--config-file", str(conf)],
                                    stderr=open(tmp_path / "agent.log", "a"))
            procs.append(proc)
            return proc

        try:
            yield ns, conf, configure, start
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()


def status(conf) -> dict:
    out = subprocess.run([sys.executable, "-m", "gwagent.cli", "status", "--json",
                          "--config-file", str(conf)], capture_output=True, text=True)
    return json.loads(out.stdout)


def wait_for(predicate, timeout=10.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def remote_count(conf) -> int:
    st = status(conf)["status"]
    return st and st["last_pass"] and st["endpoints"]["remote"]


def test_sighup_reloads_peers_and_sigterm_leaves_the_dataplane(gateway):
    ns, conf, configure, start = gateway
    proc = start()
    wait_for(lambda: remote_count(conf) == 2)
    assert status(conf)["running"] and status(conf)["agent_pid"] == proc.pid
    configure("b", "c")
    os.kill(proc.pid, signal.SIGHUP)
    wait_for(lambda: remote_count(conf) == 5)
    with LinuxBackend(ns) as backend:
        before = backend.observe()
    assert len(before.macs) == 1 + 5 and before.floods  # local, remote; floods
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 0
    with LinuxBackend(ns) as backend:
        assert backend.observe() == before
    assert not status(conf)["running"]
    # A restarted agent adopts the dataplane: its first pass changes nothing.
    start()
    wait_for(lambda: status(conf)["agent_pid"] and (status(conf)["status"]["last_pass"] or {})
             .get("reason") in ("start", "resync", "kernel"))
    st = status(conf)["status"]
    first = st["last_pass"]
    assert first["ok"] and first["ops"] == {}, (first, st.get("last_error"))


def test_cleanup_removes_only_what_the_gateway_owns(gateway, tmp_path):
    ns, conf, _, start = gateway
    proc = start()
    wait_for(lambda: remote_count(conf) == 2)
    wait_for(lambda: "inet gwagent" in ns_run(ns, "nft", "list", "tables").stdout)
    wait_for(lambda: "bridge gwagent" in ns_run(ns, "nft", "list", "tables").stdout)
    refused = subprocess.run([sys.executable, "-m", "gwagent.cli", "cleanup",
                              "--config-file", str(conf)], capture_output=True, text=True)
    assert refused.returncode == 1 and "running" in refused.stderr
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=10)
    ns_run(ns, "ip", "link", "add", "vx-foreign", "type", "vxlan", "id", "999",
           "local", "198.18.9.9", "dstport", "4789")
    ns_run(ns, "bridge", "fdb", "add", "02:00:00:00:00:09", "dev", "vx-foreign",
           "dst", "198.18.9.10", "self", "permanent")
    done = subprocess.run([sys.executable, "-m", "gwagent.cli", "cleanup", "--remote-ports",
                           "--config-file", str(conf)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    links = ns_run(ns, "ip", "-o", "link", "show").stdout
    assert "gwa-" not in links and "vx-foreign" in links
    # the ingress filter's table and the MAC guard's
    assert "gwagent" not in ns_run(ns, "nft", "list", "tables").stdout
    assert "02:00:00:00:00:09" in ns_run(ns, "bridge", "fdb", "show", "dev", "vx-foreign").stdout
    registry = json.loads((tmp_path / "a.remote-ports.json").read_text())
    assert registry["remote_ports"] == []


def test_status_without_agent_is_an_error_not_a_crash(tmp_path):
    conf = tmp_path / "gw.conf"
    conf.write_text(f"[gateway]\nsite_file = /nonexistent\nstate_dir = {tmp_path}\n")
    out = subprocess.run([sys.executable, "-m", "gwagent.cli", "status", "--config-file",
                          str(conf)], capture_output=True, text=True)
    assert out.returncode == 1 and "no status yet" in out.stdout
    missing = subprocess.run([sys.executable, "-m", "gwagent.cli", "run", "--config-file",
                              str(tmp_path / "nope.conf")], capture_output=True, text=True)
    assert missing.returncode != 0 and "config file not found" in missing.stderr

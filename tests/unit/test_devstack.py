"""The devstack plugin (devstack/plugin.sh, devstack/settings), run phase by
phase in bash with devstack's functions stubbed (tests/unit/devstack_stubs.sh:
a working iniset/iniget, and calls that would install or start something
recorded), and the files it writes read back as Neutron and the agent would.
"""
from __future__ import annotations

import configparser
import getpass
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gwagent import cli

REPO = Path(__file__).resolve().parents[2]
PLUGIN = REPO / "devstack" / "plugin.sh"
SETTINGS = REPO / "devstack" / "settings"
STUBS = Path(__file__).with_name("devstack_stubs.sh")

RED_A = "11111111-0000-0000-0000-00000000000a"
RED_B = "11111111-0000-0000-0000-00000000000b"


class Devstack:
    """A devstack host in a temporary directory: neutron.conf and the ML2
    file as devstack left them before post-config, a fake agent venv."""

    def __init__(self, tmp: Path, **local_conf: str):
        self.tmp = tmp
        self.log = tmp / "calls.log"
        self.log.touch()
        self.neutron_conf = tmp / "etc/neutron/neutron.conf"
        self.ml2_conf = tmp / "etc/neutron/plugins/ml2/ml2_conf.ini"
        self.ml2_conf.parent.mkdir(parents=True)
        self.neutron_conf.write_text("[DEFAULT]\ncore_plugin = ml2\n")
        self.ml2_conf.write_text("[ml2]\ntype_drivers = vxlan\n"
                                 "mechanism_drivers = openvswitch,l2population\n")
        self.venv = tmp / "data/gwagent/venv"
        self.purelib = tmp / "purelib"
        self.purelib.mkdir()
        (self.venv / "bin").mkdir(parents=True)
        self._script("python", f'echo "{self.purelib}"')
        self._script("pip", f'echo "venv-pip $*" >> "{self.log}"')
        self._script("gwagent", f'echo "gwagent $*" >> "{self.log}"')
        self.env = {
            "PATH": os.environ["PATH"],
            "DEVSTACK_STUB_LOG": str(self.log),
            "DEVSTACK_STUB_PYTHON": sys.executable,
            "DEST": str(tmp / "opt/stack"),
            "DATA_DIR": str(tmp / "data"),
            "HOST_IP": "192.0.2.10",
            "STACK_USER": getpass.getuser(),
            "ENABLED_SERVICES": "q-svc,q-agt",
            "NEUTRON_CONF": str(self.neutron_conf),
            # devstack keeps it relative to / (etc/neutron/plugins/ml2/...)
            "NEUTRON_CORE_PLUGIN_CONF": str(self.ml2_conf).lstrip("/"),
            "GWAGENT_DIR": str(REPO),
            "GWAGENT_CONF_DIR": str(tmp / "etc/gwagent"),
            **local_conf,
        }
        self.gwagent_conf = Path(self.env.get("GWAGENT_CONF", tmp / "etc/gwagent/gwagent.conf"))

    def _script(self, name, body):
        path = self.venv / "bin" / name
        path.write_text(f"#!/bin/sh\n{body}\n")
        path.chmod(0o755)

    def call(self, *phase: str) -> subprocess.CompletedProcess:
        """One call of devstack: the stubs, the plugin's settings, then
        ``source plugin.sh PHASE...``, under errexit and nounset."""
        script = 'set -eu; source "$1"; source "$2"; shift 2; source "$PLUGIN_SH" "$@"'
        return subprocess.run(
            ["bash", "-c", script, "bash", str(STUBS), str(SETTINGS), *phase],
            env={**self.env, "PLUGIN_SH": str(PLUGIN)}, capture_output=True, text=True)

    def run(self, *phase: str) -> str:
        done = self.call(*phase)
        assert done.returncode == 0, f"plugin.sh {' '.join(phase)} failed:\n{done.stderr}"
        return done.stdout

    def stack(self) -> None:
        for phase in ("install", "post-config", "extra"):
            self.run("stack", phase)

    def calls(self) -> list[str]:
        return self.log.read_text().splitlines()

    def ini(self, path: Path) -> configparser.ConfigParser:
        p = configparser.ConfigParser(interpolation=None)
        p.read(path)
        return p


PEERED = dict(
    GWAGENT_SITE_NAME="a",
    GWAGENT_NETWORKS="red:5001",
    GWAGENT_NETWORK_IDS=f"red:{RED_A}",
    GWAGENT_TRANSIT_IP="198.18.0.1",
    GWAGENT_GATEWAY_HOST="gw-a",
    GWAGENT_PEERS="b",
    GWAGENT_PEER_b_CLOUD="site-b",
    GWAGENT_PEER_b_NETWORK_IDS=f"red:{RED_B}",
    GWAGENT_PEER_b_GATEWAY_HOST="gw-b",
    GWAGENT_PEER_b_TUNNEL_IP="198.18.2.1",
    GWAGENT_PEER_b_TRANSIT_IP="198.18.0.2",
)


@pytest.fixture
def host(tmp_path):
    return Devstack(tmp_path, **PEERED)


def test_install_puts_the_driver_in_neutron_and_the_agent_in_its_own_venv(host):
    host.run("stack", "install")
    calls = host.calls()
    # Neutron's environment: the checkout alone, whose pins would fight
    # OpenStack's upper-constraints.
    assert f"pip_install --no-deps -e {REPO}" in calls
    assert f"venv-pip install -c {REPO}/constraints.txt -e {REPO}[neutron]" in calls
    assert "install_package nftables python3-nftables" in calls
    link = host.purelib / "nftables"
    assert link.is_symlink() and os.readlink(link) == "/usr/lib/python3/dist-packages/nftables"


def test_post_config_adds_gwagent_first_and_keeps_the_drivers_there(host):
    host.run("stack", "install")
    host.run("stack", "post-config")
    host.run("stack", "post-config")          # stack.sh run again: still once
    ml2 = host.ini(host.ml2_conf)
    assert ml2["ml2"]["mechanism_drivers"] == "gwagent,openvswitch,l2population"
    assert ml2["ml2"]["type_drivers"] == "vxlan"
    neutron = host.ini(host.neutron_conf)
    assert neutron["oslo_messaging_notifications"]["driver"] == "messagingv2"
    assert neutron["DEFAULT"]["core_plugin"] == "ml2"


def test_a_config_without_l2population_is_warned_about(host):
    host.ml2_conf.write_text("[ml2]\nmechanism_drivers = ovn\n")
    out = host.run("stack", "post-config")
    assert host.ini(host.ml2_conf)["ml2"]["mechanism_drivers"] == "gwagent,ovn"
    assert "no l2population" in out


def test_gwagent_conf_is_what_the_agent_reads(host):
    host.run("stack", "post-config")
    conf = cli.load_conf([str(host.gwagent_conf)])
    assert conf.gateway.source == "neutron"
    assert conf.gateway.backend == "linux"
    assert conf.gateway.netns == ""
    assert conf.gateway.ingress_filter is True and conf.gateway.mac_guard is True
    n = conf.neutron
    assert n.cloud == "devstack-admin"
    assert n.clouds_file == "/etc/openstack/clouds.yaml"
    assert n.site_name == "a"
    assert n.networks == {"red": "5001"}
    assert n.network_ids == {"red": RED_A}
    assert n.gateway_host == "gw-a"
    assert n.gateway_tunnel_ip == "192.0.2.10"      # HOST_IP by default
    assert n.gateway_transit_ip == "198.18.0.1"
    assert n.peers == ["b"]
    b = conf["neutron_peer_b"]
    assert (b.cloud, b.network_ids, b.gateway_host, b.gateway_tunnel_ip,
            b.gateway_transit_ip) == ("site-b", {"red": RED_B}, "gw-b", "198.18.2.1",
                                      "198.18.0.2")
    assert b.clouds_file is None


@pytest.mark.parametrize("transit", ["", "192.0.2.10"])
def test_a_transit_ip_missing_or_equal_to_the_tunnel_ip_stops_stack(tmp_path, transit):
    host = Devstack(tmp_path, **{**PEERED, "GWAGENT_TRANSIT_IP": transit})
    done = host.call("stack", "post-config")
    assert done.returncode != 0
    assert "set GWAGENT_TRANSIT_IP" in done.stderr
    assert not host.gwagent_conf.exists()


def test_gwagent_conf_is_written_whole_each_time(host):
    host.run("stack", "post-config")
    host.env.update(GWAGENT_PEERS="", GWAGENT_BACKEND="openflow")
    host.run("stack", "post-config")
    conf = cli.load_conf([str(host.gwagent_conf)])
    assert conf.neutron.peers == []
    assert conf.gateway.backend == "openflow"
    assert "neutron_peer_b" not in host.ini(host.gwagent_conf)


def test_extra_starts_the_agent_as_root_and_unstack_stops_it(host):
    host.stack()
    conf = host.gwagent_conf
    venv_bin = host.venv / "bin" / "gwagent"
    assert f"run_process gwagent {venv_bin} run --config-file {conf}  root" in host.calls()
    assert "get_or_add_user_project_role service admin admin" in host.calls()
    host.run("unstack")
    assert host.calls()[-1] == "stop_process gwagent"


def test_clean_removes_what_the_gateway_owns(host):
    host.stack()
    host.run("unstack")
    host.run("clean")
    assert host.calls()[-1] == (f"gwagent cleanup --config-file {host.gwagent_conf} "
                                "--remote-ports")


def test_disabled_service_gets_the_driver_but_no_agent(tmp_path):
    host = Devstack(tmp_path, DISABLED_SERVICES="gwagent", **PEERED)
    host.stack()
    host.run("unstack")
    assert host.ini(host.ml2_conf)["ml2"]["mechanism_drivers"].startswith("gwagent,")
    assert not host.gwagent_conf.exists()
    assert not [c for c in host.calls() if c.startswith(("run_process", "stop_process"))]


def test_shellcheck_is_clean():
    shellcheck = shutil.which("shellcheck")
    assert shellcheck, "shellcheck is missing: apt-get install -y shellcheck"
    done = subprocess.run([shellcheck, str(PLUGIN), str(SETTINGS), str(STUBS)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr

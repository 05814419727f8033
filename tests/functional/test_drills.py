"""Failover in the lab: the drills, a rogue claim, and a flapping MAC.

Each drill runs short (one move per mode and scope) and the tests assert
correctness, never timings: every client reached the VIP at its new place,
and no gateway, compute or client kept forwarding to the old one.
"""
from __future__ import annotations

import configparser
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from gwagent.drill import garp, scenario as sc, vrrp
from gwagent.lab import build, probe
from gwagent.lab.processes import python_env

from labs import BACKENDS, lab_up, wait_for


@pytest.fixture(scope="module", params=BACKENDS)
def drill_lab(request):
    with lab_up(backend=request.param) as lab:
        yield lab


@pytest.fixture
def scenario(drill_lab):
    s = sc.prepare(drill_lab, "red", timeout=30)
    try:
        yield s
    finally:
        sc.teardown(drill_lab, s)
    assert not [vm for vm in drill_lab.topology.vms if vm.name.startswith("dr-")]


def assert_converged(moves, expected: int):
    assert len(moves) == expected
    for move in moves:
        assert [c.client for c in move.clients if c.first_reply_ms is None] == [], move
        assert move.checks, "the forwarding was checked"
        assert [c.to_dict() for c in move.stale] == []


@pytest.mark.parametrize("mode", sc.MODES)
def test_garp_drill_moves_the_vip_inside_a_site_and_across(scenario, mode):
    moves = garp.run(scenario, [mode], sc.SCOPES, runs=2)
    assert_converged(moves, 4)
    # back and forth: the second move of each scope returns to the first holder
    assert [(m.old, m.new) for m in moves if m.scope == "cross"] == [("dr-h1", "dr-h3"),
                                                                      ("dr-h3", "dr-h1")]


@pytest.mark.parametrize("mode", [vrrp.DEFAULT, sc.VMAC])
def test_vrrp_drill_with_keepalived_fails_over_inside_a_site_and_across(scenario, mode):
    moves = vrrp.run(scenario, [mode], sc.SCOPES, runs=1, advert_ms=100)
    assert_converged(moves, 2)
    assert all("no GARP" not in m.note for m in moves)


def gateway_status(lab, site) -> dict:
    out = subprocess.run([sys.executable, "-m", "gwagent.cli", "status", "--config-file",
                          str(lab.agent_conf(site)), "--json"], capture_output=True, text=True,
                         env=python_env(), timeout=30)
    return json.loads(out.stdout)["status"]


def mobile_row(lab, site, mac):
    rows = gateway_status(lab, site)["mobile_macs"]
    return next((r for r in rows if r["mac"] == mac), None)


def send_from(lab, node: str, src_mac: str, ip: str) -> None:
    """A gratuitous ARP with source ``src_mac`` from a VM's eth0 (a claim)."""
    frame = sc.garp_frame(src_mac, ip)
    sock = probe.ns_socket(lab.ns(node), socket.AF_PACKET, socket.SOCK_RAW, 0)
    try:
        sock.sendto(frame, ("eth0", 0x0806))
    finally:
        sock.close()


def test_a_claim_from_a_vtep_that_is_no_candidate_moves_nothing(scenario):
    lab = scenario.lab
    holder = scenario.holders["h3"]
    sc.place_vip(scenario, holder, sc.VMAC)
    sc.send_garp(scenario, holder, sc.VMAC)

    def located():
        """gateway a has the virtual MAC at gateway b"""
        row = mobile_row(lab, "a", scenario.vmac)
        return row and row["location"] == {"side": "transit", "vtep": "198.18.0.2"} and row
    before = wait_for(located, 5.0, 0.1)
    # b2-red is on b-cn2, where no port claims the virtual MAC: a rogue.
    rogue = lab.topology.vm("b2-red")
    send_from(lab, rogue.name, scenario.vmac, scenario.vip)
    rogue_vtep = lab.topology.site("b").compute_ip(rogue.compute)

    def refused():
        """gateway b counts the refused claim from b-cn2"""
        row = mobile_row(lab, "b", scenario.vmac)
        return row and row["refused"].get(rogue_vtep, 0) >= 1 and row
    row_b = wait_for(refused, 5.0, 0.1)
    assert row_b["location"]["vtep"] == lab.topology.site("b").compute_ip(holder.compute)
    assert mobile_row(lab, "a", scenario.vmac)["seq"] == before["seq"]
    assert "refused claim" in open(lab.processes["b-gw"]["log"]).read()
    sc.remove_vip(scenario, holder)


def set_mobility(lab, site, **values) -> None:
    """Change the agent's [mobility] options and SIGHUP it; wait until it
    reports them."""
    conf = configparser.ConfigParser()
    conf.read(lab.agent_conf(site))
    for key, value in values.items():
        conf["mobility"][key] = str(value)
    with open(lab.agent_conf(site), "w") as handle:
        conf.write(handle)
    os.kill(lab.processes[f"{site}-gw"]["pid"], signal.SIGHUP)

    def reloaded():
        """the agent took the new [mobility] options"""
        got = gateway_status(lab, site).get("mobility_config") or {}
        return all(float(got.get(k, -1)) == float(v) for k, v in values.items())
    wait_for(reloaded, 10.0, 0.1)


def test_a_flapping_mac_is_frozen_with_an_alarm_and_the_agent_stays_calm(scenario):
    lab = scenario.lab
    h1, h3 = scenario.holders["h1"], scenario.holders["h3"]
    defaults = configparser.ConfigParser()
    defaults.read_string(build.MOBILITY_SECTION)
    set_mobility(lab, "a", max_moves=3, move_window=60, freeze_time=2)
    try:
        for holder in (h1, h3) * 4:
            sc.place_vip(scenario, holder, sc.VMAC)
            sc.send_garp(scenario, holder, sc.VMAC)
            time.sleep(0.02)

        def frozen():
            """gateway a freezes the flapping virtual MAC"""
            row = mobile_row(lab, "a", scenario.vmac)
            return row and row["frozen"] and row
        row = wait_for(frozen, 5.0, 0.05)
        assert row["moves_in_window"] >= 3
        assert "is flapping" in open(lab.processes["a-gw"]["log"]).read()
        assert build.process_alive(lab.processes["a-gw"])

        def thawed():
            """the hold time runs out"""
            row = mobile_row(lab, "a", scenario.vmac)
            return row and not row["frozen"]
        wait_for(thawed, 10.0, 0.2)
    finally:
        for holder in (h1, h3):
            sc.remove_vip(scenario, holder)
        set_mobility(lab, "a", **dict(defaults["mobility"]))

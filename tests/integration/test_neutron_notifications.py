"""Neutron's own notifications (RabbitMQ, ``driver = messagingv2``) drive
the gateway: a change in one cloud reaches the other cloud's gateway
dataplane and registry by reads of what changed, with the listing audit an
hour away; a broken bus connection makes the next read list everything;
and without notifications the same changes get there by listings."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from gwagent.control.agent import Agent
from gwagent.control.sources import Throttled
from gwagent.dataplane.linux import LinuxBackend
from gwagent.model import Gateway, Site
from gwagent.neutron.notifications import Feed
from gwagent.neutron.source import DEVICE_OWNER, NeutronSite, owner_device_id

import rabbit as rabbitmq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "functional"))
from netns import throwaway_netns  # noqa: E402

CIDR = "198.19.70.0/24"
HOUR = 3600.0


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout}s: {what}")
        time.sleep(0.05)
    return value


def source(site, gateway: Gateway, net: str, rabbit, notifications: bool) -> NeutronSite:
    ids = {net: site.admin.network_id(net)}
    feed = (Feed(rabbit.vhost_url(site.name), exchange=f"neutron-{site.name}",
                 name=f"gwtest-{gateway.host}") if notifications else None)
    return NeutronSite(site.client(), Site(site.name, gateway), {net: 5001}, ids, feed=feed,
                       audit_interval=HOUR)


def remote_in(site, gw: Gateway) -> dict:
    """{origin port ID: remote port} that ``gw`` registered in ``site``."""
    return {p["binding:profile"]["gwagent"]["origin_port"]: p
            for p in site.admin.ports(device_owner=DEVICE_OWNER,
                                      device_id=owner_device_id(gw.host))}


def ips(port: dict) -> list[str]:
    return sorted(f["ip_address"] for f in port["fixed_ips"])


@pytest.mark.parametrize("notifications", [True, False], ids=["notifications", "listings"])
def test_port_changes_reach_the_peer_gateway(sites, computes, uniq, rabbit, tmp_path,
                                             notifications):
    a, b = sites["site-a"], sites["site-b"]
    net = f"green-{uniq}"
    net_a, _ = a.admin.network(net, CIDR), b.admin.network(net, CIDR)
    gw_a = Gateway(f"gwa-{uniq}", "198.18.1.254", "198.18.0.1")
    gw_b = Gateway(f"gwb-{uniq}", "198.18.2.254", "198.18.0.2")
    first = a.admin.port(net_a, "cn-a1", fixed_ips=[{"ip_address": "198.19.70.11"}])
    src_a = source(a, gw_a, net, rabbit, notifications)   # the peer, as B's gateway reads it
    src_b = source(b, gw_b, net, rabbit, notifications)   # B's own: source and registry
    try:
        with throwaway_netns("gwn-") as ns, LinuxBackend(ns) as backend:
            agent = Agent(Throttled(src_b, 0), [Throttled(src_a, 0)], src_b, backend,
                          status_path=tmp_path / "status.json", backoff_initial=0.1,
                          backoff_max=1)
            assert agent.run_pass("start").ok
            if notifications:
                wait_for(lambda: src_a.events_live() and src_b.events_live(), 30,
                         "both clouds' notifications heard")
                assert agent.run_pass("resync").ok  # the full read after the feed connected

            def converged(check):
                def look():
                    result = agent.run_pass("resync")
                    return result.ok and check()
                return look

            def toward_a():
                return {e.mac for e in backend.observe().macs if e.vtep == gw_a.transit_ip}

            assert remote_in(b, gw_b).keys() == {first["id"]}
            reads_a, reads_b = dict(src_a.reads), dict(src_b.reads)

            # changed, added, deleted in A: B's dataplane and registry follow
            a.admin.update(first["id"], fixed_ips=[{"ip_address": "198.19.70.11"},
                                                   {"ip_address": "198.19.70.21"}])
            second = a.admin.port(net_a, "cn-a1", fixed_ips=[{"ip_address": "198.19.70.12"}])
            wait_for(converged(lambda: ips(remote_in(b, gw_b).get(first["id"], {"fixed_ips": []}))
                               == ["198.19.70.11", "198.19.70.21"]
                               and second["id"] in remote_in(b, gw_b)), 20,
                     "the update and the new port registered in B")
            assert toward_a() == {first["mac_address"], second["mac_address"]}
            a.admin.delete(first["id"])
            wait_for(converged(lambda: remote_in(b, gw_b).keys() == {second["id"]}
                               and toward_a() == {second["mac_address"]}), 20,
                     "the deleted port gone from B's registry and dataplane")

            # a remote port of B's gateway deleted by someone else comes back
            victim = remote_in(b, gw_b)[second["id"]]
            b.admin.delete(victim["id"])
            wait_for(converged(lambda: second["id"] in remote_in(b, gw_b)), 20,
                     "the remote port deleted behind the gateway's back restored")

            if notifications:
                # ...all of it by reads of what changed: no listing since
                assert src_a.reads["full"] == reads_a["full"], src_a.reads
                assert src_a.reads["by_id"] > reads_a["by_id"], src_a.reads
                assert src_b.reads["owned_full"] == reads_b["owned_full"], src_b.reads
                assert src_b.reads["owned_by_id"] > reads_b["owned_by_id"], src_b.reads
                status = {s["name"]: s for s in agent.status()["sources"]}
                assert status["site-a"]["notifications"]["live"] is True
            else:
                assert src_a.reads["by_id"] == 0 and src_a.reads["full"] > reads_a["full"]
            agent.registry.unregister(agent.registry.remote_ports())
    finally:
        src_a.close()
        src_b.close()


def test_a_broken_bus_connection_makes_the_next_read_list_everything(sites, uniq, rabbit):
    """Events sent while the feed was not connected are lost: after it
    connects again, the source lists, and so finds what it missed."""
    a = sites["site-a"]
    net = f"amber-{uniq}"
    net_a = a.admin.network(net, CIDR)
    src = source(a, Gateway(f"gwa-{uniq}", "198.18.1.254", "198.18.0.1"), net, rabbit, True)
    try:
        src.snapshot()
        wait_for(src.events_live, 30, "notifications heard")
        src.snapshot()  # the read after connecting
        full, connects = src.reads["full"], src.feed.connects
        port = a.admin.port(net_a, "cn-a1", fixed_ips=[{"ip_address": "198.19.70.31"}])
        wait_for(lambda: port["mac_address"] in {e.mac for e in src.snapshot().endpoints},
                 10, "the new port heard and read by ID")
        assert src.reads["full"] == full

        # The broker drops every connection of the site's virtual host (as a
        # restart or a network cut does): the feed's too.
        ctl = Path(rabbitmq._server_script()).with_name("rabbitmqctl")
        subprocess.run([str(ctl), "-n", f"{rabbit.node}@localhost", "close_all_connections",
                        "-p", a.name, "gwagent test: a broken bus"], env=rabbit.env,
                       check=True, capture_output=True, timeout=60)
        wait_for(lambda: src.feed.connects > connects and src.events_live(), 30,
                 "the feed connected again")
        src.snapshot()
        assert src.reads["full"] == full + 1
        assert src.last_full_reason == "the notification feed (re)connected"
        assert port["mac_address"] in {e.mac for e in src.snapshot().endpoints}
    finally:
        src.close()

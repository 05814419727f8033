"""The ``gwagent`` ML2 mechanism driver: remote ports behind a gateway's VTEP.

Load it in the Neutron server (``[ml2] mechanism_drivers =
gwagent,openvswitch,l2population``; the entry point is
``neutron.ml2.mechanism_drivers: gwagent``). It acts only on *remote ports*:
ports whose ``binding:profile`` carries ``{"gwagent": {"tunnel_ip": ...}}``
(the gateway writes ``origin_site``, ``origin_port`` and ``gateway`` beside
it). Every other port is left to the other drivers.

Binding
    A remote port is bound to the network's VXLAN segment by this driver
    alone, with no L2 agent on its host: ``binding:vif_type`` is ``other``,
    ``binding:vif_details`` records the tunnel IP, and the port goes
    ``ACTIVE`` at once. A network without a VXLAN segment cannot carry
    remote ports; the port stays unbound and the reason is logged. List
    ``gwagent`` first in ``mechanism_drivers`` so that no agent-based driver
    tries its host first.

L2 population
    The driver speaks the l2pop RPC that L2 agents (Open vSwitch agent with
    ``l2_population = True``) already consume, on the fanout topic
    ``q-agent-notifier-l2population-update``, in the l2pop format
    ``{network_id: {'segment_id': VNI, 'network_type': 'vxlan',
    'ports': {tunnel_ip: [FLOODING_ENTRY, PortInfo(mac, ip), ...]}}}``:

    * a remote port going ACTIVE: ``add_fdb_entries`` with one
      ``PortInfo(mac, ip)`` per fixed IP and per single-address allowed
      address pair (with the pair's MAC), plus the flooding entry, so that
      broadcast and unknown unicast (ARP for a VIP that just moved) reach the
      gateway too;
    * an IP or pair changing on a MAC that stays: ``update_fdb_entries``
      ``chg_ip`` with ``before``/``after`` (agents rewrite their ARP
      responder entries and keep the MAC's forwarding entry);
    * a MAC appearing or going: ``add_fdb_entries``/``remove_fdb_entries``
      for that MAC;
    * a remote port deleted or unbound: ``remove_fdb_entries``; the
      flooding entry goes with the last remote port of that tunnel IP on
      the network.

    Prefix allowed address pairs (``198.19.10.0/24``) carry no ARP entry; their
    MAC is published with the pair's network address only if it is not
    already covered.

Full set on agent (re)start
    Stock l2pop sends an agent the whole FDB of a network when the agent
    reports its first port up there, or when it reports ports up after a
    restart (``refresh_tunnels``); it builds that set from the ports bound to
    hosts *that have an L2 agent*, so remote ports (bound to a gateway host
    without one) would be missing. This driver therefore subscribes to
    ``PORT``/``PROVISIONING_COMPLETE``, which Neutron publishes every time an
    L2 agent reports a device up (first wiring, restart, resync alike): it
    then sends that agent's host, by a host-targeted cast, every remote port
    of the device's network. ``add_fdb_entries`` is idempotent on agents, so
    repeating it costs one small message per device up and never leaves an
    agent without the remote entries (no guessing when to resync).

Nothing here reads the gateway's configuration; the tunnel IP comes from
each port's profile, so one Neutron can serve several gateways.
"""
from __future__ import annotations

import ipaddress

from neutron_lib import constants as const
from neutron_lib import context as n_context
from neutron_lib.api.definitions import portbindings
from neutron_lib.callbacks import registry
from neutron_lib.callbacks import resources
from neutron_lib.plugins import directory
from neutron_lib.plugins.ml2 import api
from oslo_log import log as logging

from neutron.db import provisioning_blocks
from neutron.db import segments_db
from neutron.plugins.ml2.drivers.l2pop import db as l2pop_db
from neutron.plugins.ml2.drivers.l2pop import rpc as l2pop_rpc

LOG = logging.getLogger(__name__)

PROFILE_KEY = "gwagent"
DEVICE_OWNER = "network:gwagent_remote"
VIF_TYPE = portbindings.VIF_TYPE_OTHER
NETWORK_TYPE = "vxlan"
PortInfo = l2pop_rpc.PortInfo
FLOOD = PortInfo(*const.FLOODING_ENTRY)


def tunnel_ip(port: dict | None) -> str | None:
    """The gateway tunnel IP a port's profile names, or None (not ours)."""
    if not port:
        return None
    profile = port.get(portbindings.PROFILE) or {}
    info = profile.get(PROFILE_KEY) if isinstance(profile, dict) else None
    if not isinstance(info, dict) or not info.get("tunnel_ip"):
        return None
    try:
        return str(ipaddress.ip_address(info["tunnel_ip"]))
    except ValueError:
        LOG.warning("gwagent: port %s has an invalid tunnel_ip %r in its binding profile",
                    port.get("id"), info["tunnel_ip"])
        return None


def port_entries(port: dict) -> dict[str, set[str]]:
    """{mac: {ip, ...}} a remote port makes reachable at its tunnel IP.

    MACs the gateway lists as mobile (``mobile_macs`` in the profile: a VRRP
    virtual MAC that a local port claims too) are left out: pinned at the
    gateway they would break a failover to the local port, so the agents
    learn them from the traffic instead (the flooding entry still brings
    the gateway broadcasts and unknown unicast)."""
    mac = port["mac_address"]
    profile = port.get(portbindings.PROFILE) or {}
    info = profile.get(PROFILE_KEY) if isinstance(profile, dict) else None
    mobile = set((info or {}).get("mobile_macs") or ()) if isinstance(info, dict) else set()
    entries: dict[str, set[str]] = {} if mac in mobile else {mac: set()}
    for fixed in port.get("fixed_ips") or ():
        if mac in entries:
            entries[mac].add(fixed["ip_address"])
    for pair in port.get("allowed_address_pairs") or ():
        pmac = pair.get("mac_address") or mac
        if pmac in mobile:
            continue
        try:
            net = ipaddress.ip_network(pair["ip_address"], strict=False)
        except (KeyError, ValueError):
            continue
        ips = entries.setdefault(pmac, set())
        if net.num_addresses == 1:
            ips.add(str(net.network_address))
        elif not ips:
            ips.add(str(net.network_address))
    return entries


def _infos(entries: dict[str, set[str]]) -> list[PortInfo]:
    return [PortInfo(mac, ip) for mac in sorted(entries) for ip in sorted(entries[mac])]


class GwagentMechanismDriver(api.MechanismDriver):
    """Binds gwagent remote ports agentlessly and publishes their FDB."""

    def initialize(self):
        self.notifier = l2pop_rpc.L2populationAgentNotifyAPI()
        self.rpc_ctx = n_context.get_admin_context_without_session()
        registry.subscribe(self._device_up, resources.PORT,
                           provisioning_blocks.PROVISIONING_COMPLETE)
        LOG.info("gwagent mechanism driver ready: remote ports bind to VXLAN segments "
                 "with vif_type %s", VIF_TYPE)

    # -- binding -----------------------------------------------------------
    def bind_port(self, context):
        tip = tunnel_ip(context.current)
        if tip is None:
            return
        for segment in context.segments_to_bind:
            if segment[api.NETWORK_TYPE] == NETWORK_TYPE:
                context.set_binding(segment[api.ID], VIF_TYPE,
                                    {"gwagent_tunnel_ip": tip},
                                    status=const.PORT_STATUS_ACTIVE)
                LOG.debug("gwagent: bound remote port %s to VNI %s behind %s",
                          context.current["id"], segment[api.SEGMENTATION_ID], tip)
                return
        LOG.warning("gwagent: remote port %s not bound: network %s has no %s segment",
                    context.current["id"], context.current["network_id"], NETWORK_TYPE)

    def check_vlan_qinq(self, context):
        return False

    def filter_hosts_with_segment_access(self, context, segments, candidate_hosts,
                                         agent_getter):
        return set()

    # -- l2 population -----------------------------------------------------
    @staticmethod
    def _published(port, segment, status):
        """(tunnel_ip, segment, entries) if ``port`` is an active bound
        remote port, else None."""
        tip = tunnel_ip(port)
        if (tip is None or segment is None or status != const.PORT_STATUS_ACTIVE
                or segment.get(api.NETWORK_TYPE) != NETWORK_TYPE):
            return None
        return tip, segment, port_entries(port)

    @staticmethod
    def _fdb(network_id, segment, ports):
        return {network_id: {"segment_id": segment[api.SEGMENTATION_ID],
                             "network_type": segment[api.NETWORK_TYPE],
                             "ports": ports}}

    def update_port_postcommit(self, context):
        port, orig = context.current, context.original
        new = self._published(port, context.bottom_bound_segment, context.status)
        old = self._published(orig, context.original_bottom_bound_segment,
                              context.original_status)
        if new == old:
            return
        if old and (not new or new[0] != old[0] or new[1] != old[1]):
            self._remove(orig["network_id"], orig["id"], *old)
            old = None
        if new and not old:
            self._add(port["network_id"], *new)
            return
        if new and old:
            self._change(port["network_id"], new[0], new[1], old[2], new[2])

    def delete_port_postcommit(self, context):
        port = context.current
        old = self._published(port, context.bottom_bound_segment, port.get("status"))
        if old:
            self._remove(port["network_id"], port["id"], *old)

    def _add(self, network_id, tip, segment, entries):
        self.notifier.add_fdb_entries(
            self.rpc_ctx, self._fdb(network_id, segment, {tip: [FLOOD] + _infos(entries)}))

    def _remove(self, network_id, port_id, tip, segment, entries):
        infos = _infos(entries)
        if not self._others_behind(network_id, tip, exclude=port_id):
            infos = [FLOOD] + infos
        self.notifier.remove_fdb_entries(self.rpc_ctx,
                                         self._fdb(network_id, segment, {tip: infos}))

    def _change(self, network_id, tip, segment, before, after):
        gone = {m: ips for m, ips in before.items() if m not in after}
        came = {m: ips for m, ips in after.items() if m not in before}
        if gone:
            self.notifier.remove_fdb_entries(
                self.rpc_ctx, self._fdb(network_id, segment, {tip: _infos(gone)}))
        if came:
            self.notifier.add_fdb_entries(
                self.rpc_ctx, self._fdb(network_id, segment, {tip: _infos(came)}))
        chg = {"before": [], "after": []}
        for mac in sorted(set(before) & set(after)):
            chg["before"] += [PortInfo(mac, ip) for ip in sorted(before[mac] - after[mac])]
            chg["after"] += [PortInfo(mac, ip) for ip in sorted(after[mac] - before[mac])]
        chg = {k: v for k, v in chg.items() if v}
        if chg:
            self.notifier.update_fdb_entries(
                self.rpc_ctx, {"chg_ip": {network_id: {tip: chg}}})

    # -- full set for an agent ---------------------------------------------
    def _remote_ports(self, ctx, network_id):
        plugin = directory.get_plugin()
        ports = plugin.get_ports(ctx, filters={"network_id": [network_id],
                                               "status": [const.PORT_STATUS_ACTIVE]})
        return [p for p in ports if tunnel_ip(p) and
                p.get(portbindings.VIF_TYPE) == VIF_TYPE]

    def _others_behind(self, network_id, tip, exclude):
        ctx = n_context.get_admin_context()
        return any(tunnel_ip(p) == tip and p["id"] != exclude
                   for p in self._remote_ports(ctx, network_id))

    def full_fdb(self, ctx, network_id):
        """The whole remote-port FDB of a network, in l2pop format (or {})."""
        segment = next((s for s in segments_db.get_network_segments(ctx, network_id)
                        if s[api.NETWORK_TYPE] == NETWORK_TYPE), None)
        if segment is None:
            return {}
        by_tip: dict[str, list] = {}
        for port in self._remote_ports(ctx, network_id):
            infos = by_tip.setdefault(tunnel_ip(port), [FLOOD])
            infos += _infos(port_entries(port))
        return self._fdb(network_id, segment, by_tip) if by_tip else {}

    def _device_up(self, resource, event, trigger, payload=None):
        if trigger != provisioning_blocks.L2_AGENT_ENTITY:
            return
        ctx = n_context.get_admin_context()
        plugin = directory.get_plugin()
        try:
            port = plugin.get_port(ctx, payload.resource_id)
        except Exception:  # the port went away meanwhile
            return
        host = port.get(portbindings.HOST_ID)
        if not host or tunnel_ip(port):
            return
        if not l2pop_db.get_agent_by_host(ctx, host):
            return
        fdb = self.full_fdb(ctx, port["network_id"])
        if fdb:
            LOG.debug("gwagent: sending the remote-port FDB of network %s to agent %s",
                      port["network_id"], host)
            self.notifier.add_fdb_entries(self.rpc_ctx, fdb, host)

"""All configuration options, declared once.

Options are read in ``main()`` and passed into constructors; nothing deeper
reads the global config. ``list_opts()`` feeds oslo-config-generator, which
writes ``etc/gwagent.conf.sample`` (regenerate it with ``make sample-config``).
"""
from __future__ import annotations

from oslo_config import cfg

gateway_opts = [
    cfg.StrOpt("high_availability", default="none", choices=["none", "vrrp"],
               help="'none': this node is the site's only gateway. 'vrrp': one of two "
                    "gateway nodes of the site (active/standby). Both run the agent with the "
                    "same site, tunnel_ip and transit_ip and keep the whole dataplane "
                    "programmed; VRRP on the underlay (keepalived) puts the site's tunnel and "
                    "transit addresses on the active node. The agent reads from its kernel "
                    "whether it holds both: only then does it write to the registry (Neutron), "
                    "so one node speaks for the site and a failover changes nothing there."),
    cfg.StrOpt("node", default="",
               help="This gateway node's name in status, logs and metrics (default: the "
                    "host name). With two nodes per site, the site's gateway host (the owner "
                    "of its remote ports) is the same on both; this tells them apart."),
    cfg.StrOpt("source", default="file", choices=["file", "neutron"],
               help="Where the sites' endpoints are read from: 'file' (site inventory "
                    "files, the embedded default) or 'neutron' (one Neutron API per site)."),
    cfg.StrOpt("site_file",
               help="The local site's inventory file (YAML). The gateway's own site, "
                    "networks and endpoints are read from it; its remote ports are "
                    "registered in the registry beside it."),
    cfg.StrOpt("registry_file",
               help="The local site's remote-port registry (JSON). Default: "
                    "<site_file without .yaml>.remote-ports.json."),
    cfg.ListOpt("peer_site_files", default=[],
                help="Inventory files of the peer sites (read only)."),
    cfg.StrOpt("netns", default="",
               help="Network namespace holding the gateway's dataplane; empty for the "
                    "namespace the agent runs in."),
    cfg.StrOpt("backend", default="linux", choices=["linux", "openflow"],
               help="Dataplane backend: 'linux' (a bridge and VXLAN devices per network, FDB "
                    "entries through netlink) or 'openflow' (an Open vSwitch bridge programmed "
                    "by the agent's embedded os-ken controller; see [openflow])."),
    cfg.StrOpt("state_dir", default="/run/gwagent",
               help="Where the agent writes status.json and its pid file."),
    cfg.BoolOpt("ingress_filter", default=True,
                help="Accept VXLAN at the gateway's tunnel address only from the site's "
                     "known VTEPs (its endpoints' and, with Neutron, every L2 agent's "
                     "tunneling_ip; an inventory's 'vteps'), and at its transit address only "
                     "from the peer gateways; drop and count the rest, per side and offender "
                     "(status, log). Linux: a table 'inet gwagent' in nftables (needs "
                     "python3-nftables); openflow: table ADMIT of the bridge."),
    cfg.BoolOpt("mac_guard", default=True,
                help="No MAC hijack across clouds: drop and count a frame whose inner source "
                     "MAC lives on the other side of the gateway (an endpoint of this site "
                     "arriving from a peer gateway, a remote endpoint arriving from a compute); "
                     "a mobile MAC may come from where its candidates are. Linux: a table "
                     "'bridge gwagent' in nftables (any source on a candidate's side); "
                     "openflow: table GUARD of the bridge (the candidates' VTEPs only)."),
]

agent_opts = [
    cfg.FloatOpt("resync_interval", default=10.0, min=0.1,
                 help="Seconds between full reconcile passes when nothing changes."),
    cfg.FloatOpt("audit_interval", default=60.0, min=0.1,
                 help="Seconds between full reads of the dataplane (every FDB entry or flow "
                      "the gateway owns, and the MAC guard's members). In between, passes "
                      "trust what the agent wrote and what the kernel's or the switch's events report, and plan only what "
                      "changed; a read is made at once when events were lost, an owned "
                      "device changed or a write failed. What an audit finds changed "
                      "without an event is logged, counted (status: dataplane_audit.drift) "
                      "and repaired."),
    cfg.FloatOpt("poll_interval", default=0.1, min=0.01,
                 help="Seconds between cheap checks of the sources for changes; a change "
                      "starts a pass at once."),
    cfg.FloatOpt("backoff_initial", default=0.5, min=0.0,
                 help="First retry delay (seconds) for an item that failed."),
    cfg.FloatOpt("backoff_max", default=30.0, min=0.0,
                 help="Cap of the doubling retry delay (seconds) for failed items and an "
                      "unreachable source."),
    cfg.FloatOpt("source_deadline", default=15.0, min=0.1,
                 help="Seconds one read of a source (a site's whole snapshot) may take "
                      "before status shows it hung; each source is read in a thread of its "
                      "own, so a hung one delays only what comes from it."),
    cfg.FloatOpt("pass_budget", default=1.0, min=0.01,
                 help="Seconds a dataplane pass should take; a longer one is logged and "
                      "flagged in status as over budget."),
]

mobility_opts = [
    cfg.BoolOpt("enabled", default=True,
                help="Move mobile MACs (claimed by several ports, e.g. a VRRP virtual MAC in "
                     "allowed address pairs) the moment a frame from one arrives from one of "
                     "its candidate VTEPs. Off: they stay at their home, or flood."),
    cfg.IntOpt("max_moves", default=5, min=2,
               help="Duplicate detection, as FRR's dup-addr-detection: this many moves of "
                    "one MAC within move_window seconds freeze it where it is."),
    cfg.FloatOpt("move_window", default=180.0, min=1.0,
                 help="Seconds over which moves are counted for duplicate detection."),
    cfg.FloatOpt("freeze_time", default=180.0, min=1.0,
                 help="Seconds a flapping MAC stays frozen (an alarm in status) before it "
                      "may move again."),
]


def notification_opts(whose: str) -> list:
    """Where a cloud's Neutron notifications are heard (the local and each
    peer group: the same three options)."""
    return [
        cfg.StrOpt("notification_url", secret=True,
                   help=f"Transport URL of {whose}'s message bus, where Neutron publishes "
                        "its notifications (as Neutron's own [oslo_messaging_notifications] "
                        "transport_url, or its [DEFAULT] transport_url: rabbit://user:pass@"
                        "host:5672/vhost). Needs Neutron's [oslo_messaging_notifications] "
                        "driver = messagingv2. Set: the gateway reads only the ports it hears "
                        "changed and lists them all every [neutron] audit_interval. Empty: "
                        "every change check is a listing (works, slower)."),
        cfg.StrOpt("notification_exchange", default="neutron",
                   help="The exchange of those notifications: Neutron's [DEFAULT] "
                        "control_exchange."),
        cfg.StrOpt("notification_topic", default="notifications",
                   help="The topic of those notifications: Neutron's "
                        "[oslo_messaging_notifications] topics (its first)."),
    ]


neutron_opts = [
    cfg.StrOpt("cloud", help="clouds.yaml entry of the local cloud (as openstack --os-cloud)."),
    cfg.StrOpt("clouds_file",
               help="Explicit clouds.yaml path; default: openstacksdk's standard search path."),
    cfg.StrOpt("site_name", help="This site's name (as its peers know it)."),
    cfg.DictOpt("networks", default={},
                help="Stretched networks and their transit VNI, the same in every site: "
                     "name:vni,name:vni."),
    cfg.DictOpt("network_ids", default={},
                help="The Neutron network ID of each stretched network in this site: "
                     "name:UUID,name:UUID (every name of 'networks'). Networks are never "
                     "found by name or tag, which any tenant could reuse."),
    cfg.StrOpt("gateway_host",
               help="This site's gateway host: the binding host of the remote ports it "
                    "registers, and the owner mark on them."),
    cfg.StrOpt("gateway_tunnel_ip", help="This site's gateway VTEP facing its computes."),
    cfg.StrOpt("gateway_transit_ip", help="This site's gateway address facing peer gateways."),
    cfg.ListOpt("gateway_nodes", default=[],
                help="With two gateway nodes per site ([gateway] high_availability = vrrp): "
                     "their two names, as each one's [gateway] node says; empty for a site's "
                     "only gateway. gateway_host stays the site's gateway as Neutron knows it, "
                     "the same on both nodes."),
    cfg.ListOpt("peers", default=[],
                help="Peer site names; each has a group [neutron_peer_<name>] with cloud, "
                     "clouds_file, network_ids, gateway_host, gateway_tunnel_ip and "
                     "gateway_transit_ip."),
    cfg.FloatOpt("api_connect_timeout", default=3.0, min=0.1,
                 help="Seconds to connect to a Neutron API (every Neutron: the local one and "
                      "the peers'); a call that misses it fails like any other error."),
    cfg.FloatOpt("api_read_timeout", default=10.0, min=0.1, deprecated_name="api_timeout",
                 help="Seconds a Neutron API may take to answer one request once connected "
                      "(a read of a site is a few requests)."),
    cfg.FloatOpt("poll_interval", default=0.5, min=0.05,
                 help="Seconds between the cheap checks against each Neutron: a narrow "
                      "port listing where its notifications are not heard (a change starts "
                      "a pass at once), a read of the stretched networks where they are "
                      "(the API's health, shown by status within a poll)."),
    *notification_opts("the cloud"),
    cfg.FloatOpt("audit_interval", default=300.0, min=1.0,
                 help="With notifications heard: seconds between full listings of each "
                      "cloud's ports and of the remote ports this gateway owns (the audit of "
                      "what the events said; a listing is made at once after the bus "
                      "reconnected, when events may have been lost)."),
]

openflow_opts = [
    cfg.StrOpt("ovsdb_connection", default="unix:/var/run/openvswitch/db.sock",
               help="OVSDB endpoint of the Open vSwitch that carries the gateway's bridge."),
    cfg.StrOpt("bridge", default="gwa-ovs",
               help="The gateway's own OVS bridge (created and owned by the agent; every flow "
                    "and group on it is the agent's)."),
    cfg.StrOpt("vxlan_port", default="gwa-vxlan",
               help="Name of the bridge's one flow-based VXLAN port (both sides)."),
    cfg.StrOpt("datapath_type", default="system", choices=["system", "netdev"],
               help="OVS datapath of the bridge: 'system' (the kernel module) or 'netdev' "
                    "(userspace, as in the lab)."),
    cfg.HostAddressOpt("listen_address", default="127.0.0.1",
                       help="Where the embedded controller listens for the switch (inside "
                            "[gateway] netns)."),
    cfg.PortOpt("listen_port", default=6653,
                help="TCP port of the embedded controller."),
    cfg.FloatOpt("request_timeout", default=10.0, min=0.1,
                 help="Seconds to wait for the switch to answer a request or a bundle."),
    cfg.StrOpt("mobility_evidence", default="tap", choices=["tap", "packet-in"],
               help="Where the evidence of a mobile MAC's move comes from: 'tap' (the BPF "
                    "tap on the gateway's underlay, as on Linux: measured fastest) or "
                    "'packet-in' (table MOBILITY copies the frames to the controller: for "
                    "datapaths whose underlay the kernel does not see, such as DPDK)."),
    cfg.IntOpt("evidence_rate", default=100, min=1,
               help="With mobility_evidence = packet-in: packet-ins per second the "
                    "switch's controller meter lets through (over it, the copy is dropped, "
                    "never the frame)."),
    cfg.IntOpt("evidence_burst", default=25, min=1,
               help="With mobility_evidence = packet-in: the controller meter's burst."),
]

metrics_opts = [
    cfg.IntOpt("port", default=0, min=0, max=65535,
               help="Serve Prometheus metrics at http://<address>:<port>/metrics (0: off, "
                    "the default): passes and their duration, operations, entries programmed "
                    "per network and side, conflicts, mobile MACs, the filters' drops, Neutron "
                    "requests and their latency, the last good pass."),
    cfg.StrOpt("address", default="127.0.0.1",
               help="The address the metrics endpoint listens on (in the agent's own "
                    "network namespace, not the gateway's)."),
]

neutron_peer_opts = [
    cfg.StrOpt("cloud", help="clouds.yaml entry of the peer's cloud (read only)."),
    cfg.StrOpt("clouds_file", help="Explicit clouds.yaml path for this peer."),
    cfg.DictOpt("network_ids", default={},
                help="The Neutron network ID of each stretched network in the peer's "
                     "cloud: name:UUID,..."),
    cfg.StrOpt("gateway_host", help="The peer gateway's host."),
    cfg.StrOpt("gateway_tunnel_ip", help="The peer gateway's VTEP facing its computes."),
    cfg.StrOpt("gateway_transit_ip",
               help="The peer gateway's transit address: where this gateway sends the "
                    "peer's MACs."),
    *notification_opts("the peer cloud"),
]

PEER_GROUP = "neutron_peer_{}"


def register_opts(conf: cfg.ConfigOpts) -> None:
    conf.register_opts(gateway_opts, group="gateway")
    conf.register_opts(agent_opts, group="agent")
    conf.register_opts(mobility_opts, group="mobility")
    conf.register_opts(neutron_opts, group="neutron")
    conf.register_opts(openflow_opts, group="openflow")
    conf.register_opts(metrics_opts, group="metrics")


def register_peer_opts(conf: cfg.ConfigOpts) -> None:
    """One group per peer named in [neutron] peers (known only after parsing)."""
    for peer in conf.neutron.peers:
        conf.register_opts(neutron_peer_opts, group=PEER_GROUP.format(peer))


def list_opts():
    return [("gateway", gateway_opts), ("agent", agent_opts), ("mobility", mobility_opts),
            ("neutron", neutron_opts), ("openflow", openflow_opts), ("metrics", metrics_opts),
            (PEER_GROUP.format("SITE"), neutron_peer_opts)]

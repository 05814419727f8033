"""All configuration options, declared once.

Options are read in ``main()`` and passed into constructors; nothing deeper
reads the global config. ``list_opts()`` feeds oslo-config-generator, which
writes ``etc/gwagent.conf.sample`` (regenerate it with ``make sample-config``).
"""
from __future__ import annotations

from oslo_config import cfg

gateway_opts = [
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
    cfg.StrOpt("backend", default="linux", choices=["linux"],
               help="Dataplane backend."),
    cfg.StrOpt("state_dir", default="/run/gwagent",
               help="Where the agent writes status.json and its pid file."),
]

agent_opts = [
    cfg.FloatOpt("resync_interval", default=10.0, min=0.1,
                 help="Seconds between full reconcile passes when nothing changes."),
    cfg.FloatOpt("poll_interval", default=0.1, min=0.01,
                 help="Seconds between cheap checks of the sources for changes; a change "
                      "starts a pass at once."),
    cfg.FloatOpt("backoff_initial", default=0.5, min=0.0,
                 help="First retry delay (seconds) for an item that failed."),
    cfg.FloatOpt("backoff_max", default=30.0, min=0.0,
                 help="Cap of the doubling retry delay (seconds) for failed items and an "
                      "unreachable source."),
]


def register_opts(conf: cfg.ConfigOpts) -> None:
    conf.register_opts(gateway_opts, group="gateway")
    conf.register_opts(agent_opts, group="agent")


def list_opts():
    return [("gateway", gateway_opts), ("agent", agent_opts)]

"""The lab's L2 agents as Neutron sees them: one ``report_state`` per compute.

    .venv-neutron/bin/python -m gwagent.lab.l2agents CONF_FILE HOST=TUNNEL_IP [...]

CONF_FILE is oslo.config (``[DEFAULT] transport_url, control_exchange,
rpc_response_timeout``), written by the lab.

Runs in the Neutron venv (it imports Neutron; nothing in the agent imports
this module). Neutron derives a bound port's VTEP from the L2 agent on its
``binding:host_id``: the ``tunneling_ip`` that agent reported. So, for
every compute of its site, this process reports an Open vSwitch agent (tunnel
type vxlan, l2_population on) over the site's RabbitMQ vhost with the
compute's underlay IP as ``tunneling_ip``, then keeps reporting every
``REPORT_INTERVAL`` seconds so the agents stay alive (the openvswitch
mechanism driver binds ports only on hosts with a live agent). It prints
``{"ready": true}`` once every host has been accepted. It consumes no l2pop
messages: the lab's L2 population emulator reads Neutron's API instead.
"""
import json
import sys
import time

REPORT_INTERVAL = 20.0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    conf_file, *pairs = argv
    hosts = dict(p.split("=", 1) for p in pairs)

    from neutron_lib import context as n_context
    from neutron_lib import rpc as n_rpc
    from neutron_lib.agent import topics
    from oslo_config import cfg
    import oslo_messaging
    from neutron.agent import rpc as agent_rpc
    from neutron.common import config as common_config
    from neutron.conf.agent import common as agent_conf

    common_config.register_common_config_options()
    agent_conf.register_agent_state_opts_helper(cfg.CONF)
    cfg.CONF(["--config-file", conf_file], project="neutron", default_config_files=[])
    n_rpc.init(cfg.CONF)
    ctx = n_context.get_admin_context_without_session()
    state_rpc = agent_rpc.PluginReportStateAPI(topics.REPORTS)

    def state(host, tip, first):
        return {"binary": "neutron-openvswitch-agent", "host": host, "topic": topics.AGENT,
                "agent_type": "Open vSwitch agent", "start_flag": first,
                "configurations": {"tunneling_ip": tip, "tunnel_types": ["vxlan"],
                                   "l2_population": True, "bridge_mappings": {},
                                   "gwagent_lab": True}}

    # The RPC server comes up a few seconds after the API: call until it
    # answers, with short timeouts (a call sent before its queue exists is
    # lost, and report_state would otherwise wait report_interval for it).
    deadline = time.monotonic() + 120
    state_rpc.timeout = 2
    for host, tip in hosts.items():
        while True:
            try:
                state_rpc.report_state(ctx, state(host, tip, True), use_call=True)
                break
            except oslo_messaging.MessagingTimeout:
                if time.monotonic() > deadline:
                    raise
    print(json.dumps({"ready": True, "hosts": hosts}), flush=True)
    state_rpc.timeout = REPORT_INTERVAL
    while True:
        time.sleep(REPORT_INTERVAL)
        for host, tip in hosts.items():
            try:
                state_rpc.report_state(ctx, state(host, tip, False), use_call=True)
            except oslo_messaging.MessagingException as exc:
                print(json.dumps({"host": host, "error": repr(exc)}), flush=True)


if __name__ == "__main__":
    sys.exit(main())

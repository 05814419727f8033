"""A stand-in L2 agent speaking Neutron's real agent RPC (run in .venv-neutron).

    python fake_l2_agent.py TRANSPORT_URL EXCHANGE HOST TUNNEL_IP RECORD_FILE

It registers itself as an Open vSwitch agent with ``report_state`` (as the
real agent does, tunnel type vxlan, l2_population on), consumes the l2pop
topic like a real agent (fanout and host-targeted casts) and appends every
FDB message it receives to RECORD_FILE as one JSON line. Commands come on
stdin, one JSON object per line:

    {"cmd": "device_up", "device": PORT_ID}   -> update_device_up RPC
    {"cmd": "report"}                         -> report_state (start_flag)

and each is answered on stdout with one JSON line. Nothing is mocked: the
Neutron server decides what to send, by its own RPC and database.
"""
import json
import sys
import threading
import time

from neutron_lib.agent import topics
from neutron_lib import context as n_context
from neutron_lib import rpc as n_rpc
from oslo_config import cfg
import oslo_messaging

from neutron.agent import rpc as agent_rpc
from neutron.common import config as common_config
from neutron.conf.agent import common as agent_conf


def main():
    transport_url, exchange, host, tunnel_ip, record = sys.argv[1:6]
    conf_file = record + ".conf"
    with open(conf_file, "w") as out:
        out.write(f"[DEFAULT]\ntransport_url = {transport_url}\nhost = {host}\n"
                  f"control_exchange = {exchange}\n[AGENT]\nreport_interval = 3\n")
    common_config.register_common_config_options()
    agent_conf.register_agent_state_opts_helper(cfg.CONF)
    cfg.CONF(["--config-file", conf_file], project="neutron")
    n_rpc.init(cfg.CONF)
    ctx = n_context.get_admin_context_without_session()
    lock = threading.Lock()

    class Endpoint:
        target = oslo_messaging.Target(version="1.0")

        def _record(self, method, fdb_entries):
            with lock, open(record, "a") as out:
                out.write(json.dumps({"method": method, "fdb_entries": fdb_entries}) + "\n")

        def add_fdb_entries(self, context, fdb_entries, host=None):
            self._record("add_fdb_entries", fdb_entries)

        def remove_fdb_entries(self, context, fdb_entries, host=None):
            self._record("remove_fdb_entries", fdb_entries)

        def update_fdb_entries(self, context, fdb_entries, host=None):
            self._record("update_fdb_entries", fdb_entries)

    topic = topics.get_topic_name(topics.AGENT, topics.L2POPULATION, topics.UPDATE)
    server = n_rpc.get_server(oslo_messaging.Target(topic=topic, server=host, fanout=False),
                              [Endpoint()])
    server.start()

    state_rpc = agent_rpc.PluginReportStateAPI(topics.REPORTS)
    plugin_rpc = agent_rpc.PluginApi(topics.PLUGIN)
    agent_state = {
        "binary": "neutron-openvswitch-agent", "host": host, "topic": topics.AGENT,
        "agent_type": "Open vSwitch agent", "start_flag": True,
        "configurations": {"tunneling_ip": tunnel_ip, "tunnel_types": ["vxlan"],
                           "l2_population": True, "bridge_mappings": {}},
    }

    def report():
        # Like a real agent: report until the server's RPC side answers (it
        # comes up a few seconds after the API; casts sent before its queues
        # exist are lost).
        deadline = time.monotonic() + 90
        while True:
            try:
                state_rpc.report_state(ctx, dict(agent_state), use_call=True)
                return
            except oslo_messaging.MessagingTimeout:
                if time.monotonic() > deadline:
                    raise

    report()
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        try:
            if cmd["cmd"] == "device_up":
                plugin_rpc.update_device_up(ctx, cmd["device"], f"ovs-agent-{host}", host)
            elif cmd["cmd"] == "report":
                report()
            print(json.dumps({"ok": True}), flush=True)
        except Exception as exc:  # reported to the test, which fails on it
            print(json.dumps({"ok": False, "error": repr(exc)}), flush=True)
    server.stop()


if __name__ == "__main__":
    main()

"""A private RabbitMQ broker on loopback, for the Neutron lab and tests.

Neutron's RPC (the agents' state reports, L2 population) needs a message
bus. The lab and the integration tests each run their own broker, in a
directory of their own and on ports of their own, so it never meets a
system broker; this module writes its configuration and environment. Test
and lab infrastructure: it lived in ``gwagent.neutron`` until issue 8.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable


def prepare(workdir: str | os.PathLike, port: int, vhosts: Iterable[str] = ()) -> Path:
    """Write the broker's configuration (listen on 127.0.0.1:``port`` only),
    with the virtual hosts ``vhosts`` defined at boot: one ``rabbitmqctl``
    call takes about 2 s here (an Erlang VM each), and a vhost needed two.
    A boot-time import skips the default user, so guest is defined too."""
    w = Path(workdir)
    w.mkdir(parents=True, exist_ok=True)
    names = ["/", *vhosts]
    (w / "definitions.json").write_text(json.dumps({
        "users": [{"name": "guest", "password": "guest", "tags": "administrator"}],
        "vhosts": [{"name": name} for name in names],
        "permissions": [{"user": "guest", "vhost": name, "configure": ".*", "write": ".*",
                         "read": ".*"} for name in names]}))
    (w / "rabbitmq.conf").write_text(
        f"listeners.tcp.1 = 127.0.0.1:{port}\nloopback_users = none\n"
        "definitions.import_backend = local_filesystem\n"
        f"definitions.local.path = {w / 'definitions.json'}\n")
    (w / "enabled_plugins").write_text("[].\n")
    return w


def environment(workdir: str | os.PathLike, node: str, port: int, dist_port: int,
                epmd_port: int) -> dict:
    """The environment of epmd, rabbitmq-server and rabbitmqctl for the broker
    ``node`` (``name@host``) kept in ``workdir``."""
    w = Path(workdir)
    return dict(os.environ, HOME=str(w), ERL_EPMD_PORT=str(epmd_port),
                ERL_EPMD_ADDRESS="127.0.0.1", RABBITMQ_NODENAME=node,
                RABBITMQ_NODE_IP_ADDRESS="127.0.0.1", RABBITMQ_NODE_PORT=str(port),
                RABBITMQ_DIST_PORT=str(dist_port),
                RABBITMQ_MNESIA_BASE=str(w / "mnesia"), RABBITMQ_LOG_BASE=str(w / "log"),
                RABBITMQ_CONFIG_FILE=str(w / "rabbitmq"),
                RABBITMQ_ENABLED_PLUGINS_FILE=str(w / "enabled_plugins"),
                RABBITMQ_PID_FILE=str(w / "rabbit.pid"),
                RABBITMQ_SERVER_ERL_ARGS="+P 1048576 -kernel inet_dist_use_interface "
                                         "{127,0,0,1}")

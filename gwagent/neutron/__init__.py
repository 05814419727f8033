"""gwagent's Neutron control plane: source, registry, ML2 driver.

Why it looks like this
    Upstream Neutron never gained a per-port VTEP: L2 population derives a
    port's VTEP from the L2 agent on its host. A cloud's computes can only
    learn "MAC M is behind the gateway" if Neutron holds a port with M bound
    somewhere that resolves to the gateway's tunnel IP. So the gateway
    registers every remote endpoint as a *remote port* in its own cloud, and
    this package ships the ML2 mechanism driver that binds such ports with no
    agent and publishes them by the l2pop RPC that L2 agents already consume,
    with the VTEP taken from the port's ``binding:profile``.

Modules
    ``source``  :class:`~gwagent.neutron.source.NeutronSite`, the Neutron
                twin of ``FileInventory``: a site source (snapshot of the
                site's own endpoints) and the registry of this gateway's
                remote ports, over openstacksdk and clouds.yaml. Runs in the
                agent's venv.
    ``ml2``     The ``gwagent`` mechanism driver. Runs inside neutron-server
                (the separate ``.venv-neutron``); imports Neutron, so nothing
                in the agent imports it.

Product code only. The starters of Neutron servers and of RabbitMQ, which
the integration tests, the benchmarks and the lab use, lived here until
issue 8 and are now the lab's (``gwagent.lab.neutron_server``,
``gwagent.lab.broker``): nothing here imports the lab.

Contracts between the two sides (the only coupling)
    * ``device_owner = network:gwagent_remote`` and ``device_id =
      gwagent:<gateway host>``: what the registry owns;
    * ``binding:profile = {"gwagent": {"tunnel_ip", "gateway", "origin_site",
      "origin_port", "origin_vtep", "network"}}``: the driver reads only
      ``tunnel_ip``; the rest lets the registry find a port again after a
      restart and rebuild the :class:`~gwagent.model.RemotePort` exactly.
"""

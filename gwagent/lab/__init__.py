"""The namespace lab: sites, computes, VMs and gateways on one host.

A lab stands in for two or more OpenStack clouds so the gateway can be
exercised end to end without them. It is a *client* of the product: it
starts real agents (``gwagent run``) on configuration files it writes, and
nothing in the product imports it; ``gwagent`` loads it only when a
``lab`` command runs, the drills only when a drill runs.

Modules, each importing only those above it (no cycle, no import hidden in
a function; ``tests/unit/test_layout.py`` checks):

    ``names``           prefixes, namespace and device names, LabError
    ``topology``        the shape, and the topology file format
    ``processes``       the processes a lab starts, by pid and start time
    ``namespaces``      netlink inside the lab's namespaces
    ``neutron_server``, ``broker``
                        start a real Neutron, configure a private RabbitMQ
                        (also the integration tests' and benchmarks')
    ``faultproxy``      the HTTP proxy in front of a Neutron lab's APIs
    ``forward``         a TCP forwarder from lab namespaces to the host's
                        loopback (the broker, for agents in computes)
    ``ovs``, ``ovs_agent``
                        an Open vSwitch per namespace; computes with
                        Neutron's own OVS agent (``computes: ovs-agent``)
    ``neutron``         the Neutron lab: RabbitMQ, a Neutron per site, the
                        computes' L2 agents (``l2agents``, run in the
                        Neutron venv; or the real ones of ``ovs_agent``),
                        networks and VM ports
    ``truth``           where a site's truth lives, inventory file or
                        Neutron: one object per lab that the rest calls
    ``record``          :class:`~gwagent.lab.record.Lab`, as in lab.json
    ``l2pop``           Neutron's L2 population, played on the computes
                        with the product's planner and Linux backend
    ``probe``           loss and convergence with sequence-numbered UDP
    ``computes``        what the computes are (emulated, or OVS agents),
                        chosen once from the topology
    ``build``           up and down, VMs added, moved and removed, the
                        gateways' configuration files, their agents
    ``faults``          ``lab fault``: a Neutron lab's control plane broken
    ``cli``             ``gwagent lab``

History: until issue 8 ``build``, ``l2pop``, ``neutron``, ``faults`` and
``cli`` imported each other in circles hidden by function-local imports,
asked ``lab.neutron is not None`` wherever the two kinds of lab differ, and
the Neutron and RabbitMQ starters lived in the product's
``gwagent.neutron``. The gateways' own devices are never built here: the
agents make them, as in production.
"""

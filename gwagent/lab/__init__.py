"""The namespace lab: sites, computes, VMs and gateways on one host.

A lab stands in for two or more OpenStack clouds so the gateway can be
exercised end to end without them: ``topology`` describes the shape (and
documents the file format), ``build`` makes it out of network namespaces,
veths, bridges and VXLAN devices and records it in ``lab.json``, ``l2pop``
plays Neutron's L2 population on the computes, ``probe`` measures loss and
convergence with sequence-numbered UDP, and ``cli`` is ``gwagent lab``.
The gateways' own devices are never built here: the agents make them, as
in production. ``neutron`` is the Neutron mode (``lab up --neutron``): one
real Neutron per site, with RabbitMQ and the computes' L2 agents
(``l2agents``), replaces the inventory files as the source of truth.
"""

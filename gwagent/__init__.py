"""gwagent: a software VXLAN gateway and its control agent.

It stretches Neutron networks across clouds. In each cloud a gateway reads
the endpoints of its own site and of its peers, registers every remote
endpoint locally as a *remote port* behind its own tunnel IP, and programs a
dataplane that translates each site's segmentation ID to a transit VNI shared
between gateways.

The code is one pipeline (see DESIGN.md): sources -> desired state (model) ->
plan (control.planner, pure) -> backend.apply (dataplane, later openflow).
"""
__version__ = "0.1.0"

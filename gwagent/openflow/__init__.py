"""The OpenFlow backend: an Open vSwitch bridge programmed by an embedded
os-ken controller.

* ``flows``: pure builders of the pipeline's messages (the tables are
  described there);
* ``switch``: the controller end of the bridge (os-ken as a library, a
  listener in the gateway's namespace, requests and bundles by xid);
* ``ovsdb``: the bridge and its one flow-based VXLAN port, through ovsdbapp;
* ``backend``: the Backend protocol, compiling the gateway's state into
  flows and groups and reading it back.

os-ken is the maintained fork of Ryu (Ryu no longer installs on Python
3.10+); it has no manager command, so it runs inside the agent's process.
"""

from gwagent.extras import require

require("openflow", "os_ken", "ovsdbapp", feature="the OpenFlow backend (backend = openflow)")

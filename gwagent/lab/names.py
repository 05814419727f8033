"""Names and places of a lab: prefixes, namespaces, devices, its directory.

The bottom of the lab: every other lab module may import it, it imports
nothing of gwagent. A lab's namespaces are ``<prefix><node>``; a compute's
devices per network are the product's Linux backend's for a one-sided
network identified by the segmentation ID, ``gwa-br-<segid>`` and
``gwa-vl-<segid>`` (the emulator programs computes through that backend:
gwagent.lab.l2pop; a unit test checks the names are the backend's), a VM's
tap ``tap<hash of its name>``.

History: until issue 8 a compute's devices had the names Neutron's
linuxbridge agent uses, ``brq-<segid>`` and ``vxlan-<segid>``. Keeping
them would have meant teaching the product's backend a second naming
(ownership, grouping and garbage collection all go by the ``gwa-`` names)
for the lab's sake; nothing reads a compute's device names but the lab,
its tests and the drills.
"""
from __future__ import annotations

import hashlib
import re
from pathlib import Path

LAB_ROOT = Path("/run/gwagent/lab")
DEFAULT_PREFIX = "gwl-"
PREFIX_RE = re.compile(r"^[a-z][a-z0-9]{0,11}-([a-z0-9]{1,8}-)?$")
SWITCH = "switch"


class LabError(Exception):
    """The lab cannot do what was asked; the message says why."""


def check_prefix(prefix: str) -> None:
    if not PREFIX_RE.match(prefix):
        raise LabError(f"bad prefix {prefix!r}: lower-case letters and digits ending in "
                       "'-', e.g. 'gwl-' or 'gwf-1a2b-'")


def default_lab_dir(prefix: str) -> Path:
    return LAB_ROOT / prefix.rstrip("-")


def tap_name(vm_name: str) -> str:
    return "tap" + hashlib.sha256(vm_name.encode()).hexdigest()[:10]


def vxlan_name(segmentation_id: int) -> str:
    """A compute's VXLAN device of the network with this segmentation ID."""
    return f"gwa-vl-{segmentation_id}"


def bridge_name(segmentation_id: int) -> str:
    """A compute's bridge of the network (VMs' taps plug into it)."""
    return f"gwa-br-{segmentation_id}"

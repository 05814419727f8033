"""Where a lab site's truth lives: its inventory file, or its own Neutron.

Why
    A site's truth (its ports, and the remote ports its gateway registered)
    is what a cloud says, and the lab has two kinds of cloud: inventory
    files (``lab up``) and one real Neutron per site (``lab up --neutron``).
    Until issue 8 every lab module asked ``lab.neutron is not None`` and
    imported the Neutron lab inside functions to hide the import cycle that
    made. Now a lab holds one :class:`Truth`, chosen from ``source`` when
    the lab is made or loaded (:class:`~gwagent.lab.record.Lab`), and the
    rest calls it: building (``up``), changing VMs (``publish``), the
    gateways' configuration (``gateway_options``, ``config_sections``), the
    L2 population emulator's reads (``view``), waiting for the agents
    (``remote_ports``), ``lab status`` (``status``) and faults
    (``control_plane``).

A truth keeps a reference to its lab and reads the lab's topology and
paths when called, so it always sees the lab as it is now.
"""
from __future__ import annotations

from typing import Callable, Protocol

import yaml

from gwagent.control.sources import FileInventory, atomic_write, site_to_dict
from gwagent.lab import neutron as lab_neutron
from gwagent.lab import topology as topo_mod
from gwagent.model import RemotePort, SiteSnapshot


class SiteView(Protocol):
    """One site as the L2 population emulator reads it."""

    def version(self) -> object:
        """Changes when the site's truth may have changed (cheap to ask)."""

    def read(self) -> tuple[SiteSnapshot, list[RemotePort]]:
        """The site's own endpoints and every remote port registered in it."""


class Truth(Protocol):
    kind: str             # "file" or "neutron": lab.json's source, lab status
    poll_interval: float  # how often the emulator asks a site for its version
    ready_timeout: float  # how long the agents' first passes may take in lab up

    def up(self, progress: Callable[[str], None]) -> None:
        """Make every site's truth, for a lab whose namespaces and VMs exist."""

    def publish(self, sites: list[str] | None = None) -> None:
        """Tell the sites' clouds about the topology's VMs (all sites when None)."""

    def remote_ports(self, site: str) -> list[RemotePort]:
        """The remote ports registered in the site (by any gateway)."""

    def view(self, site: str) -> SiteView:
        """The site for the L2 population emulator."""

    def gateway_options(self, site) -> dict[str, str]:
        """The ``[gateway]`` options that say where the site's gateway reads."""

    def config_sections(self, site) -> str:
        """Further sections of the gateway's configuration file ("" if none)."""

    def status(self) -> dict:
        """What ``lab status`` shows of the clouds ({} for files)."""

    def control_plane(self) -> lab_neutron.ControlPlane | None:
        """The clouds' control plane that ``lab fault`` breaks; None for files."""


# -- inventory files ---------------------------------------------------------------

class FileView:
    """A site as its inventory file and registry say."""

    def __init__(self, path):
        self.inv = FileInventory(path, owner=None)

    def version(self) -> object:
        return (self.inv.version(), self.inv.registry_version())

    def read(self) -> tuple[SiteSnapshot, list[RemotePort]]:
        return self.inv.snapshot(), self.inv.all_remote_ports()


class FileTruth:
    """Every site's truth is ``<lab_dir>/<site>.yaml`` and its registry file."""

    kind = "file"
    poll_interval = 0.1
    ready_timeout = 20.0

    def __init__(self, lab):
        self.lab = lab

    def up(self, progress) -> None:
        self.publish()

    def publish(self, sites: list[str] | None = None) -> None:
        """Write the sites' inventory files from the topology (atomically)."""
        for site in sites or [s.name for s in self.lab.topology.sites]:
            snap = topo_mod.site_snapshot(self.lab.topology, site)
            atomic_write(self.lab.inventory(site),
                         yaml.safe_dump(site_to_dict(snap), sort_keys=False))

    def remote_ports(self, site: str) -> list[RemotePort]:
        return FileInventory(self.lab.inventory(site), owner=None).all_remote_ports()

    def view(self, site: str) -> FileView:
        return FileView(self.lab.inventory(site))

    def gateway_options(self, site) -> dict[str, str]:
        peers = [str(self.lab.inventory(s.name)) for s in self.lab.topology.sites
                 if s.name != site.name]
        return {"site_file": str(self.lab.inventory(site.name)),
                "peer_site_files": ",".join(peers)}

    def config_sections(self, site) -> str:
        return ""

    def status(self) -> dict:
        return {}

    def control_plane(self) -> None:
        return None


# -- one Neutron per site ------------------------------------------------------------

class NeutronView:
    """A site as its Neutron says: the bound local ports (VTEP = the
    tunneling_ip of the L2 agent on binding:host_id) and the remote ports
    of the site's gateway (VTEP = the tunnel IP in their binding profile)."""

    def __init__(self, lab, site: str):
        self.source = lab_neutron.neutron_site(lab, site, timeout=(2.0, 5.0))

    def version(self) -> object:
        # Port revisions on the stretched networks (remote ports included);
        # agent changes are caught by the periodic resync.
        return self.source.version()

    def read(self) -> tuple[SiteSnapshot, list[RemotePort]]:
        return self.source.snapshot(), self.source.remote_ports()


class NeutronTruth:
    """Every site's truth is its own Neutron (:mod:`gwagent.lab.neutron`)."""

    kind = "neutron"
    poll_interval = 0.5
    ready_timeout = 60.0

    def __init__(self, lab):
        self.lab = lab

    def up(self, progress) -> None:
        lab_neutron.up(self.lab, progress)

    def publish(self, sites: list[str] | None = None) -> None:
        """Create, update or delete the VMs' ports in the sites' Neutrons."""
        lab_neutron.sync_ports(self.lab, sites)

    def remote_ports(self, site: str) -> list[RemotePort]:
        return lab_neutron.remote_ports_of(self.lab, site)

    def view(self, site: str) -> NeutronView:
        return NeutronView(self.lab, site)

    def gateway_options(self, site) -> dict[str, str]:
        return {"source": "neutron"}

    def config_sections(self, site) -> str:
        return lab_neutron.config_sections(self.lab, site)

    def status(self) -> dict:
        return lab_neutron.status(self.lab)

    def control_plane(self) -> lab_neutron.ControlPlane:
        return lab_neutron.ControlPlane(self.lab)


TRUTHS: dict[str, type] = {FileTruth.kind: FileTruth, NeutronTruth.kind: NeutronTruth}

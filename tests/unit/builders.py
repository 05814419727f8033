"""Small builders of valid sites for tests."""
from gwagent.model import Endpoint, Gateway, Network, Site, SiteSnapshot

GATEWAYS = {
    "a": Gateway("gw-a", "198.18.1.1", "198.18.200.1"),
    "b": Gateway("gw-b", "198.18.2.1", "198.18.200.2"),
    "c": Gateway("gw-c", "198.18.3.1", "198.18.200.3"),
}
SEG = {"a": 1000, "b": 2000, "c": 3000}


def networks(site: str, names=("red", "blue")):
    return tuple(Network(n, SEG[site] + i + 1, 5001 + i) for i, n in enumerate(names))


def endpoint(site, network, n, compute=1, **kw):
    mac = f"fa:16:3e:{ord(site):02x}:{ord(network[0]):02x}:{n:02x}"
    return Endpoint(site=site, network=network, mac=mac, vtep=f"198.18.{ord(site) - 96}.{10 + compute}",
                    ips=(f"198.19.10.{n}",), port_id=f"{site}-{network}-{n}", **kw)


def site(name, endpoints=(), nets=("red", "blue")):
    return SiteSnapshot(Site(name, GATEWAYS[name]), networks(name, nets), tuple(endpoints))

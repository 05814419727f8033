import pytest

from gwagent import cli
from gwagent.control.sources import FileInventory, SourceError, Throttled


def write(tmp_path, text):
    path = tmp_path / "gw.conf"
    path.write_text(text)
    return [str(path)]


NEUTRON = """
[gateway]
source = neutron
[neutron]
cloud = site-a
site_name = a
networks = red:5001,blue:5002
network_ids = red:11111111-0000-0000-0000-00000000000a,blue:22222222-0000-0000-0000-00000000000a
gateway_host = gw-a
gateway_tunnel_ip = 198.18.1.1
gateway_transit_ip = 198.18.0.1
peers = b
[neutron_peer_b]
cloud = site-b
network_ids = red:11111111-0000-0000-0000-00000000000b,blue:22222222-0000-0000-0000-00000000000b
gateway_host = gw-b
gateway_tunnel_ip = 198.18.2.1
gateway_transit_ip = 198.18.0.2
"""


def test_neutron_sources_from_config(tmp_path):
    local, peers, registry = cli.build_sources(cli.load_conf(write(tmp_path, NEUTRON)))
    assert registry.site.name == "a" and registry.networks == {"red": 5001, "blue": 5002}
    assert registry.site.gateway.tunnel_ip == "198.18.1.1"
    assert local.source is registry
    (peer,) = peers
    assert peer.source.site.gateway.transit_ip == "198.18.0.2"
    assert peer.source.client.cloud == "site-b"
    assert peer.source.network_ids["red"] == "11111111-0000-0000-0000-00000000000b"


def test_neutron_networks_need_their_ids_never_a_name(tmp_path):
    text = NEUTRON.replace("red:11111111-0000-0000-0000-00000000000b,", "", 1)
    with pytest.raises(SystemExit) as info:
        cli.build_sources(cli.load_conf(write(tmp_path, text)))
    assert "[neutron_peer_b] network_ids" in str(info.value) and "red" in str(info.value)


@pytest.mark.parametrize("broken, message", [
    ("gateway_transit_ip = 198.18.0.2", "[neutron_peer_b] needs gateway_transit_ip"),
    ("networks = red:5001,blue:5002", "site_name and networks are required"),
    ("gateway_tunnel_ip = 198.18.1.1", "gateway.tunnel_ip"),
])
def test_neutron_config_errors_say_which_option(tmp_path, broken, message):
    if "tunnel" in broken:
        text = NEUTRON.replace(broken, "gateway_tunnel_ip = 198.18.1.999", 1)
    else:
        text = NEUTRON.replace(broken, "", 1)
    with pytest.raises(SystemExit) as info:
        cli.build_sources(cli.load_conf(write(tmp_path, text)))
    assert message in str(info.value)


def test_file_sources_from_config(tmp_path):
    conf = cli.load_conf(write(tmp_path, f"[gateway]\nsite_file = {tmp_path}/a.yaml\n"
                                         f"peer_site_files = {tmp_path}/b.yaml\n"))
    local, peers, registry = cli.build_sources(conf)
    assert isinstance(local, FileInventory) and local is registry and len(peers) == 1


class Counting:
    def __init__(self):
        self.asked, self.fail = 0, False

    def version(self):
        self.asked += 1
        if self.fail:
            raise SourceError("down")
        return self.asked


def test_throttled_version_asks_at_most_every_interval():
    now = [0.0]
    src = Counting()
    t = Throttled(src, 0.5, clock=lambda: now[0])
    assert t.version() == 1 and t.version() == 1
    now[0] = 0.6
    assert t.version() == 2
    src.fail = True
    now[0] = 1.2
    assert t.version() is None   # unknown: the agent re-reads and reports the error

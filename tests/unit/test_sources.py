import json

import pytest
import yaml

from gwagent.control.sources import FileInventory, SourceError, parse_site, site_to_dict
from gwagent.model import Desired, ValidationError

from builders import endpoint, site

EXAMPLE = """
site: a
gateway: {host: gw-a, tunnel_ip: 198.18.1.1, transit_ip: 198.18.200.1}
networks:
  - {name: red, segmentation_id: 1001, transit_vni: 5001}
endpoints:
  - port_id: vm1
    network: red
    mac: fa:16:3e:00:00:01
    ips: [198.19.10.11]
    vtep: 198.18.1.11
    allowed_address_pairs:
      - {ip_address: 198.19.10.100, mac_address: fa:16:3e:00:00:aa}
"""


def test_example_parses():
    snap = parse_site(yaml.safe_load(EXAMPLE))
    (ep,) = snap.endpoints
    assert ep.macs == ("fa:16:3e:00:00:01", "fa:16:3e:00:00:aa")
    assert snap.site.gateway.tunnel_ip == "198.18.1.1"


def test_round_trip():
    snap = site("a", [endpoint("a", "red", 1), endpoint("a", "blue", 2)])
    assert parse_site(site_to_dict(snap)) == snap


@pytest.mark.parametrize("change, field", [
    (lambda d: d.pop("gateway"), "gateway"),
    (lambda d: d["networks"][0].pop("transit_vni"), "networks[0].transit_vni"),
    (lambda d: d["networks"][0].update(segmentation_id=0), "network[red].segmentation_id"),
])
def test_bad_operator_configuration_rejects_the_site_naming_the_field(change, field):
    data = yaml.safe_load(EXAMPLE)
    change(data)
    with pytest.raises(ValidationError) as info:
        parse_site(data)
    assert info.value.field == field


@pytest.mark.parametrize("change, words", [
    (lambda ep: ep.update(mac="nope"), "endpoint[vm1].mac"),
    (lambda ep: ep.update(colour="red"), "'colour': unknown key"),
    (lambda ep: ep.pop("vtep"), "endpoints[0].vtep"),
])
def test_a_malformed_endpoint_is_left_out_with_its_reason_and_the_rest_stands(change, words):
    data = yaml.safe_load(EXAMPLE)
    good = dict(data["endpoints"][0], port_id="vm2", mac="fa:16:3e:00:00:02")
    change(data["endpoints"][0])
    data["endpoints"].append(good)
    snap = parse_site(data)
    assert [ep.port_id for ep in snap.endpoints] == ["vm2"]
    (rej,) = snap.rejected
    assert rej.port_id == "vm1" and words in rej.reason


def test_file_errors_say_which_file(tmp_path):
    path = tmp_path / "a.yaml"
    with pytest.raises(SourceError, match="cannot read"):
        FileInventory(path).snapshot()
    path.write_text("site: [unclosed")
    with pytest.raises(SourceError, match="not valid YAML"):
        FileInventory(path).snapshot()
    path.write_text(EXAMPLE.replace("1001", "99999999"))
    with pytest.raises(ValidationError) as info:
        FileInventory(path).snapshot()
    assert str(path) in info.value.field and info.value.value == 99999999


def test_version_changes_with_content(tmp_path):
    path = tmp_path / "a.yaml"
    path.write_text(EXAMPLE)
    inv = FileInventory(path)
    v1 = inv.version()
    path.write_text(EXAMPLE + "\n# edited\n")
    assert inv.version() != v1


def test_registry_keeps_other_owners_and_updates_in_place(tmp_path):
    a = tmp_path / "a.yaml"
    a.write_text(EXAMPLE)
    inv = FileInventory(a)
    d = Desired(site("a"), (site("b", [endpoint("b", "red", 2), endpoint("b", "red", 3)]),))
    ports = list(d.remote_ports())
    foreign = ports[0].__class__(ports[0].origin, "198.18.1.99", "another-gw")
    inv.register(ports + [foreign])
    assert sorted(p.key for p in inv.remote_ports()) == sorted(p.key for p in ports)
    moved = d.__class__(site("a"), (site("b", [endpoint("b", "red", 2, compute=2)]),))
    inv.register(list(moved.remote_ports()))
    inv.unregister([ports[1]])
    mine = inv.remote_ports()
    assert [p.origin.vtep for p in mine] == ["198.18.2.12"]
    assert foreign in inv.all_remote_ports()
    assert json.loads(inv.registry_path.read_text())["remote_ports"]


def test_json_site_file_has_the_same_schema(tmp_path):
    snap = site("a", [endpoint("a", "red", 1)])
    path = tmp_path / "a.json"
    path.write_text(json.dumps(site_to_dict(snap)))
    assert FileInventory(path).snapshot() == snap
    path.write_text("{broken")
    with pytest.raises(SourceError, match="not valid JSON"):
        FileInventory(path).snapshot()

"""The registry's cache of owned remote ports, against a fake Neutron that
models what a real one does with the gateway's requests (ports kept by ID,
filters, a MAC used once per network) and one behaviour seen in the lab: a
bulk create that answers 500 after its ports were made (its rollback
failed), with no notification of them. After such a failed write the
registry must list again rather than trust its cache: else it retries
the ports as new, 409 after 409, and leaves them unbound for the next
active node to repair."""
from __future__ import annotations

import copy
import itertools

from gwagent.model import Endpoint, Gateway, RemotePort, Site
from gwagent.neutron.source import NeutronError, NeutronSite

NET = "net-red"


class FakeNeutron:
    """Ports, networks and subnets by ID; ``fail_after_create`` makes the
    next POST /ports create its ports, then answer 500."""

    def __init__(self):
        self.ports: dict[str, dict] = {}
        self.networks = {NET: {"id": NET, "name": "red", "project_id": "p",
                               "provider:network_type": "vxlan",
                               "provider:segmentation_id": 1001}}
        self.subnets = [{"network_id": NET, "cidr": "198.19.10.0/24"}]
        self.ids = itertools.count(1)
        self.fail_after_create = False
        self.writes = []

    def list(self, collection, **params):
        items = {"ports": list(self.ports.values()), "networks": list(self.networks.values()),
                 "subnets": self.subnets, "agents": []}[collection]
        for key, want in params.items():
            if key == "fields":
                continue
            want = want if isinstance(want, list) else [want]
            items = [i for i in items if i.get(key) in want]
        return copy.deepcopy(items)

    def _create(self, body):
        if any(p["mac_address"] == body["mac_address"] and p["network_id"] == body["network_id"]
               for p in self.ports.values()):
            raise NeutronError(409, f"The mac address {body['mac_address']} is in use.")
        port = dict(copy.deepcopy(body), id=f"port-{next(self.ids)}", revision_number=1,
                    **{"binding:vif_type": "ovs"})
        self.ports[port["id"]] = port
        return copy.deepcopy(port)

    def request(self, method, path, body=None, params=None, headers=None):
        self.writes.append((method, path))
        if method == "POST" and "ports" in body:
            made = [self._create(b) for b in body["ports"]]
            if self.fail_after_create:
                self.fail_after_create = False
                for p in made:
                    self.ports[p["id"]]["binding:vif_type"] = "binding_failed"
                raise NeutronError(500, "Request Failed: internal server error")
            return {"ports": made}
        if method == "POST":
            return {"port": self._create(body["port"])}
        pid = path.rsplit("/", 1)[1]
        if method == "DELETE":
            self.ports.pop(pid)
            return {}
        port = self.ports[pid]
        if method == "PUT":
            port.update(copy.deepcopy(body["port"]))
            port["revision_number"] += 1
            port["binding:vif_type"] = "ovs"  # ML2 binds it again
        return {"port": copy.deepcopy(port)}


class QuietFeed:
    """A live notification feed that hears nothing (what a failed bulk sends)."""
    ident = "quiet"

    def live(self):
        return True

    def take(self):
        return None

    def stop(self):
        pass


def remote(mac: str, port_id: str) -> RemotePort:
    origin = Endpoint(site="b", network="red", mac=mac, vtep="198.18.2.11",
                      ips=("198.19.10.21",), port_id=port_id)
    return RemotePort(origin, "198.18.1.1", "a-gw")


def test_after_a_bulk_create_that_failed_with_its_ports_made_the_registry_lists_again():
    neutron = FakeNeutron()
    site = Site("a", Gateway("a-gw", "198.18.1.1", "198.18.0.1"))
    reg = NeutronSite(neutron, site, {"red": 5001}, {"red": NET}, feed=QuietFeed(),
                      audit_interval=3600.0)
    reg.snapshot()
    assert reg.remote_ports() == []
    want = [remote("fa:16:3e:00:00:01", "b1"), remote("fa:16:3e:00:00:02", "b2")]
    neutron.fail_after_create = True
    errors = reg.register(want)
    assert set(errors) == {p.key for p in want}  # the gateway was told 500, port by port 409
    assert len(neutron.ports) == 2

    # The next sync: the ports are found, nothing is created twice, and the
    # ones Neutron left unbound are bound again.
    found = reg.remote_ports()
    assert {p.key for p in found} == {p.key for p in want}
    neutron.writes.clear()
    assert reg.repair_bindings() == 2
    assert reg.register([]) == {} and not any(m == "POST" for m, _ in neutron.writes)
    assert {p["binding:vif_type"] for p in neutron.ports.values()} == {"ovs"}

    # and once known, the cache serves again: no listing, no write
    neutron.writes.clear()
    listed = reg.reads["owned_full"]
    assert {p.key for p in reg.remote_ports()} == {p.key for p in want}
    assert reg.reads["owned_full"] == listed and neutron.writes == []


class HearingFeed(QuietFeed):
    """A live feed that hears what the test says it heard."""

    def __init__(self):
        self.heard = None

    def take(self):
        heard, self.heard = self.heard, None
        return heard


def test_a_port_heard_changed_makes_a_snapshot_that_says_what_changed():
    from gwagent.control.world import endpoint_changes
    from gwagent.neutron.notifications import Heard
    neutron, feed = FakeNeutron(), HearingFeed()
    neutron.list = _with_agent(neutron.list)
    for n in range(3):
        neutron._create({"network_id": NET, "mac_address": f"fa:16:3e:00:00:0{n}",
                         "binding:host_id": "cn1", "device_owner": "compute:x",
                         "fixed_ips": [{"ip_address": f"198.19.10.{n + 1}"}]})
    src = NeutronSite(neutron, Site("b", Gateway("b-gw", "198.18.2.1", "198.18.0.2")),
                      {"red": 5001}, {"red": NET}, feed=feed, audit_interval=3600.0)
    first = src.snapshot()
    assert len(first.endpoints) == 3 and first.change_since(None) is None

    # one port moved to another address, one deleted, one created: heard
    moved = next(iter(neutron.ports))
    neutron.ports[moved]["fixed_ips"] = [{"ip_address": "198.19.10.99"}]
    gone = list(neutron.ports)[1]
    del neutron.ports[gone]
    made = neutron._create({"network_id": NET, "mac_address": "fa:16:3e:00:00:09",
                            "binding:host_id": "cn1", "device_owner": "compute:x",
                            "fixed_ips": [{"ip_address": "198.19.10.9"}]})
    feed.heard = Heard()
    feed.heard.ports = {moved: (False, {"id": moved, "network_id": NET}),
                        gone: (True, {"id": gone, "network_id": NET}),
                        made["id"]: (False, {"id": made["id"], "network_id": NET})}
    second = src.snapshot()
    said = second.change_since(first)
    found = endpoint_changes(first.endpoints, second.endpoints)
    assert said is not None
    assert set(said[0]) == set(found[0]) and set(said[1]) == set(found[1])
    assert {ep.port_id for ep in said[0]} == {moved, gone}
    assert {ep.port_id for ep in said[1]} == {moved, made["id"]}

    # a full read (the audit) says nothing: the gateway compares
    src._full = "audit"
    assert src.snapshot().change_since(second) is None


def _with_agent(listing):
    def list_(collection, **params):
        if collection == "agents":
            return [{"host": "cn1", "alive": True,
                     "configurations": {"tunneling_ip": "198.18.2.11"}}]
        return listing(collection, **params)
    return list_


class PacedNeutron(FakeNeutron):
    """A Neutron whose API does ``per_port`` seconds of work a created port
    (on the test's clock), one request at a time, as the lab's one worker
    does; a request that takes longer than the client's read deadline
    still makes its ports, but the client sees a time-out."""

    timeout = (3.0, 10.0)

    def __init__(self, per_port: float):
        super().__init__()
        self.per_port, self.now, self.took = per_port, 0.0, []

    def request(self, method, path, body=None, params=None, headers=None):
        answer = super().request(method, path, body, params, headers)
        if method == "POST":
            n = len(body["ports"]) if "ports" in body else 1
            self.now += n * self.per_port
            self.took.append(n * self.per_port)
            if n * self.per_port > self.timeout[1]:
                from gwagent.control.sources import SourceError
                raise SourceError(f"Request to {path} timed out")
        return answer


def _registry(neutron):
    site = Site("a", Gateway("a-gw", "198.18.1.1", "198.18.0.1"))
    reg = NeutronSite(neutron, site, {"red": 5001}, {"red": NET}, feed=QuietFeed(),
                      audit_interval=3600.0, clock=lambda: neutron.now)
    reg.snapshot()
    return reg


def test_bulk_creates_follow_neutrons_pace_and_end_within_the_read_deadline():
    """1000 remote ports at Neutron's measured 0.12 s a port: no request
    outlasts the read deadline (a bulk of 250 took 30 s), and they are still
    written in bulk, not port by port."""
    neutron = PacedNeutron(0.12)
    reg = _registry(neutron)
    want = [remote(f"fa:16:3e:00:{n // 256:02x}:{n % 256:02x}", f"b{n}") for n in range(1000)]
    assert reg.register(want) == {}
    assert len(neutron.ports) == 1000
    assert max(neutron.took) <= 0.3 * neutron.timeout[1] + 0.12
    assert len(neutron.took) < 60


def test_a_bulk_create_that_timed_out_stops_the_call_and_shrinks_the_next():
    """Neutron slowed to 2 s a port: the first bulk times out (its ports
    made all the same); nothing more is sent in that call, every port not
    answered for is reported, and the next call sends one port at a time
    and finds the ones already made."""
    neutron = PacedNeutron(2.0)
    reg = _registry(neutron)
    want = [remote(f"fa:16:3e:00:01:{n:02x}", f"b{n}") for n in range(30)]
    errors = reg.register(want)
    assert len(neutron.took) == 1 and len(neutron.ports) == 10   # the first bulk, made
    assert set(errors) == {p.key for p in want}
    assert reg.bulk_now() == 1
    neutron.per_port = 0.12
    assert reg.register(want) == {}
    assert len(neutron.ports) == 30 and len({p["mac_address"] for p in neutron.ports.values()}) == 30

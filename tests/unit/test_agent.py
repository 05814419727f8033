import dataclasses
import json

import yaml

from gwagent.control.agent import Agent, Backoff
from gwagent.control.sources import FileInventory, site_to_dict
from gwagent.state import SITE, TRANSIT, IngressCounters

from builders import endpoint, site
from fakes import FakeDataplane


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def write(path, snap):
    path.write_text(yaml.safe_dump(site_to_dict(snap)))


def make(tmp_path, a_eps=(), b_eps=()):
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    write(a, site("a", a_eps))
    write(b, site("b", b_eps))
    clock, dp = Clock(), FakeDataplane()
    local = FileInventory(a)
    agent = Agent(local, [FileInventory(b)], local, dp, status_path=tmp_path / "status.json",
                  clock=clock, wall=clock, backoff_initial=1, backoff_max=8)
    return agent, dp, clock, a, b


def test_pass_programs_registers_and_reports(tmp_path):
    agent, dp, _, _, _ = make(tmp_path, [endpoint("a", "red", 1)],
                              [endpoint("b", "red", 2), endpoint("b", "blue", 3)])
    result = agent.run_pass("start")
    assert result.ok and result.registered == 2
    assert dp.observe().macs and agent.run_pass().ops == {}
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["site"] == "a" and status["endpoints"] == {"local": 1, "remote": 2}
    assert status["remote_ports_registered"] == 2 and status["last_error"] is None
    red = next(n for n in status["networks"] if n["name"] == "red")
    # a place per MAC, one flood destination per local VTEP and per peer
    assert red["entries"] == 1 + 1 + 1 + 1
    observed = dp.observe()
    assert status["entries_programmed"] == len(observed.macs) + len(observed.floods)
    assert status["backend"] == "linux"


def test_malformed_inventory_keeps_last_good_state(tmp_path):
    agent, dp, _, _, b = make(tmp_path, [endpoint("a", "red", 1)], [endpoint("b", "red", 2)])
    agent.run_pass()
    good = dp.observe()
    b.write_text(b.read_text().replace("transit_ip: 198.18.200.2", "transit_ip: 198.18.200.999"))
    result = agent.run_pass("inventory")
    assert not result.ok and "198.18.200.999" in agent.status()["last_error"]
    assert dp.observe() == good
    assert len(FileInventory(tmp_path / "a.yaml").remote_ports()) == 1
    write(b, site("b", [endpoint("b", "red", 2)]))
    assert agent.run_pass().ok and agent.status()["last_error"] is None


def test_bad_inventory_at_first_start_touches_nothing(tmp_path):
    agent, dp, _, a, _ = make(tmp_path)
    a.write_text("site: a\n")
    dp.kernel.link_add("gwa-br-9", "bridge")  # whatever is there stays
    before = dp.kernel.links()
    result = agent.run_pass("start")
    assert result.source_error and "gateway" in result.source_error
    assert dp.kernel.links() == before


def test_failed_item_is_retried_with_capped_backoff(tmp_path):
    agent, dp, clock, _, _ = make(tmp_path, [endpoint("a", "red", 1)], [endpoint("b", "blue", 2)])
    blue = "gwa-br-5002"
    dp.kernel.fail_devices.add(blue)
    first = agent.run_pass()
    assert not first.ok and any(blue in e for e in first.errors)
    assert dp.observe().network("red") is not None                 # the rest went on
    clock.now += 0.5
    assert agent.run_pass().deferred > 0                           # not yet due
    dp.kernel.fail_devices.clear()
    clock.now += 1
    assert agent.run_pass().ok
    assert agent.run_pass().ops == {}


def test_backoff_doubles_and_caps():
    b = Backoff(1, 8)
    assert [b.failed("k", 0) for _ in range(6)] == [1, 2, 4, 8, 8, 8]
    assert not b.ready("k", 7) and b.ready("k", 8)
    b.succeeded("k")
    assert b.ready("k", 0) and len(b) == 0


def test_endpoint_removed_at_peer_is_unregistered(tmp_path):
    agent, dp, _, _, b = make(tmp_path, [], [endpoint("b", "red", 2), endpoint("b", "red", 3)])
    agent.run_pass()
    write(b, site("b", [endpoint("b", "red", 3)]))
    result = agent.run_pass("inventory")
    assert result.unregistered == 1
    remaining = FileInventory(tmp_path / "a.yaml").remote_ports()
    assert [p.origin.port_id for p in remaining] == ["b-red-3"]
    assert endpoint("b", "red", 2).mac not in {e.mac for e in dp.observe().macs}


def test_malformed_own_site_file_keeps_registry_and_dataplane(tmp_path):
    agent, dp, _, a, _ = make(tmp_path, [endpoint("a", "red", 1)], [endpoint("b", "red", 2)])
    agent.run_pass()
    good = dp.observe()
    a.write_text(a.read_text().replace("198.18.1.1", "198.18.1.300"))
    result = agent.run_pass("inventory")
    assert "198.18.1.300" in result.source_error and not result.errors
    assert dp.observe() == good
    assert json.loads((tmp_path / "a.remote-ports.json").read_text())["remote_ports"]


class Exploding(FakeDataplane):
    """A backend whose observe raises once, as a driver bug would."""

    def __init__(self):
        super().__init__()
        self.explode = True

    def observe(self):
        if self.explode:
            self.explode = False
            raise RuntimeError("boom in observe")
        return super().observe()


def test_an_exception_in_the_backend_or_the_status_write_is_survived(tmp_path):
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    write(a, site("a", [endpoint("a", "red", 1)]))
    write(b, site("b", [endpoint("b", "red", 2)]))
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("a file where the status directory should be")
    clock, dp = Clock(), Exploding()
    local = FileInventory(a)
    agent = Agent(local, [FileInventory(b)], local, dp, status_path=blocked / "status.json",
                  clock=clock, wall=clock)
    first = agent.run_pass("start")          # observe raises, the status write fails
    assert not first.ok and any("boom in observe" in e for e in first.errors)
    clock.now += 1
    second = agent.run_pass("resync")        # and the next pass does the work
    assert second.ok and dp.observe().macs


class FilteredDataplane(FakeDataplane):
    """A fake dataplane with a model of the ingress filter: ``sent`` frames
    ((side, outer source)) are dropped and counted unless their source is
    admitted on that side."""

    def __init__(self):
        super().__init__()
        self.admission, self.sent = "never asked", []

    def admit(self, adm, keep=False):
        self.admission, self.kept = adm, keep
        counters = IngressCounters()
        if adm is None:
            return counters
        admitted = {side: sources for side, _, sources in adm.sides()}
        for side, src in self.sent:
            if src not in admitted[side]:
                counters.dropped[side] = counters.dropped.get(side, 0) + 1
                found = counters.offenders.setdefault(side, {})
                found[src] = found.get(src, 0) + 1
        return counters


def test_the_filter_admits_the_sites_vteps_and_its_peers_and_names_each_offender_once(
        tmp_path, caplog):
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    snap = site("a", [endpoint("a", "red", 1)])
    a.write_text(yaml.safe_dump({**site_to_dict(snap), "vteps": ["198.18.1.30"]}))
    write(b, site("b", [endpoint("b", "red", 2)]))
    dp, local = FilteredDataplane(), FileInventory(a)
    agent = Agent(local, [FileInventory(b)], local, dp, status_path=tmp_path / "status.json",
                  ingress_filter=True)
    assert agent.run_pass("start").ok
    adm = dp.admission
    # the endpoint's VTEP and the inventory's compute; the peer gateway
    assert adm.site_sources == {"198.18.1.11", "198.18.1.30"}
    assert adm.transit_sources == {"198.18.200.2"}
    assert (adm.site_ip, adm.transit_ip) == ("198.18.1.1", "198.18.200.1")
    dp.sent = [(TRANSIT, "198.18.200.99")] * 3 + [(SITE, "198.18.1.99"), (SITE, "198.18.1.30")]
    caplog.set_level("WARNING")
    for _ in range(2):
        assert agent.run_pass().ok
    status = json.loads((tmp_path / "status.json").read_text())["ingress"]
    assert status["dropped"] == {SITE: 1, TRANSIT: 3}
    assert status["offenders"] == {SITE: {"198.18.1.99": 1}, TRANSIT: {"198.18.200.99": 3}}
    lines = [r.getMessage() for r in caplog.records if "ingress filter" in r.getMessage()]
    assert lines == [
        "ingress filter: dropping VXLAN to the tunnel address from 198.18.1.99 "
        "(not a known VTEP of the site): 1 packets so far",
        "ingress filter: dropping VXLAN to the transit address from 198.18.200.99 "
        "(not a peer gateway): 3 packets so far"]
    # off: the backend is told to remove it, status says so
    agent.ingress_filter = False
    assert agent.run_pass().ok and dp.admission is None
    assert json.loads((tmp_path / "status.json").read_text())["ingress"] == {"enabled": False}


def test_metrics_count_passes_and_operations_and_read_the_state_at_scrape(tmp_path):
    """The agent's metrics (gwagent.metrics) in Prometheus' text format, as
    prometheus_client's own parser reads it."""
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families
    from gwagent.metrics import Metrics
    agent, _, clock, _, _ = make(tmp_path, [endpoint("a", "red", 1)], [endpoint("b", "red", 2)])
    metrics = Metrics()
    metrics.watch(agent)
    agent.metrics = metrics
    agent.run_pass("start")
    agent.run_pass("resync")
    metrics.requested("cloud-a", "GET", "200", 0.02)

    def scrape():
        text = generate_latest(metrics.registry).decode()
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for f in text_string_to_metric_families(text) for s in f.samples}
    got = scrape()
    assert got[("gwagent_passes_total", (("reason", "start"), ("result", "ok")))] == 1
    assert got[("gwagent_pass_duration_seconds_count", ())] == 2
    applied = {dict(k[1])["kind"]: v for k, v in got.items()
               if k[0] == "gwagent_operations_total"}
    assert applied["set"] == 2 and applied["ensure"] == 2   # red and blue
    status = agent.status()
    assert sum(v for k, v in got.items() if k[0] == "gwagent_entries_programmed") == \
        status["entries_programmed"]
    assert got[("gwagent_entries_programmed", (("network", "red"), ("side", "transit")))] == 2
    assert got[("gwagent_last_successful_pass_timestamp_seconds", ())] == clock()
    assert got[("gwagent_neutron_requests_total",
                (("cloud", "cloud-a"), ("method", "GET"), ("status", "200")))] == 1
    assert got[("gwagent_source_fresh", (("name", "a"), ("role", "local")))] == 1


def test_the_grafana_dashboard_shows_only_metrics_the_agent_exports(tmp_path):
    """tools/grafana/gwagent-dashboard.json: every gwagent_* series a panel
    asks for is one the agent serves, and every metric has a panel."""
    import pathlib
    import re
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families
    from gwagent.metrics import Metrics
    agent, _, _, _, _ = make(tmp_path, [endpoint("a", "red", 1)], [endpoint("b", "red", 2)])
    metrics = Metrics()
    metrics.watch(agent)
    agent.metrics = metrics
    agent.run_pass("start")
    metrics.requested("cloud-a", "GET", "200", 0.02)
    def family(name):
        return re.sub(r"_(total|bucket|count|sum|created)$", "", name)
    # every family the agent serves, samples or none yet (a counter of no drops)
    served = {family(f.name) for f in text_string_to_metric_families(
        generate_latest(metrics.registry).decode())}
    dash = json.loads((pathlib.Path(__file__).parents[2] / "tools/grafana/gwagent-dashboard.json")
                      .read_text())
    asked = {family(name) for panel in dash["panels"] for t in panel["targets"]
             for name in re.findall(r"gwagent_[a-z_]+", t["expr"])}
    assert asked == served, (asked - served, served - asked)


def test_the_registrar_writes_what_changed_and_repairs_what_someone_else_changed(tmp_path):
    eps = [endpoint("b", "red", n) for n in (2, 3, 4)]
    agent, _, _, _, b = make(tmp_path, [], eps)
    assert agent.run_pass("start").registered == 3
    registry = FileInventory(tmp_path / "a.yaml")

    moved = dataclasses.replace(eps[1], ips=("198.19.10.99",))
    write(b, site("b", [eps[0], moved, eps[2]]))
    result = agent.run_pass("inventory")
    assert (result.registered, result.unregistered) == (1, 0)
    assert {p.origin.port_id: p.origin.ips for p in registry.remote_ports()}["b-red-3"] == (
        "198.19.10.99",)

    # someone else deletes one of our ports: the registry's version moved,
    # so the next pass reads it whole and puts the port back
    path = tmp_path / "a.remote-ports.json"
    data = json.loads(path.read_text())
    data["remote_ports"] = [p for p in data["remote_ports"] if p["origin"]["port_id"] != "b-red-2"]
    path.write_text(json.dumps(data))
    result = agent.run_pass("resync")
    assert (result.registered, result.unregistered) == (1, 0)
    assert sorted(p.origin.port_id for p in registry.remote_ports()) == [
        "b-red-2", "b-red-3", "b-red-4"]
    assert agent.status()["remote_ports_registered"] == 3

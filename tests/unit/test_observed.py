"""The observed dataplane between audits (gwagent.control.observed), through
the agent on the kernel model: a quiet pass reads and plans nothing; a
change the backend reports is repaired at once without a read; a change
nobody reported waits for the audit, which repairs it and counts it; lost
reports force a read at once."""
import errno

import yaml

from gwagent.control.agent import Agent
from gwagent.control.sources import FileInventory, site_to_dict
from gwagent.dataplane import Changes
from gwagent.dataplane.netlink import NetlinkError

from builders import endpoint, site
from fakes import FakeDataplane


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


class Reporting(FakeDataplane):
    """The kernel model, counting full reads, with what a change report
    would say (``report``) handed over as the real backends do."""

    def __init__(self, clock):
        super().__init__(clock=clock)
        self.reads = 0
        self.report = Changes()

    def observe(self):
        self.reads += 1
        return super().observe()

    def take_changes(self):
        out, self.report = self.report, Changes()
        return out


def make(tmp_path):
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text(yaml.safe_dump(site_to_dict(site("a", [endpoint("a", "red", 1)]))))
    b.write_text(yaml.safe_dump(site_to_dict(site(
        "b", [endpoint("b", "red", 2), endpoint("b", "blue", 3)]))))
    clock = Clock()
    dp = Reporting(clock)
    local = FileInventory(a)
    agent = Agent(local, [FileInventory(b)], local, dp, clock=clock, wall=clock,
                  audit_interval=60.0)
    assert agent.run_pass("start").ok
    return agent, dp, clock


def remote_mac(agent):
    entry = min(m for m in agent.desired_dp.macs if m.side == "transit")
    return entry


def drop_by_hand(dp, entry):
    """An operator's mistake: the MAC's VXLAN entry deleted in the kernel."""
    vni = next(n.transit_vni for n in dp.observe().networks if n.name == entry.network)
    dp.reads -= 1
    del dp.kernel.vxlan_fdb[(f"gwa-vt-{vni}", entry.mac)]


def test_a_quiet_pass_reads_and_plans_nothing(tmp_path):
    agent, dp, clock = make(tmp_path)
    reads = dp.reads
    for _ in range(5):
        clock.now += 10
        assert agent.run_pass().ops == {}
    assert dp.reads == reads
    assert agent.status()["dataplane_audit"]["audits"] == reads


def test_a_reported_change_is_repaired_at_once_without_a_read(tmp_path):
    agent, dp, clock = make(tmp_path)
    entry = remote_mac(agent)
    drop_by_hand(dp, entry)
    reads = dp.reads
    dp.report.macs.add((entry.network, entry.mac))
    assert agent.run_pass("kernel").ops == {"set": 1}
    assert dp.reads == reads and entry in dp.observe().macs
    audit = agent.status()["dataplane_audit"]
    assert audit["foreign_changes"] == 1 and audit["drift"] == 0


def test_an_unreported_change_waits_for_the_audit_which_repairs_and_counts_it(tmp_path):
    agent, dp, clock = make(tmp_path)
    entry = remote_mac(agent)
    drop_by_hand(dp, entry)
    clock.now += 30
    assert agent.run_pass().ops == {}            # nothing said it: not known yet
    assert entry not in dp.observe().macs
    clock.now += 31                              # the audit is due
    assert agent.run_pass().ops == {"set": 1}
    assert entry in dp.observe().macs
    audit = agent.status()["dataplane_audit"]
    assert audit["drift"] == 2 and audit["last_dump_reason"] == "audit"  # broken, and where


def test_lost_reports_force_a_read_at_once(tmp_path):
    agent, dp, clock = make(tmp_path)
    entry = remote_mac(agent)
    drop_by_hand(dp, entry)
    reads = dp.reads
    dp.report.lose("kernel events lost (socket overflow)")
    assert agent.run_pass("kernel").ops == {"set": 1}
    assert dp.reads == reads + 1
    audit = agent.status()["dataplane_audit"]
    assert audit["events_lost"] == 1
    assert audit["last_dump_reason"] == "kernel events lost (socket overflow)"


def test_a_failed_write_is_read_again_and_retried(tmp_path):
    agent, dp, clock = make(tmp_path)
    entry = remote_mac(agent)
    drop_by_hand(dp, entry)
    dp.report.macs.add((entry.network, entry.mac))
    dp.kernel.fdb_bulk = lambda reqs: {i: NetlinkError(errno.EBUSY, "busy")
                                       for i in range(len(reqs))}  # the kernel refuses
    assert agent.run_pass("kernel").failed == {"set": 1}
    del dp.kernel.fdb_bulk
    reads = dp.reads
    clock.now += 10                              # past the retry's backoff
    assert agent.run_pass().ops == {"set": 1}
    assert dp.reads == reads + 1 and entry in dp.observe().macs


def test_status_says_what_the_audits_found(tmp_path):
    from gwagent.cli import format_status
    agent, dp, clock = make(tmp_path)
    drop_by_hand(dp, remote_mac(agent))
    clock.now += 61
    agent.run_pass()
    text = format_status(agent.status(), None)
    line = next(x for x in text.splitlines() if x.startswith("dataplane:"))
    assert "2 full reads" in line and "(audit)" in line and "every 60s" in line
    assert "drift found 2 (changed with no event seen" in line


def test_an_audited_set_written_whole_is_read_only_when_its_audit_is_due():
    """The MAC guard's members (a million at scale, minutes to read on
    Linux): made whole, they are known as written until the audit timer,
    which starts at that write; a write on top keeps the timer; an audit
    that finds other than what was written counts the drift; forget() reads
    at the next look."""
    from gwagent.dataplane import AuditedSet
    clock, there, reads = Clock(), {"a", "b"}, []

    def read():
        reads.append(clock.now)
        return set(there)
    audited = AuditedSet("test set", interval=60.0, clock=clock)
    audited.wrote({"a", "b"})                  # the container made whole
    clock.now += 59
    assert audited.have(read) == {"a", "b"} and reads == []
    audited.wrote({"a", "b", "c"})             # added on top of what was there
    there.add("c")
    clock.now += 1
    assert audited.have(read) == {"a", "b", "c"} and reads == [160.0]
    there.discard("a")                         # behind the agent's back
    clock.now += 30
    assert audited.have(read) == {"a", "b", "c"} and audited.drift == 0
    clock.now += 30
    assert audited.have(read) == {"b", "c"} and audited.drift == 1
    audited.forget()
    assert audited.have(read) == {"b", "c"} and reads == [160.0, 220.0, 220.0]

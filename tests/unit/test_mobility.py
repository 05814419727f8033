"""Mobile MACs: the table's decisions, with injected time, and the plans
that follow them (on the model of the kernel dataplane, which forwards)."""
import pytest

from gwagent.control.agent import Agent
from gwagent.control.mobility import MobilityTable
from gwagent.model import AddressPair, Desired
from gwagent.state import (SITE, TRANSIT, Guard, Location, MobileSpec, desired_dataplane,
                           gateway_mobile, guards, static_dataplane)

from builders import endpoint, site
from fakes import FakeDataplane

VMAC = "00:00:5e:00:01:01"
PAIR = (AddressPair("198.19.10.100", VMAC),)
A1 = Location(SITE, "198.18.1.11")
A2 = Location(SITE, "198.18.1.12")
B = Location(TRANSIT, "198.18.200.2")
ROGUE = Location(SITE, "198.18.1.99")
KEY = ("red", VMAC)


def spec(*cands, home=None):
    return MobileSpec("red", VMAC, frozenset(cands), home)


def table(**kw):
    t = MobilityTable(**kw)
    t.update({KEY: spec(A1, B)}, 0.0)
    return t


def test_a_claim_from_a_candidate_moves_and_counts_a_sequence():
    t = table()
    d = t.claim(KEY, B, 1.0)
    assert (d.outcome, d.location, d.previous, d.seq) == ("moved", B, None, 1)
    assert t.claim(KEY, B, 1.1).outcome == "same"
    d = t.claim(KEY, A1, 2.0)
    assert (d.outcome, d.previous, d.seq) == ("moved", B, 2)
    assert t.locations() == {KEY: A1}


def test_a_claim_from_elsewhere_moves_nothing_and_is_counted():
    t = table()
    t.claim(KEY, A1, 1.0)
    d = t.claim(KEY, ROGUE, 2.0)
    assert d.outcome == "refused" and t.locations() == {KEY: A1} and t.seq(KEY) == 1
    (row,) = t.status(2.0)
    assert row["refused"] == {ROGUE.vtep: 1}


def test_a_flood_of_rogue_frames_is_suppressed_in_the_filter():
    t = table()
    for i in range(25):
        t.claim(KEY, ROGUE, 5.0 + i * 0.001)
    ((_, exclude),) = t.watches()
    assert ROGUE.vtep in exclude
    t.tick(20.0)
    assert t.watches() == [(KEY, ())]


def test_watches_leave_out_the_current_location():
    t = table()
    assert t.watches() == [(KEY, ())]
    t.claim(KEY, B, 1.0)
    assert t.watches() == [(KEY, (B.vtep,))]


def test_flapping_freezes_the_mac_raises_an_alarm_and_recovers_after_the_hold():
    t = table(max_moves=5, window=180, hold=30)
    where = [B, A1, B, A1, B]      # first sighting, then four moves
    for i, loc in enumerate(where):
        assert t.claim(KEY, loc, 10.0 + i).outcome == "moved"
    fifth = t.claim(KEY, A1, 15.0)
    assert fifth.outcome == "moved" and fifth.alarm
    assert t.claim(KEY, B, 16.0).outcome == "frozen"
    assert t.locations() == {KEY: A1}
    assert t.watches() == []                      # its frames no longer reach us
    (row,) = t.status(16.0)
    assert row["frozen"] and row["claims_while_frozen"] == 1
    t.tick(45.1)
    d = t.claim(KEY, B, 45.2)
    assert d.outcome == "moved" and not d.alarm and t.seq(KEY) == 7


def test_moves_outside_the_window_do_not_count():
    t = table(max_moves=3, window=10, hold=30)
    for i in range(6):
        assert not t.claim(KEY, (B, A1)[i % 2], i * 6.0).alarm


def test_losing_the_current_candidate_sends_the_mac_home():
    t = table()
    t.claim(KEY, B, 1.0)
    changed = t.update({KEY: spec(A1, A2)}, 2.0)
    assert changed == [KEY] and t.locations() == {KEY: None} and t.seq(KEY) == 2


def desired(a_eps=(), b_eps=()):
    return Desired(site("a", a_eps), (site("b", b_eps),))


def vrrp_pair():
    return desired([endpoint("a", "red", 1, allowed_address_pairs=PAIR)],
                   [endpoint("b", "red", 2, allowed_address_pairs=PAIR)])


def test_gateway_sees_candidates_as_locations():
    (s,) = gateway_mobile(vrrp_pair()).values()
    assert s.candidates == {A1, B} and s.home is None


def test_two_claimants_behind_one_peer_are_not_mobile_here():
    d = desired([], [endpoint("b", "red", 2, allowed_address_pairs=PAIR),
                     endpoint("b", "red", 3, compute=2, allowed_address_pairs=PAIR)])
    assert gateway_mobile(d) == {}
    dp = desired_dataplane(d)
    assert any(e.mac == VMAC and e.vtep == B.vtep for e in dp.macs)


def entries_for(dp, mac):
    return {(e.side, e.vtep) for e in dp.macs if e.mac == mac}


def test_an_unlocated_virtual_mac_has_no_entry_and_floods():
    dp = FakeDataplane()
    d = vrrp_pair()
    dp.apply(__import__("gwagent.control.planner", fromlist=["plan"]).plan(
        desired_dataplane(d), dp.observe()))
    assert entries_for(dp.observe(), VMAC) == set()
    # a frame for it from a local compute floods to the peer gateway
    assert dp.forward("gwa-vl-5001", VMAC) == {B.vtep}


def test_the_mac_follows_its_location_on_both_sides():
    d = vrrp_pair()
    at_b = desired_dataplane(d, {KEY: B})
    assert entries_for(at_b, VMAC) == {(TRANSIT, B.vtep)}
    at_a = desired_dataplane(d, {KEY: A1})
    assert entries_for(at_a, VMAC) == {(SITE, A1.vtep)}


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


class Static:
    """A site source that says the same thing every time."""

    def __init__(self, snap):
        self.snap = snap

    def snapshot(self):
        return self.snap

    def version(self):
        return 1


def agent_for(d):
    clock, dp = Clock(), FakeDataplane()
    agent = Agent(Static(d.local), [Static(p) for p in d.peers], None, dp, clock=clock,
                  wall=clock)
    return agent, dp, clock


def move(agent, where):
    with agent.lock:
        decision = agent.mobility.claim(KEY, where, agent.clock())
        assert decision.outcome == "moved"
        assert agent.apply_move(decision) == []


def test_a_move_is_applied_at_once_and_the_next_pass_keeps_it():
    d = vrrp_pair()
    agent, dp, _ = agent_for(d)
    agent.run_pass("start")
    move(agent, B)
    assert dp.forward("gwa-vl-5001", VMAC) == {B.vtep}
    assert agent.run_pass("resync").ops == {}      # nothing to undo
    move(agent, A1)
    assert dp.forward("gwa-vt-5001", VMAC) == {A1.vtep}
    assert agent.run_pass("resync").ops == {}


def test_go_to_b_and_back_to_a_and_nothing_else_changed():
    d = vrrp_pair()
    agent, dp, _ = agent_for(d)
    agent.run_pass("start")
    move(agent, A1)
    before = dp.observe()
    move(agent, B)
    move(agent, A1)
    assert dp.observe() == before


def test_a_plan_made_before_a_move_is_not_applied_over_it(monkeypatch):
    from gwagent.control import agent as agent_mod
    d = vrrp_pair()
    agent, dp, _ = agent_for(d)
    agent.run_pass("start")
    move(agent, A1)
    # someone deletes the entries; a pass plans their repair at A1 ...
    dp.kernel.vxlan_fdb.clear()
    dp.kernel.bridge_fdb = {k: v for k, v in dp.kernel.bridge_fdb.items() if k[1] != VMAC}
    real_plan = agent_mod.planner.plan
    moved = []

    def plan_then_move(desired, observed):
        ops = real_plan(desired, observed)
        if not moved:
            moved.append(True)
            move(agent, B)             # ... but the MAC moves meanwhile
        return ops
    monkeypatch.setattr(agent_mod.planner, "plan", plan_then_move)
    agent.run_pass("kernel")
    monkeypatch.setattr(agent_mod.planner, "plan", real_plan)
    assert dp.forward("gwa-vl-5001", VMAC) == {B.vtep}
    assert agent.run_pass("resync").ops == {}


@pytest.mark.parametrize("where", [A1, B])
def test_status_shows_where_and_the_sequence(where):
    agent, _, _ = agent_for(vrrp_pair())
    agent.run_pass("start")
    move(agent, where)
    (row,) = agent.status()["mobile_macs"]
    assert row["location"] == {"side": where.side, "vtep": where.vtep} and row["seq"] == 1


def test_guards_keep_each_side_to_its_own_macs_and_a_mobile_mac_to_its_candidates():
    """No MAC hijack (state.guards): an endpoint's MAC may not come from the
    other side; the VRRP pair's virtual MAC may come from both sides, from
    its candidates only where the backend sees the outer source, and moves
    change no guard."""
    d = vrrp_pair()
    mobile = gateway_mobile(d)
    static = static_dataplane(d, mobile)
    by_source = guards(static, mobile)
    plain = {g for g in by_source if g.mac != VMAC}
    assert plain == {Guard(m.network, m.mac, TRANSIT if m.side == SITE else SITE)
                     for m in static.macs}
    assert {g for g in by_source if g.mac == VMAC} == {
        Guard("red", VMAC, SITE, (A1.vtep,)), Guard("red", VMAC, TRANSIT, (B.vtep,))}
    # inner frames only (Linux): the side of a candidate is open to it
    assert guards(static, mobile, by_source=False) == plain
    # claimants on one side only: the other side may not send it
    one_side = {KEY: spec(A1, A2)}
    assert {g for g in guards(static, one_side) if g.mac == VMAC} == {
        Guard("red", VMAC, TRANSIT), Guard("red", VMAC, SITE, (A1.vtep, A2.vtep))}
    assert {g for g in guards(static, one_side, by_source=False) if g.mac == VMAC} == {
        Guard("red", VMAC, TRANSIT)}

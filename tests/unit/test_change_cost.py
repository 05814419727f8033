"""A change costs work proportional to the change, not to the world: the
sets with an element per MAC of the world (the static dataplane's MACs,
the guards, a backend's guard members) are changed, never copied or walked,
by a source's change and by a mobile MAC's move (gwagent.hotpath.ChangedSet).
Counted, not timed: every walk of a ChangedSet (made whole, iterated) is
seen."""
import collections
import dataclasses

import pytest

from builders import endpoint, site
from gwagent.control.agent import Agent
from gwagent.control.world import World
from gwagent.hotpath import ChangedSet
from gwagent.model import AddressPair, Desired, Endpoint, SiteSnapshot
from gwagent.openflow.backend import OpenFlowBackend
from gwagent.state import SITE, TRANSIT, Location, desired_dataplane, gateway_mobile, guards

from test_openflow import FakeBridge, FakeSwitch


@pytest.fixture
def walks(monkeypatch):
    """The sizes of the ChangedSets walked whole (made whole or iterated)."""
    seen = []
    real_whole, real_iter = ChangedSet.whole, ChangedSet.__iter__

    def whole(self):
        if not isinstance(self._of, frozenset):
            seen.append(len(self))
        return real_whole(self)

    def iterate(self):
        seen.append(len(self))
        return real_iter(self)
    monkeypatch.setattr(ChangedSet, "whole", whole)
    monkeypatch.setattr(ChangedSet, "__iter__", iterate)
    return seen


def test_a_changed_set_is_its_changes_and_never_changes_under_its_holder():
    base = ChangedSet(range(10_000))
    one = base.changed({3}, {-1})
    two = one.changed({-1, 4}, {-2})
    assert (len(one), len(two)) == (10_000, 9_999)
    assert isinstance(two._of, tuple) and two._of[0] is one    # a change, not a copy
    assert two.whole() == (frozenset(range(10_000)) - {3, 4}) | {-2}
    assert one.whole() == (frozenset(range(10_000)) - {3}) | {-1}   # what its holder had
    assert base.whole() == frozenset(range(10_000))
    assert isinstance(two._of, frozenset)     # made whole, it lets go of the changes
    assert one.changed((), ()) is one        # no change: the same value (version)


def test_changes_kept_are_made_whole_once_they_outweigh_the_set(walks):
    s, n = ChangedSet(range(100_000)), 0
    while not walks:
        s, n = s.changed((), {-n - 1}), n + 1
    # a copy per an eighth of the set changed, and the chain let go
    assert 100_000 // ChangedSet.SLACK < n < 2 * 100_000 // ChangedSet.SLACK
    assert walks == [len(s)] and isinstance(s._of, frozenset)


def _big_world(n):
    eps = [Endpoint("b", "red", f"fa:16:3e:{i >> 16:02x}:{i >> 8 & 255:02x}:{i & 255:02x}",
                    "198.18.2.11", port_id=f"p{i}") for i in range(n)]
    peer = site("b", eps)
    world = World(guard=True)
    world.update(site("a", [endpoint("a", "red", 1)]), (peer,))
    return world, peer


def test_one_endpoint_more_in_a_world_of_100k_touches_no_big_set(walks):
    world, peer = _big_world(100_000)
    local = world.desired.local
    static, guard_set = world.static, world.guards
    assert len(static.macs) == 100_001 and len(guard_set) == 100_001
    walks.clear()
    new = endpoint("b", "blue", 7)
    change = world.update(local, (SiteSnapshot.after(
        peer, peer.networks, peer.endpoints + (new,), (), (new,)),))
    assert not change.full and walks == []        # nothing walked, nothing copied
    # the new values are the old ones changed by one element, by identity
    assert world.static.macs._of[0] is static.macs and len(world.static.macs) == 100_002
    assert world.guards._of[0] is guard_set
    assert world.guard_change[0] is guard_set and len(world.guard_change[2]) == 1
    assert world.static.floods is static.floods   # no flood changed: not even those copied


def test_while_an_endpoint_is_left_out_a_site_that_did_not_change_is_not_filtered_again():
    # b and c both claim the same MAC as a port's own: c's is left out, and
    # the desired state holds c without it
    clash = endpoint("b", "red", 1)
    theirs = dataclasses.replace(endpoint("c", "red", 1), mac=clash.mac)
    b = site("b", [clash, endpoint("b", "red", 2)])
    c = site("c", [theirs, *(endpoint("c", "red", i) for i in range(2, 50))])
    world = World()
    world.update(site("a", [endpoint("a", "red", 1)]), (b, c))
    assert [r.site for r in world.desired.rejected] == ["c"]
    before = world.desired.peers[1]
    assert theirs not in before.endpoints and len(before.endpoints) == 48
    new = endpoint("b", "blue", 3)
    world.update(world.desired.local, (SiteSnapshot.after(
        b, b.networks, b.endpoints + (new,), (), (new,)), c))
    assert world.desired.peers[1] is before        # c did not change: not walked again
    assert new in world.desired.peers[0].endpoints
    more = endpoint("c", "blue", 4)
    world.update(world.desired.local, (world.desired.peers[0], SiteSnapshot.after(
        c, c.networks, c.endpoints + (more,), (), (more,))))
    now = world.desired.peers[1]                   # c changed: filtered again
    assert more in now.endpoints and theirs not in now.endpoints and len(now.endpoints) == 49


VMAC = "02:00:5e:00:01:07"
PAIR = (AddressPair("198.19.10.250", VMAC),)


class Source:
    def __init__(self, snap):
        self.snap, self.ver = snap, 1

    def snapshot(self):
        return self.snap

    def version(self):
        return self.ver


def test_a_change_and_a_moves_pass_walk_no_big_set_on_openflow(walks):
    """A source's change and a mobile MAC's move through the agent, the MAC
    guard on, on the OpenFlow backend (its guard members followed by the
    change): nothing of the size of the world is walked."""
    local = site("a", [endpoint("a", "red", 1, allowed_address_pairs=PAIR)])
    remote = [dataclasses.replace(endpoint("b", "blue", 0), mac=f"fa:16:3e:00:{i >> 8:02x}:"
                                  f"{i & 255:02x}", port_id=f"p{i}") for i in range(3000)]
    remote.append(endpoint("b", "red", 2, allowed_address_pairs=PAIR))
    peer = Source(site("b", remote))
    clock = [100.0]
    backend = OpenFlowBackend(None, "", switch=FakeSwitch(), ovsdb_bridge=FakeBridge(),
                              clock=lambda: clock[0])
    agent = Agent(Source(local), [peer], None, backend, mac_guard=True,
                  clock=lambda: clock[0], wall=lambda: clock[0], audit_interval=3600.0)
    assert agent.run_pass("start").ok
    assert agent.run_pass("resync").ops == {}
    walks.clear()
    new = endpoint("b", "red", 9)
    snap = peer.snap
    peer.snap, peer.ver = SiteSnapshot.after(snap, snap.networks, snap.endpoints + (new,),
                                             (), (new,)), 2
    clock[0] += 1
    result = agent.run_pass("source")
    assert result.ok and result.ops == {"set": 1}
    key = ("red", VMAC)
    with agent.lock:   # the mobile MAC moves to the peer (the mobility worker's part)
        decision = agent.mobility.claim(key, Location(TRANSIT, "198.18.200.2"), clock[0])
        assert agent.apply_move(decision) == []
    clock[0] += 1
    assert agent.run_pass("resync").ok
    assert walks == []
    # and what was kept by changes is what the whole functions say
    d = Desired(local, (peer.snap,))
    mobile = gateway_mobile(d)
    assert agent.desired_dp == desired_dataplane(d, {key: Location(TRANSIT, "198.18.200.2")},
                                                 mobile)
    want = guards(desired_dataplane(d, {}, mobile), mobile)
    assert agent.guard_status["guards"] == len(want)
    assert backend._guard_want[2].whole() == want
    whole = agent.desired_dp
    assert agent.programmed() == collections.Counter(
        (e.network, e.side) for e in (*whole.macs, *whole.floods))


class FakeNft:
    """The gateway's nftables table as libnftables' JSON commands see it
    (the commands NftGuard sends): sets of elements, chains of rules."""

    def __init__(self):
        self.table = None   # {"sets": {name: set}, "chains": {name: [comment]}}

    def run(self, commands):
        out = []
        for command in commands:
            (verb, what), = command.items()
            (kind, obj), = what.items()
            if kind == "table":
                self.table = {"sets": {}, "chains": {}} if verb == "add" else None
                continue
            if self.table is None:
                raise OSError("No such file or directory")
            if verb == "list":
                if kind == "set":
                    out.append({"set": {"name": obj["name"], "elem": [
                        {"concat": list(e)} for e in self.table["sets"][obj["name"]]]}})
                else:
                    out += [{"rule": {"chain": obj["name"], "comment": c}}
                            for c in self.table["chains"][obj["name"]]]
            elif kind == "set":
                self.table["sets"][obj["name"]] = set()
            elif kind == "chain":
                self.table["chains"][obj["name"]] = []
            elif kind == "rule":
                self.table["chains"][obj["chain"]].append(obj.get("comment"))
            elif kind == "element":
                members = {tuple(e["concat"]) for e in obj["elem"]}
                if verb == "add":
                    self.table["sets"][obj["name"]] |= members
                else:
                    self.table["sets"][obj["name"]] -= members
        return out


def test_a_change_walks_no_big_set_in_the_linux_backends_guard(walks):
    """NftGuard follows the World's guards by their change: the members of
    one endpoint more are written, and nothing of the world is walked."""
    from gwagent.dataplane import AuditedSet
    from gwagent.dataplane.guard import NftGuard, elements
    world, peer = _big_world(20_000)
    nft = FakeNft()
    guard = NftGuard(nft.run, AuditedSet("guard", interval=3600.0, clock=lambda: 0.0))
    devices = {(net, side): f"gwa-{side[0]}-{net}" for net in ("red", "blue")
               for side in (SITE, TRANSIT)}
    guard.sync(world.guards, devices, "gwa-s-")
    assert nft.table["sets"]["guard"] == elements(world.guards.whole(), devices)
    guard.sync(world.guards, devices, "gwa-s-", world.guard_change)
    new = endpoint("b", "blue", 7)
    world.update(world.desired.local, (SiteSnapshot.after(
        peer, peer.networks, peer.endpoints + (new,), (), (new,)),))
    walks.clear()
    guard.sync(world.guards, devices, "gwa-s-", world.guard_change)
    assert walks == []
    assert nft.table["sets"]["guard"] == elements(world.guards.whole(), devices)
    assert ("gwa-s-blue", new.mac) in nft.table["sets"]["guard"]

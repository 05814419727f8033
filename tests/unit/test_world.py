"""The desired state kept by changes (gwagent.control.world) says, after
every change, what the whole functions say of the same snapshots: the
endpoints kept and left out, the mobile MACs, the dataplane and the guards."""
import collections
import dataclasses
import random

import pytest

from builders import endpoint, site
from gwagent.control.world import World, endpoint_changes
from gwagent.hotpath import difference, follow
from gwagent.model import AddressPair, Desired, SiteSnapshot, ValidationError
from gwagent.state import gateway_mobile, guards, static_dataplane


def _pool(rng: random.Random, tangled: bool) -> list:
    """Endpoints on several computes; ``tangled``: their MACs collide
    across sites (conflicts) and their pairs claim each other's MACs
    (mobile MACs)."""
    pool = []
    for name in "abc":
        for net in ("red", "blue"):
            for n in range(6):
                ep = endpoint(name, net, n, compute=rng.randint(1, 3))
                if not tangled:
                    pool.append(ep)
                    continue
                shared = f"fa:16:3e:00:00:{n % 3:02x}"     # the same MAC in every site
                if rng.random() < 0.3:
                    ep = dataclasses.replace(ep, mac=shared)
                if rng.random() < 0.4:
                    vip = f"fa:16:3e:00:01:{rng.randint(0, 3):02x}"
                    ep = dataclasses.replace(ep, allowed_address_pairs=(
                        AddressPair("198.19.99.1", vip),))
                if rng.random() < 0.2:   # another port's own MAC, taken over
                    ep = dataclasses.replace(ep, allowed_address_pairs=(
                        AddressPair("198.19.99.2", shared),))
                pool.append(ep)
    return pool


def _snapshot(name, eps, last, rng):
    """The site's snapshot; now and then from a source that says what
    changed since its last one (SiteSnapshot.after)."""
    if last is None or rng.random() < 0.3:
        return site(name, eps)
    before = {id(e) for e in last.endpoints}
    now = {id(e) for e in eps}
    return SiteSnapshot.after(last, last.networks, eps,
                              [e for e in last.endpoints if id(e) not in now],
                              [e for e in eps if id(e) not in before])


def _whole(local, peers, previous):
    desired = Desired(local, peers, previous=previous)
    mobile = gateway_mobile(desired)
    static = static_dataplane(desired, mobile)
    return desired, mobile, static


def _counts(desired, static):
    counts = {net.name: collections.Counter() for net in desired.networks}
    for ep in desired.local.endpoints:
        counts[ep.network]["local"] += 1
    for _, ep in desired.remote_endpoints():
        counts[ep.network]["remote"] += 1
    for m in (*static.macs, *static.floods):
        counts[m.network][m.side] += 1
    return {net: +c for net, c in counts.items()}


def _same(world, whole, by_source):
    desired, mobile, static = whole
    got = world.desired
    assert got.local.endpoints == desired.local.endpoints
    assert [p.endpoints for p in got.peers] == [p.endpoints for p in desired.peers]
    assert set(got.rejected) == set(desired.rejected)
    assert got.mobile == desired.mobile
    assert world.mobile == mobile
    assert world.static.state() == static
    assert len(world.static.macs) == len(static.macs)     # (kept by the changes)
    assert world.guards.whole() == guards(static, mobile, by_source)
    assert len(world.guards) == len(world.guards.whole())
    assert {net: +c for net, c in world.counts.items()} == _counts(desired, static)
    assert set(world.local_vteps) == {ep.vtep for ep in desired.local.endpoints}


@pytest.mark.parametrize("seed", range(16))
def test_every_change_gives_what_the_whole_functions_give(seed):
    rng = random.Random(seed)
    pool = _pool(rng, tangled=seed % 4 != 3)
    by_source = seed % 2 == 0
    world = World(guard=True, by_source=by_source)
    held = {name: [] for name in "abc"}
    previous = None
    changes = 0
    ports = {}
    last = {}
    for _ in range(60):
        name = rng.choice("abc")
        eps = held[name]
        roll = rng.random()
        if roll < 0.5 or not eps:
            eps.append(rng.choice([e for e in pool if e.site == name]))
        elif roll < 0.7:
            eps.pop(rng.randrange(len(eps)))
        elif roll < 0.85:   # a port moved to another compute
            i = rng.randrange(len(eps))
            eps[i] = dataclasses.replace(eps[i], vtep=f"198.18.9.{rng.randint(1, 3)}")
        else:               # the source read everything again: equal, not the same objects
            held[name] = eps = [dataclasses.replace(e) for e in eps]
        snaps = {n: _snapshot(n, held[n], last.get(n), rng) for n in "abc"}
        last = snaps
        peers = (snaps["b"],) if rng.random() < 0.1 else (snaps["b"], snaps["c"])
        whole = _whole(snaps["a"], peers, previous)
        before = world.guards
        change = world.update(snaps["a"], peers)
        changes += not change.full
        _same(world, whole, by_source)
        if world.guard_change is not None:   # what a backend follows (hotpath.follow)
            was, gone, came = world.guard_change
            assert was is before and gone <= was.whole() and not came & was.whole()
            assert (was.whole() - gone) | came == world.guards.whole()
            made, step = follow((was, was), world.guards, frozenset, changed=world.guard_change)
            assert made.whole() == world.guards.whole()
            assert difference(was, made, step) == (gone, came)
        taken = world.take_ports()
        assert (taken is None) == change.full
        if taken is None:  # everything: the whole function's
            ports = {p.key: p for p in whole[0].remote_ports()}
        for key, port in (taken or {}).items():
            if port is None:
                ports.pop(key, None)
            else:
                ports[key] = port
        assert ports == {p.key: p for p in whole[0].remote_ports()}
        previous = whole[0]
    assert changes > 30  # most updates went the incremental way


def test_a_change_recomputes_only_the_keys_it_touches():
    world = World(guard=True)
    eps = [endpoint("b", "red", n) for n in range(50)]
    assert world.update(site("a"), (site("b", eps),)).full
    new = endpoint("b", "blue", 7)
    change = world.update(site("a"), (site("b", eps + [new]),))
    assert not change.full
    assert change.macs == {("blue", new.mac)}
    assert any(m.mac == new.mac for m in world.static.macs)


def test_a_new_network_or_peer_is_a_full_change():
    world = World()
    world.update(site("a"), (site("b"),))
    assert world.update(site("a"), (site("b"), site("c"))).full
    assert world.update(site("a", nets=("red",)), (site("b"), site("c"))).full


def test_a_bad_configuration_leaves_the_world_as_it_was():
    world = World()
    eps = [endpoint("b", "red", 1)]
    world.update(site("a"), (site("b", eps),))
    before = world.static
    with pytest.raises(ValidationError):
        world.update(site("a"), (site("b", eps, nets=("blue",)),))
    assert world.static is before
    assert not world.update(site("a"), (site("b", eps),)).full


def test_endpoint_changes_by_identity_then_by_value():
    a, b, c = (endpoint("b", "red", n) for n in range(3))
    assert endpoint_changes((a, b), (a, b)) == ([], [], [])
    again = dataclasses.replace(b)
    gone, came, same = endpoint_changes((a, b), (a, again))
    assert (gone, came) == ([], []) and same[0][0] is b and same[0][1] is again
    assert endpoint_changes((a, b), (a, c)) == ([b], [c], [])


def test_follow_derives_a_set_from_its_last_by_what_changed():
    double = lambda xs: frozenset(2 * x for x in xs)  # noqa: E731
    old = frozenset(range(10))
    made, step = follow(None, old, double)
    assert made.whole() == double(old) and step is None
    new = (old - {3}) | {42}
    for changed in (None, (old, frozenset({3}), frozenset({42}))):
        now, step = follow((old, made), new, double, changed=changed)
        assert now.whole() == double(new) and len(now) == 10
        assert difference(made, now, step) == ({6}, {84})
    assert difference(frozenset({1}), now, step) == (frozenset({1}), now.whole())  # not that step
    assert follow((old, made), new, double, same=False)[0].whole() == double(new)

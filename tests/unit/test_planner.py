import random

from gwagent.control.planner import plan
from gwagent.model import AddressPair, Desired, Endpoint
from gwagent.state import FdbOp, NetworkOp, desired_dataplane

from builders import endpoint, site
from fakes import FakeDataplane


def state(a_eps=(), b_eps=(), c_eps=None, nets=("red", "blue")):
    peers = [site("b", b_eps, nets)]
    if c_eps is not None:
        peers.append(site("c", c_eps, nets))
    return desired_dataplane(Desired(site("a", a_eps, nets), tuple(peers)))


def converge(dp: FakeDataplane, desired):
    errors = dp.apply(plan(desired, dp.observe()))
    assert errors == []
    return dp


STATE_A = state([endpoint("a", "red", 1), endpoint("a", "blue", 1, compute=2)],
                [endpoint("b", "red", 2), endpoint("b", "blue", 3)])
STATE_B = state([endpoint("a", "red", 1, compute=2), endpoint("a", "red", 4)],
                [endpoint("b", "red", 2), endpoint("b", "red", 5)],
                c_eps=[endpoint("c", "blue", 6)])


def test_apply_yields_desired_and_second_plan_is_empty():
    dp = converge(FakeDataplane(), STATE_A)
    assert dp.observe() == STATE_A
    assert plan(STATE_A, dp.observe()) == []


def test_a_to_b_and_back_leaves_exactly_a():
    dp = converge(FakeDataplane(), STATE_A)
    before = (dict(dp.bridge_fdb), dict(dp.vxlan_fdb), set(dp.flood), dict(dp.networks))
    converge(dp, STATE_B)
    assert dp.observe() == STATE_B
    converge(dp, STATE_A)
    assert (dp.bridge_fdb, dp.vxlan_fdb, dp.flood, dp.networks) == before
    assert dp.foreign == {("eth0", "02:00:00:00:00:99")}


def test_random_walk_between_states_always_converges():
    rng = random.Random(7)
    pool = {s: [endpoint(s, net, n, compute=rng.randint(1, 3)) for net in ("red", "blue")
                for n in range(1, 12)] for s in "abc"}
    dp = FakeDataplane()
    for _ in range(40):
        pick = {s: rng.sample(pool[s], rng.randint(0, 8)) for s in "abc"}
        desired = state(pick["a"], pick["b"], pick["c"] if rng.random() < .5 else None)
        converge(dp, desired)
        assert dp.observe() == desired
        assert plan(desired, dp.observe()) == []


def test_remote_mac_goes_to_owning_gateway_and_floods_reach_every_peer():
    b2, c6 = endpoint("b", "red", 2), endpoint("c", "red", 6)
    desired = state([endpoint("a", "red", 1)], [b2], c_eps=[c6])
    dp = converge(FakeDataplane(), desired)
    red = next(n for n in dp.networks.values() if n.network == "red")
    assert dp.forward(red.site_side.name, b2.mac) == {"198.18.200.2"}
    assert dp.forward(red.site_side.name, c6.mac) == {"198.18.200.3"}
    # unknown unicast / broadcast from a compute goes to every peer gateway
    assert dp.forward(red.site_side.name, "ff:ff:ff:ff:ff:ff") == {"198.18.200.2", "198.18.200.3"}
    # a frame from a peer floods only to local VTEPs with ports, never back to peers
    assert dp.forward(red.transit_side.name, "ff:ff:ff:ff:ff:ff") == {"198.18.1.11"}


def test_move_is_a_replace_without_delete():
    old = state([endpoint("a", "red", 1, compute=1), endpoint("a", "red", 2, compute=1)])
    dp = converge(FakeDataplane(), old)
    new = state([endpoint("a", "red", 1, compute=2), endpoint("a", "red", 2, compute=1)])
    ops = plan(new, dp.observe())
    mac = endpoint("a", "red", 1).mac
    assert [op.action for op in ops if isinstance(op, FdbOp) and op.entry.mac == mac] == ["replace"]
    converge(dp, new)
    assert dp.observe() == new


def test_mac_moving_between_sites_switches_side():
    here = endpoint("a", "red", 1)
    there = Endpoint("b", "red", here.mac, "198.18.2.11", ips=here.ips, port_id="moved")
    dp = converge(FakeDataplane(), state([here]))
    converge(dp, state([], [there]))
    red = next(n for n in dp.networks.values() if n.network == "red")
    assert dp.forward(red.site_side.name, here.mac) == {"198.18.200.2"}


def test_address_pair_mac_is_forwarded_like_the_port():
    vip_mac = "fa:16:3e:99:99:99"
    vm = endpoint("b", "red", 2, allowed_address_pairs=(AddressPair("198.19.10.100", vip_mac),))
    dp = converge(FakeDataplane(), state([], [vm]))
    red = next(n for n in dp.networks.values() if n.network == "red")
    assert dp.forward(red.site_side.name, vip_mac) == {"198.18.200.2"}


def test_changed_device_is_recreated_and_refilled():
    dp = converge(FakeDataplane(), STATE_A)
    changed = state([endpoint("a", "red", 1), endpoint("a", "blue", 1, compute=2)],
                    [endpoint("b", "red", 2), endpoint("b", "blue", 3)])
    # someone recreated a device with another VNI: the observed network differs
    red = next(n for n in dp.networks.values() if n.network == "red")
    wrong = red.__class__(red.network, red.bridge, red.site_side.__class__(
        red.site_side.name, 4242, red.site_side.local_ip), red.transit_side)
    dp.networks[red.bridge] = wrong
    ops = plan(changed, dp.observe())
    assert NetworkOp("ensure", red) in ops
    converge(dp, changed)
    assert dp.observe() == changed


def test_removed_network_takes_its_entries_without_deletes():
    dp = converge(FakeDataplane(), STATE_A)
    only_red = state([endpoint("a", "red", 1)], [endpoint("b", "red", 2)], nets=("red",))
    ops = plan(only_red, dp.observe())
    blue = next(n for n in dp.networks.values() if n.network == "blue")
    assert not [op for op in ops if isinstance(op, FdbOp) and op.entry.dev in blue.names]
    assert NetworkOp("remove", blue) in ops
    converge(dp, only_red)
    assert dp.observe() == only_red


def test_plan_order_is_ensure_add_delete_remove():
    dp = converge(FakeDataplane(), STATE_A)
    ops = plan(STATE_B, dp.observe())
    rank = {"ensure": 0, "replace": 1, "append": 1, "delete": 2, "remove": 3}
    ranks = [rank[op.action] for op in ops]
    assert ranks == sorted(ranks)


def test_failed_device_leaves_the_rest_programmed():
    dp = FakeDataplane()
    blue = next(n for n in STATE_A.networks if n.network == "blue")
    dp.fail_devices.add(blue.bridge)
    errors = dp.apply(plan(STATE_A, dp.observe()))
    assert errors and all(blue.bridge in e.error or e.op.entry.dev in blue.names for e in errors)
    red = next(n for n in STATE_A.networks if n.network == "red")
    red_entries = {e for e in STATE_A.fdb if e.dev in red.names}
    assert red_entries <= dp.observe().fdb

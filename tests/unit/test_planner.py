import random

from gwagent.control.planner import plan
from gwagent.model import AddressPair, Desired, Endpoint
from gwagent.state import SITE, TRANSIT, MacEntry, MacOp, NetworkOp, desired_dataplane

from builders import endpoint, site
from fakes import FakeDataplane

VL, VT = "gwa-vl-{}".format, "gwa-vt-{}".format
RED, BLUE = 5001, 5002


def state(a_eps=(), b_eps=(), c_eps=None, nets=("red", "blue")):
    peers = [site("b", b_eps, nets)]
    if c_eps is not None:
        peers.append(site("c", c_eps, nets))
    return desired_dataplane(Desired(site("a", a_eps, nets), tuple(peers)))


def converge(dp: FakeDataplane, desired):
    errors = dp.apply(plan(desired, dp.observe()))
    assert errors == []
    return dp


def kernel_tables(dp):
    k = dp.kernel
    return (dict(k.bridge_fdb), {key: list(v) for key, v in k.vxlan_fdb.items()},
            dict(k.table))


STATE_A = state([endpoint("a", "red", 1), endpoint("a", "blue", 1, compute=2)],
                [endpoint("b", "red", 2), endpoint("b", "blue", 3)])
STATE_B = state([endpoint("a", "red", 1, compute=2), endpoint("a", "red", 4)],
                [endpoint("b", "red", 2), endpoint("b", "red", 5)],
                c_eps=[endpoint("c", "blue", 6)])


def test_apply_yields_desired_and_second_plan_is_empty():
    dp = converge(FakeDataplane(), STATE_A)
    assert dp.observe() == STATE_A
    assert plan(STATE_A, dp.observe()) == []


def test_a_mac_is_a_bridge_entry_and_a_vxlan_entry_on_its_side():
    b2 = endpoint("b", "red", 2)
    dp = converge(FakeDataplane(), state([], [b2], nets=("red",)))
    assert dp.kernel.bridge_fdb[("gwa-br-5001", b2.mac)] == VT(RED)
    assert dp.kernel.vxlan_fdb[(VT(RED), b2.mac)] == ["198.18.200.2"]


def test_a_to_b_and_back_leaves_exactly_a():
    dp = converge(FakeDataplane(), STATE_A)
    before = kernel_tables(dp)
    converge(dp, STATE_B)
    assert dp.observe() == STATE_B
    converge(dp, STATE_A)
    assert kernel_tables(dp) == before
    assert dp.kernel.foreign == {("eth0", "02:00:00:00:00:99")}
    assert dp.kernel.by_name("eth0") is not None


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
    assert dp.forward(VL(RED), b2.mac) == {"198.18.200.2"}
    assert dp.forward(VL(RED), c6.mac) == {"198.18.200.3"}
    # unknown unicast / broadcast from a compute goes to every peer gateway
    assert dp.forward(VL(RED), "ff:ff:ff:ff:ff:ff") == {"198.18.200.2", "198.18.200.3"}
    # a frame from a peer floods only to local VTEPs with ports, never back to peers
    assert dp.forward(VT(RED), "ff:ff:ff:ff:ff:ff") == {"198.18.1.11"}


def test_move_is_one_set_carrying_where_it_was():
    old = state([endpoint("a", "red", 1, compute=1), endpoint("a", "red", 2, compute=1)])
    dp = converge(FakeDataplane(), old)
    new = state([endpoint("a", "red", 1, compute=2), endpoint("a", "red", 2, compute=1)])
    ops = plan(new, dp.observe())
    mac = endpoint("a", "red", 1).mac
    mine = [op for op in ops if isinstance(op, MacOp) and op.entry.mac == mac]
    assert [(op.action, op.previous.vtep) for op in mine] == [("set", "198.18.1.11")]
    converge(dp, new)
    assert dp.observe() == new
    assert dp.forward(VT(RED), mac) == {"198.18.1.12"}


def test_mac_moving_between_sites_switches_side():
    here = endpoint("a", "red", 1)
    there = Endpoint("b", "red", here.mac, "198.18.2.11", ips=here.ips, port_id="moved")
    dp = converge(FakeDataplane(), state([here]))
    converge(dp, state([], [there]))
    assert dp.forward(VL(RED), here.mac) == {"198.18.200.2"}
    # no VXLAN entry is left behind on the side it left
    assert (VL(RED), here.mac) not in dp.kernel.vxlan_fdb


def test_address_pair_mac_is_forwarded_like_the_port():
    vip_mac = "fa:16:3e:99:99:99"
    vm = endpoint("b", "red", 2, allowed_address_pairs=(AddressPair("198.19.10.100", vip_mac),))
    dp = converge(FakeDataplane(), state([], [vm]))
    assert dp.forward(VL(RED), vip_mac) == {"198.18.200.2"}


def test_broken_kernel_entries_are_repaired():
    b2 = endpoint("b", "red", 2)
    desired = state([endpoint("a", "red", 1)], [b2])
    dp = converge(FakeDataplane(), desired)
    k = dp.kernel
    # someone removed the bridge half, appended a second destination to a
    # VXLAN entry, and left a stray VXLAN entry on the other side
    del k.bridge_fdb[("gwa-br-5001", b2.mac)]
    a1 = endpoint("a", "red", 1).mac
    k.vxlan_fdb[(VL(RED), a1)].append("198.18.1.99")
    k.vxlan_fdb[(VT(RED), a1)] = ["198.18.200.9"]
    observed = dp.observe()
    assert MacEntry("red", b2.mac, TRANSIT, None) in observed.macs
    assert MacEntry("red", a1, SITE, None) in observed.macs
    converge(dp, desired)
    assert dp.observe() == desired
    assert k.vxlan_fdb[(VL(RED), a1)] == ["198.18.1.11"]
    assert (VT(RED), a1) not in k.vxlan_fdb
    assert dp.forward(VL(RED), b2.mac) == {"198.18.200.2"}


def test_changed_device_is_recreated_and_refilled():
    dp = converge(FakeDataplane(), STATE_A)
    # someone recreated a device with another VNI: the observed network differs
    k = dp.kernel
    vl = k.by_name(VL(RED))
    k.table[vl.index] = vl.__class__(**{**vl.__dict__, "vni": 4242})
    red = next(n for n in STATE_A.networks if n.name == "red")
    ops = plan(STATE_A, dp.observe())
    assert NetworkOp("ensure", red) in ops
    converge(dp, STATE_A)
    assert dp.observe() == STATE_A
    assert k.by_name(VL(RED)).vni == 1001


def test_removed_network_takes_its_entries_without_deletes():
    dp = converge(FakeDataplane(), STATE_A)
    only_red = state([endpoint("a", "red", 1)], [endpoint("b", "red", 2)], nets=("red",))
    ops = plan(only_red, dp.observe())
    blue = next(n for n in STATE_A.networks if n.name == "blue")
    assert not [op for op in ops if not isinstance(op, NetworkOp) and op.entry.network == "blue"]
    assert NetworkOp("remove", blue) in ops
    converge(dp, only_red)
    assert dp.observe() == only_red
    assert k_names(dp) == {"eth0", "gwa-br-5001", VL(RED), VT(RED)}


def k_names(dp):
    return {link.name for link in dp.kernel.links()}


def test_plan_order_is_ensure_add_delete_remove():
    dp = converge(FakeDataplane(), STATE_A)
    ops = plan(STATE_B, dp.observe())
    rank = {"ensure": 0, "set": 1, "add": 1, "delete": 2, "remove": 3}
    ranks = [rank[op.action] for op in ops]
    assert ranks == sorted(ranks)


def test_failed_device_leaves_the_rest_programmed():
    dp = FakeDataplane()
    dp.kernel.fail_devices.add("gwa-br-5002")
    errors = dp.apply(plan(STATE_A, dp.observe()))
    assert errors and all(e.op.network.name == "blue" if isinstance(e.op, NetworkOp)
                          else e.op.entry.network == "blue" for e in errors)
    red_macs = {m for m in STATE_A.macs if m.network == "red"}
    assert red_macs <= dp.observe().macs
